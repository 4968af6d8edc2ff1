"""The build: the incremental plan (a table), real espeak-ng renders, kills and repairs, check."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time

import pytest
from cache_helpers import CATALOGUE, EKO_RTP, REPO, run_cli, snapshot, write_catalogue

from eko_rtp.cache.audio import Linear16ToUlawStream, first_audible_index
from eko_rtp.cache.build import CacheWriter, build_cache, make_entry, plan_build
from eko_rtp.cache.catalogue import load_catalogue, parse_catalogue
from eko_rtp.cache.espeak import EspeakBackend, espeak_command, resample_command
from eko_rtp.cache.loader import load_cache
from eko_rtp.cache.manifest import Manifest, ManifestEntry
from eko_rtp.cache.progress import BuildProgress
from eko_rtp.cache.validation import Problem, ProblemKind
from eko_rtp.errors import UserError

# --- the plan, as a table -------------------------------------------------

PLAN_CATALOGUE = parse_catalogue('[phrases.a]\ntext = "A"\n[phrases.b]\ntext = "B"\n', "p.toml")
HASH = {entry.key: entry.text_sha256 for entry in PLAN_CATALOGUE}


def entry(key, backend="espeak", voice="fr-fr", model=None):
    return ManifestEntry(text_sha256=HASH[key], backend=backend, voice=voice, model=model,
                         byte_length=160, audio_sha256="0" * 64)


def problem(key, kind, detail):
    return Problem(key=key, kind=kind, detail=detail)


# (manifest entries, problems, backend/voice/model now, flags, expected [(key, reason)])
PLAN_TABLE = [
    ({"a": entry("a"), "b": entry("b")}, {}, ("espeak", "fr-fr", None), {}, []),
    ({"b": entry("b")}, {"a": problem("a", ProblemKind.MISSING, "no audio file")}, ("espeak", "fr-fr", None), {},
     [("a", "missing: no audio file")]),
    ({"a": entry("a"), "b": entry("b")}, {"b": problem("b", ProblemKind.STALE, "the text changed")},
     ("espeak", "fr-fr", None), {}, [("b", "stale: the text changed")]),
    ({"a": entry("a"), "b": entry("b", voice="fr-be")}, {}, ("espeak", "fr-fr", None), {}, [("b", "voice changed")]),
    ({"a": entry("a"), "b": entry("b")}, {}, ("elevenlabs", "v1", "m1"), {},
     [("a", "backend and voice and model changed"), ("b", "backend and voice and model changed")]),
    ({"a": entry("a", "elevenlabs", "v1", "m1"), "b": entry("b", "elevenlabs", "v1", "m1")}, {},
     ("elevenlabs", "v1", "m2"), {}, [("a", "model changed"), ("b", "model changed")]),
    ({"a": entry("a", "imported", None), "b": entry("b")}, {}, ("espeak", "fr-fr", None), {}, []),
    ({"a": entry("a"), "b": entry("b")}, {}, ("espeak", "fr-fr", None), {"force": True},
     [("a", "--force"), ("b", "--force")]),
    ({"a": entry("a"), "b": entry("b")}, {"a": problem("a", ProblemKind.MISSING, "no audio file")},
     ("espeak", "fr-fr", None), {"only": ["b"]}, [("b", "named with --only")]),
]


@pytest.mark.parametrize(("entries", "problems", "now", "flags", "expected"), PLAN_TABLE)
def test_plan_table(entries, problems, now, flags, expected):
    backend, voice, model = now
    problems = {key: problems.get(key) for key in HASH}
    plan = plan_build(PLAN_CATALOGUE, Manifest(entries=entries), problems, backend=backend, voice=voice, model=model,
                      **flags)
    assert [(item.key, item.reason) for item in plan] == expected


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    terminal = io.StringIO()
    bar = BuildProgress(total=2, dollars_per_1000_characters=0.11, stream=terminal, terminal=True)
    bar.start()
    bar.rendered("greet", 1000)
    bar.rendered("goodbye", 500)
    bar.finish("done")
    assert terminal.getvalue() == (
        "\r[------------------------] 0/2 phrases, 0 characters, $0.00\x1b[K"
        "\r[############------------] 1/2 phrases, 1000 characters, $0.11\x1b[K"
        "\r[########################] 2/2 phrases, 1500 characters, $0.17\x1b[K"
        "\ndone\n")
    plain = io.StringIO()
    lines = BuildProgress(total=2, dollars_per_1000_characters=0.11, stream=plain, terminal=False)
    lines.start()
    lines.rendered("greet", 1000)
    lines.failed("goodbye", "HTTP 503")
    lines.finish("done")
    assert plain.getvalue() == "rendered greet (1/2, 1000 characters, $0.1100)\nfailed goodbye: HTTP 503\ndone\n"


# --- real espeak-ng renders -------------------------------------------------

def test_espeak_render_starts_within_20_ms_and_fills_whole_frames(tmp_path):
    phrases = tmp_path / "phrases.toml"
    phrases.write_bytes(CATALOGUE.read_bytes())
    result = run_cli("cache", "build", "--backend", "espeak", "--only", "greet", "filler_one_moment",
                     "--cache", tmp_path / "cache", "--phrases", phrases)
    assert result.returncode == 0, result.stderr
    catalogue = load_catalogue(phrases)
    characters = len(catalogue.get("greet").text) + len(catalogue.get("filler_one_moment").text)
    assert result.stderr.splitlines()[-1] == f"rendered 2, skipped 34, {characters} characters, estimated cost $0.00"
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert sorted(manifest["phrases"]) == ["filler_one_moment", "greet"]
    assert (manifest["format_version"], manifest["encoding"], manifest["frame_bytes"]) == (1, "PCMU/8000/1", 160)
    for key in ("greet", "filler_one_moment"):
        audio = (tmp_path / "cache" / f"{key}.raw").read_bytes()
        recorded = manifest["phrases"][key]
        assert (recorded["backend"], recorded["voice"], recorded["model"]) == ("espeak", "fr-fr", None)
        assert recorded["byte_length"] == len(audio) and len(audio) % 160 == 0 and len(audio) > 8000
        assert recorded["duration"] == round(len(audio) / 8000, 3)
        assert recorded["text_sha256"] == catalogue.get(key).text_sha256
        # The caller hears the first audible sample within 20 ms (160 samples).
        assert first_audible_index(audio) < 160
    # The same text straight from espeak-ng and sox, untrimmed, starts later.
    wav = subprocess.run(espeak_command(catalogue.get("greet").text), capture_output=True, check=True).stdout
    pcm = subprocess.run(resample_command(), input=wav, capture_output=True, check=True).stdout
    untrimmed = Linear16ToUlawStream().feed(pcm)
    lead = first_audible_index(untrimmed)
    greet = (tmp_path / "cache" / "greet.raw").read_bytes()
    assert lead > first_audible_index(greet) == 40
    assert greet[40:].startswith(untrimmed[lead:lead + 1000])


def test_only_unknown_key_exits_2_and_changes_nothing(tmp_path):
    result = run_cli("cache", "build", "--only", "greet", "nonsense", "--cache", tmp_path / "cache",
                     "--phrases", CATALOGUE)
    assert result.returncode == 2
    assert result.stderr == f"eko-rtp: error: key 'nonsense': unknown phrase key (not in {CATALOGUE})\n"
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_full_build_then_check_then_nothing_to_rebuild(tmp_path, caplog):
    cache = tmp_path / "cache"
    phrases = tmp_path / "phrases.toml"
    phrases.write_bytes(CATALOGUE.read_bytes())
    catalogue = load_catalogue(phrases)
    characters = sum(len(entry.text) for entry in catalogue)
    first = run_cli("cache", "build", "--cache", cache, "--phrases", phrases)
    assert first.returncode == 0, first.stderr
    count = len(catalogue)
    assert count == 36  # the shipped catalogue (test_cache_catalogue checks its contents)
    assert first.stderr.splitlines()[-1] == f"rendered {count}, skipped 0, {characters} characters, estimated cost $0.00"
    assert len(first.stderr.splitlines()) == count + 1  # one plain line per phrase (stderr is a pipe) and the summary
    before = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", f"{count} of {count} phrases valid\n")
    second = run_cli("cache", "build", "--cache", cache, "--phrases", phrases)
    assert (second.returncode, second.stderr) == (0, f"rendered 0, skipped {count}, 0 characters, estimated cost $0.00\n")
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == before
    caplog.set_level("INFO")
    assert len(load_cache(cache, phrases)) == count
    assert caplog.messages[-1] == f"Loaded {count} cached phrases"
    # One text changes: only that phrase renders again.
    phrases.write_text(phrases.read_text(encoding="utf-8").replace("Merci.", "Merci beaucoup."), encoding="utf-8")
    third = run_cli("cache", "build", "--cache", cache, "--phrases", phrases)
    assert third.stderr == ("rendered filler_thanks (1/1, 15 characters, $0.0000)\n"
                            f"rendered 1, skipped {count - 1}, 15 characters, estimated cost $0.00\n")


def test_check_lists_each_missing_stale_or_corrupt_key(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"})
    cache = tmp_path / "cache"
    cache.mkdir()
    writer = CacheWriter(cache, Manifest())
    for key in "abcd":
        audio = b"\x80" * 160
        writer.store(key, audio, make_entry(text_sha256=load_catalogue(phrases).get(key).text_sha256, audio=audio,
                                            backend="espeak", voice="fr-fr", model=None))
    (cache / "b.raw").write_bytes(b"\x80" * 159 + b"\x81")
    (cache / "c.raw").write_bytes(b"")
    write_catalogue(phrases, {"a": "A", "b": "B", "c": "C", "d": "D changed", "e": "E"})
    result = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert result.returncode == 1
    assert result.stdout == ("b: corrupt: sha256 of the audio does not match the manifest\n"
                             "c: corrupt: empty audio file\n"
                             "d: stale: the text changed since it was rendered\n"
                             "e: missing: no audio file\n")
    assert result.stderr == "1 of 5 phrases valid\n"
    empty = run_cli("cache", "check", "--cache", tmp_path / "none", "--phrases", phrases)
    assert empty.returncode == 1
    assert empty.stdout.splitlines()[0] == f"manifest: {tmp_path / 'none' / 'manifest.json'} does not exist"


@pytest.mark.parametrize(("kill", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_build_killed_midway_is_reported_by_check_and_repaired(tmp_path, kill, status):
    # Long texts so the build lasts long enough to be killed in the middle.
    sentence = "Ceci est une phrase de test assez longue pour occuper espeak pendant un moment. "
    phrases = write_catalogue(tmp_path / "phrases.toml", {f"phrase_{n:02d}": sentence * 4 for n in range(30)})
    cache = tmp_path / "cache"
    # A shell running us in the background (as `.ci/run &` would be) ignores SIGINT, and
    # the child would inherit that: give it the default disposition, as a terminal has.
    process = subprocess.Popen([*EKO_RTP, "cache", "build", "--backend", "espeak", "--cache", str(cache),
                                "--phrases", str(phrases)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(cache.glob("*.raw"))) < 3:
        time.sleep(0.005)
    process.send_signal(kill)
    assert process.wait(timeout=10) == status
    stored = len(list(cache.glob("*.raw")))
    assert 3 <= stored < 30, "the build finished before it could be killed"
    (cache / "phrase_29.raw.tmp-99999").write_bytes(b"\x80" * 100)  # as if killed inside a write

    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert check.returncode == 1
    reported = check.stdout.splitlines()
    valid = 30 - len(reported)
    assert valid >= 2 and check.stderr == f"{valid} of 30 phrases valid\n"
    for line in reported:
        assert line.endswith((": missing: no audio file", ": missing: audio file not recorded in the manifest"))

    repair = run_cli("cache", "build", "--backend", "espeak", "--cache", cache, "--phrases", phrases)
    assert repair.returncode == 0
    characters = len(reported) * len(sentence * 4)
    assert repair.stderr.splitlines()[-1] == (
        f"rendered {len(reported)}, skipped {valid}, {characters} characters, estimated cost $0.00")
    assert run_cli("cache", "check", "--cache", cache, "--phrases", phrases).returncode == 0
    assert not [path for path in cache.iterdir() if ".tmp-" in path.name]


async def test_espeak_missing_stops_the_build_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    catalogue = parse_catalogue('[phrases.a]\ntext = "A"\n', "p.toml")
    with pytest.raises(UserError) as caught:
        await build_cache(cache_dir=tmp_path / "cache", catalogue=catalogue, backend=EspeakBackend(),
                          progress_stream=io.StringIO(), terminal=False)
    assert str(caught.value) == ("espeak-ng is not installed (it renders the offline phrases); "
                                 "install it: apt-get install espeak-ng")
    assert snapshot(tmp_path / "cache") == {"manifest.json": Manifest().to_bytes()}
