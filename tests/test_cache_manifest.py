"""The manifest and the catalogue as untrusted text: nesting that used to crash (issue 17, defect 2).

``json.loads`` and ``tomllib`` recurse once per level, so a ``manifest.json`` or a
catalogue of a few thousand brackets raised RecursionError out of ``cache check``
and ``serve``. A deep manifest is now one more kind of unusable manifest (it reads
as empty, with the reason naming the file; ``cache build`` rewrites it); a deep
catalogue is the operator's input, refused with exit 2 naming the file.
"""

from __future__ import annotations

import json
import sys

import pytest
from cache_helpers import run_cli, write_catalogue

from eko_rtp.cache.build import CacheWriter, make_entry
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.manifest import Manifest, ManifestError, json_nests_deeper_than
from server_helpers import free_port, rtp_range

DEEP_JSON = '{"format_version": 1, "phrases": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("{}", 0, True),
        ("{}", 1, False),
        ('{"a": [1, {"b": []}]}', 3, True),
        ('{"a": [1, {"b": []}]}', 4, False),
        ('["[[[[", "]]]]"]', 1, False),  # brackets inside strings are text
        ('["\\"[[[[", "\\\\", "{{"]', 1, False),  # escaped quotes and backslashes
        ('"' + "[" * 50, 1, True),  # not JSON (unterminated): counted, and json.loads would refuse it
        ("[" * 5000, 32, True),
        (DEEP_JSON, 32, True),
    ],
)
def test_json_nests_deeper_than(text, limit, expected):
    assert json_nests_deeper_than(text, limit) is expected


def test_json_nests_deeper_than_agrees_with_a_real_manifest():
    document = json.loads(Manifest().to_bytes())
    document["phrases"]["greet"] = {"voice": "[{[{", "nested": [[[[]]]]}
    text = json.dumps(document)
    assert not json_nests_deeper_than(text, 7)  # document, phrases, greet, then four arrays
    assert json_nests_deeper_than(text, 6)


@pytest.mark.parametrize("data", [DEEP_JSON.encode(), b"[" * 3000 + b"]" * 3000, b'{"phrases": ' + b"{\"a\": " * 5000])
def test_a_deep_manifest_is_unusable_not_a_crash(data):
    with pytest.raises(ManifestError, match=r"^arrays or objects nest deeper than 32 levels$"):
        Manifest.parse_untrusted(data)


def test_deep_values_inside_the_limit_are_described_not_crashed_on():
    data = json.dumps({"format_version": 1, "encoding": "PCMU/8000/1", "frame_bytes": 160,
                       "phrases": {"greet": {"text_sha256": [[[[[[]]]]]], "backend": "espeak", "voice": None,
                                             "model": None, "byte_length": 160, "audio_sha256": "0" * 64}}})
    with pytest.raises(ManifestError, match=r"^entry 'greet': text_sha256 must be 64 lowercase hex digits"):
        Manifest.parse_untrusted(data.encode())


@pytest.fixture
def small_cache(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", {"greet": "Bonjour.", "goodbye": "Au revoir."})
    cache = tmp_path / "cache"
    cache.mkdir()
    writer = CacheWriter(cache, Manifest())
    for entry in load_catalogue(phrases):
        audio = b"\x80" * 320
        writer.store(entry.key, audio, make_entry(text_sha256=entry.text_sha256, audio=audio, backend="espeak",
                                                  voice="fr-fr", model=None))
    return cache, phrases


def test_cache_check_reports_a_deep_manifest_by_name(small_cache):
    cache, phrases = small_cache
    (cache / "manifest.json").write_text(DEEP_JSON)
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert "Traceback" not in check.stderr
    assert check.returncode == 1
    assert check.stdout == (
        f"manifest: {cache / 'manifest.json'} is unusable: arrays or objects nest deeper than 32 levels\n"
        "greet: missing: audio file not recorded in the manifest\n"
        "goodbye: missing: audio file not recorded in the manifest\n")
    assert check.stderr == "0 of 2 phrases valid\n"


def test_serve_refuses_a_deep_manifest_naming_it(small_cache):
    cache, phrases = small_cache
    (cache / "manifest.json").write_text(DEEP_JSON)
    serve = run_cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--rtp-ports", rtp_range(),
                    "--cache", cache, "--phrases", phrases)
    assert "Traceback" not in serve.stderr
    assert serve.returncode == 2
    lines = serve.stderr.splitlines()
    assert lines[0].endswith(
        "WARNING eko_rtp.cache.loader: Phrase cache manifest unusable, every phrase counts as missing: "
        f"{cache / 'manifest.json'} is unusable: arrays or objects nest deeper than 32 levels")
    assert lines[-1].startswith(
        f"eko-rtp: error: command line, key 'cache.dir': {cache} lacks 2 of the catalogue's 2 phrase(s): ")


def test_a_deep_catalogue_is_a_user_error_naming_the_file(tmp_path):
    phrases = tmp_path / "phrases.toml"
    phrases.write_text("[phrases.greet]\ntext = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    check = run_cli("cache", "check", "--cache", tmp_path / "cache", "--phrases", phrases)
    assert (check.returncode, check.stdout) == (2, "")
    assert check.stderr == (f"eko-rtp: error: {phrases}: arrays or inline tables nest too deep to read "
                            "(a phrase is one text string)\n")


def test_the_recursion_limit_is_the_default_one():
    # The checks above prove nothing if something raised the limit out of reach.
    assert sys.getrecursionlimit() <= 10_000
