"""DynamicCache: content-addressed renders on disk, checksummed, LRU-bounded, kept across restarts."""

from __future__ import annotations

import logging
import os

import pytest

from eko_rtp.tts.dynamic_cache import HEADER_BYTES, DynamicCache, encode_entry, render_key

FRAME = 160


def key(n: int) -> str:
    return render_key(text=f"text {n}", voice="v", model="m", output_format="ulaw_8000", settings={})


def audio(frames: int, fill: int) -> bytes:
    return bytes([fill]) * (frames * FRAME)


def test_render_key_depends_on_every_input():
    base = dict(text="hello", voice="v", model="m", output_format="ulaw_8000", settings={"a": 1})
    reference = render_key(**base)
    assert len(reference) == 64 and reference == render_key(**base)
    for field, other in [("text", "hello!"), ("voice", "w"), ("model", "n"), ("output_format", "pcm"), ("settings", {"a": 2})]:
        assert render_key(**{**base, field: other}) != reference, field
    # Key order of settings does not matter: the JSON is canonical.
    assert render_key(**{**base, "settings": {"b": 2, "a": 1}}) == render_key(**{**base, "settings": {"a": 1, "b": 2}})


def test_put_then_get_gives_zero_copy_frames(tmp_path):
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    data = audio(2, 0x11) + audio(1, 0x22)
    assert cache.put(key(1), data) is True
    assert cache.put(key(1), data) is False  # already there
    render = cache.get(key(1))
    assert render is not None and render.frame_count == 3
    assert bytes(render.audio) == data
    assert isinstance(render.frame(2), memoryview) and bytes(render.frame(2)) == audio(1, 0x22)
    assert render.audio.readonly
    with pytest.raises(IndexError, match="frame 3 out of range 0..2"):
        render.frame(3)
    assert cache.get(key(2)) is None
    assert (tmp_path / f"{key(1)}.ulaw").read_bytes() == encode_entry(data)
    assert cache.total_bytes == HEADER_BYTES + len(data)


def test_restart_finds_entries_in_recency_order(tmp_path):
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        cache.put(key(n), audio(1, n))
        os.utime(tmp_path / f"{key(n)}.ulaw", ns=(10**18 + n, 10**18 + n))
    cache.get(key(0))  # now the most recent, on disk too
    reopened = DynamicCache(tmp_path, max_bytes=1 << 20)
    assert reopened.keys() == [key(1), key(2), key(0)]
    assert bytes(reopened.get(key(2)).audio) == audio(1, 2)
    assert reopened.total_bytes == 3 * (HEADER_BYTES + FRAME)


def test_lru_eviction_by_bytes(tmp_path):
    entry = HEADER_BYTES + 2 * FRAME
    cache = DynamicCache(tmp_path, max_bytes=3 * entry)
    for n in range(3):
        assert cache.put(key(n), audio(2, n))
    held = cache.get(key(0))  # 0 becomes most recent; 1 is now the oldest
    assert cache.put(key(3), audio(2, 3))
    assert cache.keys() == [key(2), key(0), key(3)]
    assert not (tmp_path / f"{key(1)}.ulaw").exists()
    assert (cache.total_bytes, cache.evictions) == (3 * entry, 1)
    # A bigger entry evicts as many as it needs.
    assert cache.put(key(4), audio(4, 4))
    assert cache.keys() == [key(3), key(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{key(3)}.ulaw", f"{key(4)}.ulaw"])
    # A view held by a call outlives the eviction of its entry.
    assert key(0) not in cache and bytes(held.audio) == audio(2, 0)


def test_an_entry_larger_than_the_bound_is_not_stored(tmp_path):
    cache = DynamicCache(tmp_path, max_bytes=HEADER_BYTES + FRAME)
    assert cache.put(key(1), audio(2, 1)) is False
    assert len(cache) == 0 and list(tmp_path.iterdir()) == []


def test_a_smaller_bound_at_restart_evicts_the_oldest(tmp_path):
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        cache.put(key(n), audio(1, n))
        os.utime(tmp_path / f"{key(n)}.ulaw", ns=(10**18 + n, 10**18 + n))
    reopened = DynamicCache(tmp_path, max_bytes=2 * (HEADER_BYTES + FRAME))
    assert reopened.keys() == [key(1), key(2)]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-1], "header says 160 audio bytes, file holds 159"),
        (lambda data: data[:HEADER_BYTES] + b"\x00" + data[HEADER_BYTES + 1 :], "audio checksum mismatch"),
        (lambda data: b"NOTMAGIC" + data[8:], "bad magic b'NOTMAGIC'"),
        (lambda data: data[:10], "10 bytes, shorter than the 48-byte header"),
    ],
)
def test_corrupt_entries_are_dropped_at_start_with_a_log_line(tmp_path, caplog, damage, reason):
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    cache.put(key(1), audio(1, 1))
    cache.put(key(2), audio(1, 2))
    path = tmp_path / f"{key(1)}.ulaw"
    path.write_bytes(damage(path.read_bytes()))
    caplog.clear()  # an earlier test may have left the root logger at INFO: keep only the reopen's lines
    with caplog.at_level(logging.WARNING, logger="eko_rtp.tts.dynamic_cache"):
        reopened = DynamicCache(tmp_path, max_bytes=1 << 20)
    assert reopened.keys() == [key(2)]
    assert reopened.dropped_corrupt == 1
    assert not path.exists()
    assert caplog.messages == [f"dynamic cache: dropping corrupt entry: {path}: {reason}"]


def test_interrupted_writes_and_foreign_files(tmp_path):
    (tmp_path / f"{key(1)}.ulaw.tmp-999").write_bytes(b"partial")
    (tmp_path / "README").write_text("not an entry")
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    assert len(cache) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]


def test_bad_puts_are_refused(tmp_path):
    cache = DynamicCache(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="whole number of 160-byte frames, got 100 bytes"):
        cache.put(key(1), b"\x00" * 100)
    with pytest.raises(ValueError, match="key must be 64 lower-case hex digits, got '../x'"):
        cache.put("../x", audio(1, 0))
    with pytest.raises(ValueError, match="max_bytes must be >= 1, got 0"):
        DynamicCache(tmp_path, max_bytes=0)
