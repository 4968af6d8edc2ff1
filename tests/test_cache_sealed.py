"""Sealed copies of the phrase files, what changed on disk, and the watch that says so (issue 17, defect 3)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cache_helpers import REPO, write_catalogue

from eko_rtp.cache import sealed
from eko_rtp.cache.build import CacheWriter, make_entry
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.loader import load_cache
from eko_rtp.cache.manifest import Manifest
from eko_rtp.cache.sealed import FileSignature, file_signature, sealed_copy
from eko_rtp.cache.watch import watch_cache_files

TEXTS = {"greet": "Bonjour.", "goodbye": "Au revoir.", "still_there": "Allô ?"}
AUDIO = {"greet": bytes(range(256)) * 5 * 2, "goodbye": b"\x80" * 160, "still_there": b"\x10\x20" * 240}


@pytest.fixture
def cache(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", TEXTS)
    (tmp_path / "cache").mkdir()
    writer = CacheWriter(tmp_path / "cache", Manifest())
    for entry in load_catalogue(phrases):
        writer.store(entry.key, AUDIO[entry.key], make_entry(text_sha256=entry.text_sha256, audio=AUDIO[entry.key],
                                                             backend="espeak", voice="fr-fr", model=None))
    return tmp_path / "cache", phrases


def memfd_mappings() -> list[str]:
    return [line.split(None, 5)[1] + " " + line.split(None, 5)[5].strip()
            for line in Path("/proc/self/maps").read_text().splitlines() if "/memfd:eko-phrase:" in line]


def test_each_phrase_is_a_read_only_sealed_copy(cache):
    cache_dir, phrases = cache
    loaded = load_cache(cache_dir, phrases)
    greet = loaded.get("greet")
    assert bytes(greet.audio) == AUDIO["greet"] and greet.audio.readonly
    assert greet.frame(3).obj is greet.audio.obj  # frames are still zero-copy slices of one mapping
    # Private, read-only, and not the file: the mapping names the memfd, not greet.raw.
    assert "r--p /memfd:eko-phrase:greet (deleted)" in memfd_mappings()
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if str(cache_dir) in line]
    status = os.stat(cache_dir / "greet.raw")
    assert loaded.sources["greet"] == (cache_dir / "greet.raw", FileSignature.of(status))


def test_the_copy_is_sealed_against_every_change(tmp_path):
    path = tmp_path / "x.raw"
    path.write_bytes(b"\x11" * 320)
    copy = sealed_copy(path, name="eko-test")
    # Reach the memory as root could (through /proc), and try to change it.
    [line] = [line for line in Path("/proc/self/maps").read_text().splitlines() if "/memfd:eko-test" in line]
    start, end = (int(part, 16) for part in line.split()[0].split("-"))
    try:
        descriptor = os.open(f"/proc/self/map_files/{start:x}-{end:x}", os.O_RDWR)
    except PermissionError:
        pytest.skip("/proc/self/map_files needs CAP_SYS_ADMIN")
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(descriptor, 0)
        with pytest.raises(PermissionError):
            os.pwrite(descriptor, b"\x00", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(descriptor, 640)
    finally:
        os.close(descriptor)
    assert bytes(copy.data) == b"\x11" * 320


def test_missing_and_empty_files(tmp_path):
    assert sealed_copy(tmp_path / "nope.raw") is None
    (tmp_path / "empty.raw").write_bytes(b"")
    empty = sealed_copy(tmp_path / "empty.raw")
    assert empty.data == b"" and empty.signature.size == 0
    assert file_signature(tmp_path / "nope.raw") is None


def test_a_file_system_without_sendfile_is_copied_by_reads(tmp_path, monkeypatch):
    def no_sendfile(*args):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(sealed.os, "sendfile", no_sendfile)
    monkeypatch.setattr(sealed, "_CHUNK", 100)
    path = tmp_path / "x.raw"
    path.write_bytes(bytes(range(256)) * 3)
    assert bytes(sealed_copy(path).data) == bytes(range(256)) * 3


# In a child process: with mappings of the files themselves, this died of SIGBUS.
CHANGE_UNDER_A_LOADED_CACHE = """
import os, sys
from eko_rtp.cache.loader import load_cache
from eko_rtp.codec.g711 import ULAW_TO_ALAW
cache_dir, phrases = sys.argv[1:3]
loaded = load_cache(cache_dir, phrases)
before = {key: bytes(loaded.get(key).audio) for key in loaded}
os.truncate(os.path.join(cache_dir, "greet.raw"), 0)
os.truncate(os.path.join(cache_dir, "still_there.raw"), 160)
with open(os.path.join(cache_dir, "goodbye.raw"), "r+b") as file:
    file.write(b"\\x00" * 160)
