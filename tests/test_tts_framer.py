"""FrameAssembler: chunks of any size in, 160-byte frames out, padding only at the end."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.tts.framer import FrameAssembler

AUDIO = bytes(range(256)) * 3  # 768 bytes: 4 whole frames + 128


@pytest.mark.parametrize(
    ("chunk_sizes", "frames_per_feed", "pending_after"),
    [
        ([160], [1], 0),
        ([100, 60], [0, 1], 0),
        ([159, 1, 160], [0, 1, 1], 0),
        ([320, 10], [2, 0], 10),
        ([1, 1, 158], [0, 0, 1], 0),
        ([200, 200, 200], [1, 1, 1], 120),
        ([700], [4], 60),
    ],
)
def test_feed_table(chunk_sizes, frames_per_feed, pending_after):
    assembler = FrameAssembler()
    offset = 0
    out = []
    for size, expected_count in zip(chunk_sizes, frames_per_feed):
        frames = assembler.feed(AUDIO[offset : offset + size])
        offset += size
        assert len(frames) == expected_count
        out += frames
    assert assembler.pending == pending_after
    assert b"".join(out) == AUDIO[: offset - pending_after]
    assert all(len(frame) == FRAME_BYTES for frame in out)


def test_finish_pads_only_the_last_partial_frame_with_ulaw_silence():
    assembler = FrameAssembler()
    assert assembler.feed(b"\x01" * 170) == [b"\x01" * 160]
    assert assembler.finish() == [b"\x01" * 10 + b"\xff" * 150]


def test_finish_with_nothing_pending_adds_nothing():
    assembler = FrameAssembler()
    assembler.feed(b"\x02" * 320)
    assert assembler.finish() == []


def test_misuse_is_refused():
    assembler = FrameAssembler()
    assembler.finish()
    with pytest.raises(RuntimeError, match=r"FrameAssembler.feed after finish\(\)"):
        assembler.feed(b"x")
    with pytest.raises(RuntimeError, match="finish called twice"):
        assembler.finish()
    with pytest.raises(ValueError, match="frame_bytes must be >= 1, got 0"):
        FrameAssembler(frame_bytes=0)


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_any_chunking_reassembles_exactly(audio, cuts):
    assembler = FrameAssembler()
    frames = []
    offset = 0
    for size in cuts:
        frames += assembler.feed(audio[offset : offset + size])
        offset += size
    frames += assembler.feed(audio[offset:])
    frames += assembler.finish()
    joined = b"".join(frames)
    assert all(len(frame) == FRAME_BYTES for frame in frames)
    padding = -len(audio) % FRAME_BYTES
    assert joined == audio + b"\xff" * padding
    assert assembler.bytes_in == len(audio)


@pytest.mark.parametrize(
    "module",
    ["eko_rtp.tts.framer", "eko_rtp.tts.accounting", "eko_rtp.tts.dynamic_cache", "eko_rtp.tts.settings", "eko_rtp.tts.errors"],
)
def test_tts_cores_import_neither_trio_nor_socket(module):
    code = f"import sys, {module}; print(sorted(m for m in ('trio', 'socket', 'httpx') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert result.stdout.strip() == "[]"


def test_live_espeak_voice_is_the_phrase_caches():
    from eko_rtp.cache.espeak import DEFAULT_VOICE
    from eko_rtp.tts.settings import DEFAULT_ESPEAK_VOICE

    assert DEFAULT_ESPEAK_VOICE == DEFAULT_VOICE
