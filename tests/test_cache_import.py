"""``cache import``: the earlier Eko's 16-bit files become cached µ-law, kept by later builds."""

from __future__ import annotations

import array
import json

from cache_helpers import run_cli, sine_slin16, write_catalogue

from eko_rtp.cache.loader import load_cache
from eko_rtp.codec.g711 import ulaw_to_linear16


def test_import_sine_decodes_back_close_and_survives_builds(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", {"greet": "Bonjour.", "goodbye": "Au revoir."})
    source = tmp_path / "old"
    source.mkdir()
    sine = sine_slin16(440, 0.5)  # 4000 samples: 25 frames exactly
    (source / "greet.raw").write_bytes(array.array("h", sine).tobytes())
    (source / "legacy_promo.raw").write_bytes(array.array("h", sine[:160]).tobytes())
    (source / "goodbye.raw").write_bytes(b"\x01\x02\x03")  # not whole 16-bit samples
    cache = tmp_path / "cache"

    result = run_cli("cache", "import", source, "--cache", cache, "--phrases", phrases)
    assert result.returncode == 0
    assert result.stderr == (
        f"warning: {source / 'goodbye.raw'}: not usable 16-bit PCM (16-bit PCM stream ended in the middle of a "
        "sample (odd byte count)); skipped\n"
        f"warning: {source / 'legacy_promo.raw'}: key 'legacy_promo' is not in the catalogue {phrases}; skipped\n"
        "imported 1 phrases\n")
    assert sorted(path.name for path in cache.iterdir()) == ["greet.raw", "manifest.json"]

    audio = (cache / "greet.raw").read_bytes()
    assert len(audio) == 4000
    decoded = array.array("h", ulaw_to_linear16(audio))
    # µ-law keeps each sample within its segment's step: under 3% of an 8000 peak here.
    assert max(abs(a - b) for a, b in zip(decoded, sine)) <= 240
    assert sum(abs(a - b) for a, b in zip(decoded, sine)) / len(sine) < 60
    entry = json.loads((cache / "manifest.json").read_text())["phrases"]["greet"]
    assert (entry["backend"], entry["voice"], entry["model"], entry["byte_length"]) == ("imported", None, None, 4000)

    # A build keeps the imported audio and renders only what is missing.
    build = run_cli("cache", "build", "--backend", "espeak", "--cache", cache, "--phrases", phrases)
    assert build.returncode == 0
    assert build.stderr.splitlines()[-1] == "rendered 1, skipped 1, 10 characters, estimated cost $0.00"
    assert (cache / "greet.raw").read_bytes() == audio
    assert len(load_cache(cache, phrases)) == 2

    # Once the text changes, the imported audio is stale and is rendered again.
    write_catalogue(phrases, {"greet": "Bonsoir.", "goodbye": "Au revoir."})
    rebuild = run_cli("cache", "build", "--backend", "espeak", "--cache", cache, "--phrases", phrases)
    assert rebuild.stderr.splitlines()[-1] == "rendered 1, skipped 1, 8 characters, estimated cost $0.00"
    assert json.loads((cache / "manifest.json").read_text())["phrases"]["greet"]["backend"] == "espeak"


def test_import_from_a_missing_directory(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", {"greet": "Bonjour."})
    result = run_cli("cache", "import", tmp_path / "nope", "--cache", tmp_path / "cache", "--phrases", phrases)
    assert result.returncode == 2
    assert result.stderr == f"eko-rtp: error: {tmp_path / 'nope'}: import source is not a directory\n"
    assert not (tmp_path / "cache").exists()
