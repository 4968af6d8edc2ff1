"""The loader: mmap'd, validated phrases; refusals logged once naming the key."""

from __future__ import annotations

import logging
import mmap

import pytest
from cache_helpers import write_catalogue

from eko_rtp.cache.build import CacheWriter, make_entry
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.loader import Phrase, load_cache
from eko_rtp.cache.manifest import Manifest

TEXTS = {"greet": "Bonjour.", "goodbye": "Au revoir.", "still_there": "Allô ?"}
AUDIO = {"greet": bytes(range(256)) * 5 * 2, "goodbye": b"\x80" * 160, "still_there": b"\x10\x20" * 240}


@pytest.fixture
def cache(tmp_path):
    """A complete cache of three phrases stored by the builder's writer."""
    phrases = write_catalogue(tmp_path / "phrases.toml", TEXTS)
    catalogue = load_catalogue(phrases)
    writer = CacheWriter(tmp_path / "cache", Manifest())
    (tmp_path / "cache").mkdir()
    for entry in catalogue:
        writer.store(entry.key, AUDIO[entry.key], make_entry(text_sha256=entry.text_sha256, audio=AUDIO[entry.key],
                                                             backend="espeak", voice="fr-fr", model=None))
    return tmp_path / "cache", phrases


def messages(caplog):
    return [(record.levelname, record.getMessage()) for record in caplog.records if record.name == "eko_rtp.cache.loader"]


def test_complete_cache_loads_zero_copy_frames(cache, caplog):
    caplog.set_level(logging.INFO)
    cache_dir, phrases = cache
    loaded = load_cache(cache_dir, phrases)
    assert messages(caplog) == [("INFO", "Loaded 3 cached phrases")]
    assert len(loaded) == 3 and loaded.keys() == ["greet", "goodbye", "still_there"]
    assert "greet" in loaded and "welcome" not in loaded and loaded.get("welcome") is None
    greet = loaded.get("greet")
    assert greet.frame_count == 16 and greet.duration == 0.32
    assert greet.audio.readonly and isinstance(greet.audio.obj, mmap.mmap)
    frame = greet.frame(15)
    assert frame.obj is greet.audio.obj  # a slice of the one mapping, not a copy
    assert bytes(frame) == AUDIO["greet"][2400:2560]
    with pytest.raises(TypeError):
        frame[0] = 1
    with pytest.raises(IndexError, match=r"^phrase 'greet' has frames 0\.\.15, asked for 16$"):
        greet.frame(16)
    assert bytes(loaded.get("still_there").audio) == AUDIO["still_there"]


def test_one_flipped_byte_is_refused_with_one_warning(cache, caplog):
    caplog.set_level(logging.INFO)
    cache_dir, phrases = cache
    path = cache_dir / "goodbye.raw"
    data = bytearray(path.read_bytes())
    data[77] ^= 0x01
    path.write_bytes(data)
    loaded = load_cache(cache_dir, phrases)
    assert messages(caplog) == [
        ("WARNING", "Cached phrase 'goodbye' refused: corrupt: sha256 of the audio does not match the manifest"),
        ("INFO", "Loaded 2 cached phrases"),
    ]
    assert loaded.get("goodbye") is None and "goodbye" not in loaded and len(loaded) == 2
    assert str(loaded.problems["goodbye"]) == "goodbye: corrupt: sha256 of the audio does not match the manifest"


@pytest.mark.parametrize(("damage", "warning"), [
    ("empty", "Cached phrase 'greet' refused: corrupt: empty audio file"),
    ("truncate", "Cached phrase 'greet' refused: corrupt: length 2400 bytes, manifest says 2560"),
    ("delete", "Cached phrase 'greet' refused: missing: no audio file"),
    ("text", "Cached phrase 'greet' refused: stale: the text changed since it was rendered"),
])
def test_damaged_entries_are_refused(cache, caplog, damage, warning):
    caplog.set_level(logging.INFO)
    cache_dir, phrases = cache
    path = cache_dir / "greet.raw"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:2400])
    elif damage == "delete":
        path.unlink()
    else:
        write_catalogue(phrases, {**TEXTS, "greet": "Bonsoir."})
    loaded = load_cache(cache_dir, phrases)
    assert messages(caplog) == [("WARNING", warning), ("INFO", "Loaded 2 cached phrases")]
    assert "greet" not in loaded


def test_unusable_manifest_makes_every_phrase_missing(cache, caplog):
    caplog.set_level(logging.INFO)
    cache_dir, phrases = cache
    (cache_dir / "manifest.json").write_text("{not json")
    loaded = load_cache(cache_dir, phrases)
    assert len(loaded) == 0
    logged = messages(caplog)
    assert logged[0] == ("WARNING", f"Phrase cache manifest unusable, every phrase counts as missing: "
                                    f"{cache_dir / 'manifest.json'} is unusable: not valid JSON: "
                                    "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    assert logged[1:] == [
        ("WARNING", f"Cached phrase '{key}' refused: missing: audio file not recorded in the manifest") for key in TEXTS
    ] + [("INFO", "Loaded 0 cached phrases")]


def test_a_reload_leaves_views_in_use_with_the_audio_they_had(cache):
    cache_dir, phrases = cache
    first = load_cache(cache_dir, phrases)
    held = first.get("goodbye").frame(0)  # a call in progress holds this view
    del first  # the old cache object goes (as on reload); the view keeps its mapping
    new_audio = b"\x81" * 320
    catalogue = load_catalogue(phrases)
    writer = CacheWriter(cache_dir, Manifest.parse_untrusted((cache_dir / "manifest.json").read_bytes()))
    writer.store("goodbye", new_audio, make_entry(text_sha256=catalogue.get("goodbye").text_sha256, audio=new_audio,
                                                  backend="espeak", voice="fr-fr", model=None))
    second = load_cache(cache_dir, phrases)
    assert bytes(held) == b"\x80" * 160
    assert bytes(second.get("goodbye").audio) == new_audio


def test_phrase_validates_its_audio():
    with pytest.raises(ValueError, match=r"^phrase 'greet': audio must be a read-only memoryview$"):
        Phrase(key="greet", audio=memoryview(bytearray(160)))
    with pytest.raises(ValueError, match=r"^phrase 'greet': audio of 100 bytes is not a whole, non-zero number"):
        Phrase(key="greet", audio=memoryview(bytes(100)))
    with pytest.raises(ValueError, match=r"^phrase key 'Greet' must match \[a-z0-9_\]\+$"):
        Phrase(key="Greet", audio=memoryview(bytes(160)))
