"""Cached audio conversions (sans-I/O): encoding across chunks, trimming, padding."""

from __future__ import annotations

import array

import pytest

from eko_rtp.cache.audio import (
    LeadingSilenceTrimmer, Linear16ToUlawStream, finish_ulaw, first_audible_index, pad_to_frames,
)
from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.codec.g711 import linear16_to_ulaw

QUIET = 0xFF  # µ-law 0
LOUD = 0x80  # µ-law +32124
FAINT = 0xEF  # µ-law +33: below the -40 dBFS threshold


def pcm(*samples: int) -> bytes:
    return array.array("h", samples).tobytes()


@pytest.mark.parametrize(("data", "expected"), [
    (b"", None),
    (bytes([QUIET, FAINT] * 10), None),
    (bytes([QUIET, FAINT, LOUD]), 2),
    (bytes([LOUD]), 0),
])
def test_first_audible_index(data, expected):
    assert first_audible_index(data) == expected


@pytest.mark.parametrize("split", [0, 1, 3, 5, 7, 19])
def test_encoder_gives_the_same_bytes_whatever_the_chunking(split):
    source = pcm(*range(-5000, 5000, 37))
    encoder = Linear16ToUlawStream()
    out = encoder.feed(source[:split]) + encoder.feed(source[split:]) + encoder.finish()
    assert out == linear16_to_ulaw(source)


def test_encoder_refuses_a_stream_ending_mid_sample():
    encoder = Linear16ToUlawStream()
    assert encoder.feed(b"\x01\x02\x03") == linear16_to_ulaw(b"\x01\x02")
    with pytest.raises(ValueError, match=r"^16-bit PCM stream ended in the middle of a sample \(odd byte count\)$"):
        encoder.finish()


# (pre_roll, chunks fed, output of each feed)
TRIM_TABLE = [
    (2, [bytes([QUIET] * 5 + [LOUD, QUIET])], [bytes([QUIET, QUIET, LOUD, QUIET])]),
    (2, [bytes([QUIET] * 3), bytes([FAINT, LOUD]), bytes([QUIET])], [b"", bytes([QUIET, FAINT, LOUD]), bytes([QUIET])]),
    (40, [bytes([QUIET]), bytes([LOUD])], [b"", bytes([QUIET, LOUD])]),
    (0, [bytes([QUIET] * 9), bytes([LOUD, LOUD])], [b"", bytes([LOUD, LOUD])]),
    (3, [bytes([QUIET] * 9)], [b""]),
]


@pytest.mark.parametrize(("pre_roll", "chunks", "outputs"), TRIM_TABLE)
def test_trimmer_table(pre_roll, chunks, outputs):
    trimmer = LeadingSilenceTrimmer(pre_roll)
    assert [trimmer.feed(chunk) for chunk in chunks] == outputs


def test_pad_to_frames():
    assert pad_to_frames(b"") == b""
    assert pad_to_frames(b"\x80") == b"\x80" + b"\xff" * 159
    assert pad_to_frames(b"\x80" * 160) == b"\x80" * 160
    assert pad_to_frames(b"\x80" * 161) == b"\x80" * 161 + b"\xff" * 159


def test_finish_trims_pads_and_refuses_silence():
    out = finish_ulaw(bytes([QUIET] * 1000 + [LOUD] * 10))
    assert out == bytes([QUIET] * 40 + [LOUD] * 10) + bytes([QUIET]) * (FRAME_BYTES - 50)
    with pytest.raises(ValueError, match=r"^audio of 300 samples has no audible sample \(all below -40 dBFS\)$"):
        finish_ulaw(bytes([FAINT] * 300))


def test_cache_cores_and_loader_import_neither_trio_nor_socket():
    import subprocess
    import sys

    code = ("import sys; import eko_rtp.cache.loader, eko_rtp.cache.audio, eko_rtp.cache.catalogue, "
            "eko_rtp.cache.manifest, eko_rtp.cache.validation; "
            "print(sorted(name for name in ('trio', 'socket') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
