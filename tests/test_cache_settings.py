"""A cache that mixes render settings does not pass ``cache check`` (issue 17, defect 4).

Each phrase of such a cache is valid on its own; a caller would hear the greeting in
one voice and the next phrase in another. ``check`` compares the backend, voice and
model the manifest records: against most of the cache, or against the settings named
on its command line; the loader warns once.
"""

from __future__ import annotations

import logging

import pytest
from cache_helpers import run_cli, write_catalogue

from eko_rtp.cache.build import CacheWriter, make_entry
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.loader import load_cache
from eko_rtp.cache.manifest import Manifest, ManifestEntry
from eko_rtp.cache.settings import RenderSettings, SettingsMismatch, mixed_settings, rebuild_hint

ESPEAK_FR = ("espeak", "fr-fr", None)
ESPEAK_EN = ("espeak", "en-us", None)
LABS = ("elevenlabs", "v1", "m1")
IMPORTED = ("imported", None, None)


def manifest_of(settings: dict[str, tuple]) -> Manifest:
    return Manifest(entries={key: ManifestEntry(text_sha256="0" * 64, backend=backend, voice=voice, model=model,
                                                byte_length=160, audio_sha256="0" * 64)
                             for key, (backend, voice, model) in settings.items()})


def lines(settings: dict[str, tuple], expected=None) -> list[str]:
    return [str(mismatch) for mismatch in mixed_settings(settings, manifest_of(settings), expected)]


# (settings per key, in catalogue order; settings asked for; the lines `check` prints)
TABLE = [
    ({"a": ESPEAK_FR, "b": ESPEAK_FR}, None, []),
    ({"a": IMPORTED, "b": IMPORTED}, None, []),
    ({"a": ESPEAK_FR, "b": ESPEAK_FR, "c": ESPEAK_EN},
     None, ["c: other render settings: voice 'en-us', where 2 of the 3 phrases have voice 'fr-fr'"]),
    ({"a": ESPEAK_EN, "b": ESPEAK_FR, "c": ESPEAK_FR},
     None, ["a: other render settings: voice 'en-us', where 2 of the 3 phrases have voice 'fr-fr'"]),
    # A tie goes to the settings of the phrase first in the catalogue.
    ({"a": ESPEAK_EN, "b": ESPEAK_FR},
     None, ["b: other render settings: voice 'fr-fr', where 1 of the 2 phrases have voice 'en-us'"]),
    ({"a": LABS, "b": LABS, "c": ("elevenlabs", "v1", "m2"), "d": ESPEAK_FR},
     None, ["c: other render settings: model 'm2', where 2 of the 4 phrases have model 'm1'",
            "d: other render settings: backend 'espeak', voice 'fr-fr', model none, "
            "where 2 of the 4 phrases have backend 'elevenlabs', voice 'v1', model 'm1'"]),
    # Imported audio is the earlier Eko's voice: mixed with renders, it is another voice.
    ({"a": ESPEAK_FR, "b": ESPEAK_FR, "c": IMPORTED},
     None, ["c: other render settings: backend 'imported', voice none, where 2 of the 3 phrases have "
            "backend 'espeak', voice 'fr-fr'"]),
    # Asked for: only the named settings are compared, and every phrase is held to them.
    ({"a": ESPEAK_EN, "b": ESPEAK_EN}, {"voice": "fr-fr"},
     ["a: other render settings: voice 'en-us', asked for voice 'fr-fr'",
      "b: other render settings: voice 'en-us', asked for voice 'fr-fr'"]),
    ({"a": ESPEAK_FR, "b": LABS}, {"backend": "espeak"},
     ["b: other render settings: backend 'elevenlabs', asked for backend 'espeak'"]),
    ({"a": ESPEAK_FR}, {"backend": "espeak", "voice": "fr-fr"}, []),
]


@pytest.mark.parametrize(("settings", "expected", "printed"), TABLE)
def test_mixed_settings_table(settings, expected, printed):
    assert lines(settings, expected) == printed


def test_keys_without_an_entry_and_unknown_fields():
    assert mixed_settings(["a", "b"], manifest_of({"a": ESPEAK_FR})) == []
    with pytest.raises(ValueError, match=r"^unknown render settings \['speed'\]"):
        mixed_settings(["a"], manifest_of({"a": ESPEAK_FR}), {"speed": "1"})


def test_rebuild_hint():
    settings = {"a": LABS, "b": LABS, "c": ESPEAK_FR, "d": ("elevenlabs", "v 2", "m1")}
    mismatches = mixed_settings(settings, manifest_of(settings))
    assert mismatches[0] == SettingsMismatch(
        key="c", settings=RenderSettings(backend="espeak", voice="fr-fr", model=None),
        wanted=(("backend", "elevenlabs"), ("voice", "v1"), ("model", "m1")),
        reference=RenderSettings(backend="elevenlabs", voice="v1", model="m1"), sharing=2, total=4)
    assert rebuild_hint(mismatches) == "eko-rtp cache build --backend elevenlabs --voice v1 --model m1 --only c d"
    imported = {"a": IMPORTED, "b": IMPORTED, "c": ESPEAK_FR}
    assert rebuild_hint(mixed_settings(imported, manifest_of(imported))) is None  # nothing renders "imported"
    asked = {"a": ESPEAK_EN}
    assert rebuild_hint(mixed_settings(asked, manifest_of(asked), {"voice": "fr-fr"})) is None
    assert rebuild_hint([]) is None