for key in loaded:
    phrase = loaded.get(key)
    frames = b"".join(bytes(phrase.frame(i)) for i in range(phrase.frame_count))
    assert frames == before[key], key
    assert bytes(phrase.frame(phrase.frame_count - 1)).translate(ULAW_TO_ALAW)  # the PCMA path
print(sorted(str(change) for change in loaded.changes_on_disk()))
"""


def test_files_truncated_or_rewritten_in_place_change_nothing_loaded(cache):
    cache_dir, phrases = cache
    done = subprocess.run([sys.executable, "-c", CHANGE_UNDER_A_LOADED_CACHE, str(cache_dir), str(phrases)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == str(sorted([
        f"{cache_dir / 'goodbye.raw'} rewritten in place (160 bytes, was 160)",
        f"{cache_dir / 'greet.raw'} truncated in place to 0 bytes (was 2560)",
        f"{cache_dir / 'still_there.raw'} truncated in place to 160 bytes (was 480)",
    ]))


def test_changes_on_disk_names_each_kind_of_change(cache):
    cache_dir, phrases = cache
    loaded = load_cache(cache_dir, phrases)
    assert loaded.changes_on_disk() == []
    (cache_dir / "goodbye.raw").unlink()
    replacement = cache_dir / "greet.raw.new"
    replacement.write_bytes(b"\x80" * 480)
    replacement.rename(cache_dir / "greet.raw")  # what `cache build` does: a new file renamed over
    with open(cache_dir / "still_there.raw", "ab") as file:
        file.write(b"\x80" * 160)
    assert [str(change) for change in loaded.changes_on_disk()] == [
        f"{cache_dir / 'greet.raw'} replaced by another file (480 bytes, was 2560)",
        f"{cache_dir / 'goodbye.raw'} removed",
        f"{cache_dir / 'still_there.raw'} rewritten in place (640 bytes, was 480)",
    ]
    assert bytes(loaded.get("goodbye").audio) == AUDIO["goodbye"]


async def inline(work):
    # On the autojump clock a worker thread counts as idle time: the clock would jump past it.
    return work()


async def test_the_watch_logs_each_change_once_and_starts_over_at_a_reload(cache, caplog, autojump_clock):
    caplog.set_level(logging.WARNING, logger="eko_rtp.cache.watch")
    cache_dir, phrases = cache
    current = [load_cache(cache_dir, phrases)]

    def warnings() -> list[str]:
        return [record.getMessage().split(" since ")[0] for record in caplog.records
                if record.name == "eko_rtp.cache.watch"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_cache_files(lambda: current[0], interval=10.0, run_sync=inline))
        await trio.sleep(25)
        assert warnings() == []
        os.truncate(cache_dir / "greet.raw", 0)
        await trio.sleep(10)
        assert warnings() == [f"phrase cache file {cache_dir / 'greet.raw'} truncated in place to 0 bytes (was 2560)"]
        await trio.sleep(30)
        assert len(warnings()) == 1  # once per change, not once per look
        (cache_dir / "goodbye.raw").unlink()
        await trio.sleep(10)
        assert warnings()[1:] == [f"phrase cache file {cache_dir / 'goodbye.raw'} removed"]
        current[0] = load_cache(cache_dir, phrases)  # a reload: what it loaded is the new reference
        await trio.sleep(30)
        assert len(warnings()) == 2
        nursery.cancel_scope.cancel()
    message = caplog.records[0].getMessage()
    assert message.endswith("since the server loaded it; calls keep playing the copy loaded then. "
                            "`eko-rtp cache check` says whether it is valid, and a reload (SIGHUP) plays it if it is")