@pytest.fixture
def mixed_cache(tmp_path):
    """Five valid phrases: three espeak fr-fr, one espeak en-us, one ElevenLabs."""
    phrases = write_catalogue(tmp_path / "phrases.toml", {key: key.upper() for key in "abcde"})
    cache = tmp_path / "cache"
    cache.mkdir()
    writer = CacheWriter(cache, Manifest())
    made_by = {"a": ESPEAK_FR, "b": ESPEAK_FR, "c": ESPEAK_EN, "d": ESPEAK_FR, "e": LABS}
    for entry in load_catalogue(phrases):
        backend, voice, model = made_by[entry.key]
        audio = bytes([0x80 + ord(entry.key)]) * 160
        writer.store(entry.key, audio, make_entry(text_sha256=entry.text_sha256, audio=audio, backend=backend,
                                                  voice=voice, model=model))
    return cache, phrases


def test_check_fails_naming_the_phrases_and_settings_that_differ(mixed_cache):
    cache, phrases = mixed_cache
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert check.returncode == 1
    assert check.stdout == (
        "c: other render settings: voice 'en-us', where 3 of the 5 phrases have voice 'fr-fr'\n"
        "e: other render settings: backend 'elevenlabs', voice 'v1', model 'm1', "
        "where 3 of the 5 phrases have backend 'espeak', voice 'fr-fr', model none\n")
    assert check.stderr == ("5 of 5 phrases valid; 2 rendered unlike the rest\n"
                            "to render them like the rest: eko-rtp cache build --backend espeak --voice fr-fr --only c e\n")


def test_check_against_named_settings(mixed_cache):
    cache, phrases = mixed_cache
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases, "--backend", "espeak")
    assert (check.returncode, check.stdout, check.stderr) == (
        1, "e: other render settings: backend 'elevenlabs', asked for backend 'espeak'\n",
        "5 of 5 phrases valid; 1 rendered unlike the settings asked for\n")
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases, "--voice", "en-us")
    assert check.stdout.splitlines() == [f"{key}: other render settings: voice {voice!r}, asked for voice 'en-us'"
                                         for key, voice in (("a", "fr-fr"), ("b", "fr-fr"), ("d", "fr-fr"), ("e", "v1"))]


def test_a_damaged_phrase_is_reported_once_not_as_mixed_too(mixed_cache):
    cache, phrases = mixed_cache
    (cache / "c.raw").write_bytes(b"\x00" * 160)
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert check.stdout.splitlines()[0] == "c: corrupt: sha256 of the audio does not match the manifest"
    assert [line.split(":")[0] for line in check.stdout.splitlines()] == ["c", "e"]
    assert check.stderr.splitlines()[0] == "4 of 5 phrases valid; 1 rendered unlike the rest"


def test_the_loader_warns_once_and_still_loads_every_phrase(mixed_cache, caplog):
    caplog.set_level(logging.INFO, logger="eko_rtp.cache.loader")
    cache, phrases = mixed_cache
    loaded = load_cache(cache, phrases)
    assert len(loaded) == 5
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "Phrase cache mixes render settings, callers will hear more than one voice (`eko-rtp cache check` "
                    "lists them): c: other render settings: voice 'en-us', where 3 of the 5 phrases have voice 'fr-fr'; "
                    "e: other render settings: backend 'elevenlabs', voice 'v1', model 'm1', where 3 of the 5 phrases "
                    "have backend 'espeak', voice 'fr-fr', model none"),
        ("INFO", "Loaded 5 cached phrases"),
    ]


def test_a_phrase_rendered_again_in_another_voice_fails_check_until_rendered_like_the_rest(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", {"greet": "Bonjour.", "goodbye": "Au revoir.", "thanks": "Merci."})
    cache = tmp_path / "cache"
    assert run_cli("cache", "build", "--backend", "espeak", "--cache", cache, "--phrases", phrases).returncode == 0
    assert run_cli("cache", "check", "--cache", cache, "--phrases", phrases).returncode == 0
    # Someone renders one phrase again with another voice.
    again = run_cli("cache", "build", "--backend", "espeak", "--voice", "en-us", "--only", "goodbye",
                    "--cache", cache, "--phrases", phrases)
    assert again.returncode == 0, again.stderr
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert (check.returncode, check.stdout) == (
        1, "goodbye: other render settings: voice 'en-us', where 2 of the 3 phrases have voice 'fr-fr'\n")
    hint = check.stderr.splitlines()[-1].removeprefix("to render them like the rest: eko-rtp ").split()
    assert hint == ["cache", "build", "--backend", "espeak", "--voice", "fr-fr", "--only", "goodbye"]
    assert run_cli(*hint, "--cache", cache, "--phrases", phrases).returncode == 0
    assert run_cli("cache", "check", "--cache", cache, "--phrases", phrases).returncode == 0
