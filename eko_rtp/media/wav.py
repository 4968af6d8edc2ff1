"""Call recordings as WAV files of G.711 (sans-I/O): the bytes, never the file.

Theory of operation: a recording (off by default: it is personal data under the
GDPR) is the call's audio as it crossed the wire, G.711 kept as is, in a RIFF/WAVE
file that sox, ffmpeg or an audio editor plays: format tag 7 (µ-law) or 6 (A-law),
8000 Hz, 8 bits a sample, one channel (the caller) or two (caller left, bot right,
interleaved sample by sample, as WAVE orders channels).

G.711 is not PCM, so the header is the one WAVE gives compressed formats: a
``fmt `` chunk of 18 bytes (WAVEFORMATEX, with ``cbSize`` 0: G.711 has no extra
format bytes) and a ``fact`` chunk holding the length in samples per channel
(Microsoft's RIFF specification requires ``fact`` for every format but PCM).
Python's ``wave`` module reads PCM only, so the tests read our files with sox.

Written while the call goes on, a recording must be a valid file at every moment,
because the process may die mid-call. The shell therefore:

1. writes :func:`wav_header` for a length of 0 first: a valid, empty recording;
2. appends audio as it comes (:func:`interleave` for stereo);
3. about once a second, after the audio written so far is in the file, writes each
   ``(offset, bytes)`` of :func:`size_patches` for that length: the RIFF size, the
   ``fact`` sample count and the ``data`` size;
4. at the end, writes :func:`pad_byte` (RIFF chunks are word-aligned; only an odd
   mono length needs it) and the patches once more.

So the header never declares more audio than the file holds. After an abrupt end
a reader sees the recording as of the last patch: readable, at most one patch
interval short; ``sox --ignore-length`` reads it all. We do not write the "unknown
length" some streaming writers use (all sizes 0xFFFFFFFF): sox then announces a
149-hour file and warns of a premature end, and stricter readers refuse it.

Bound: RIFF sizes are 32-bit, so a recording holds at most :data:`MAX_DATA_LENGTH`
bytes of audio (over 74 hours in stereo); beyond, the functions raise.

Header layout, all integers little-endian (offsets in bytes)::

     0 "RIFF"          4 RIFF size: 50 + data size + pad
     8 "WAVE"
    12 "fmt "         16 18 (fmt size)
    20 format tag     22 channels           24 sample rate (8000)
    28 bytes/second   32 block align        34 bits per sample (8)
    36 cbSize (0)
    38 "fact"         42 4 (fact size)      46 samples per channel
    50 "data"         54 data size
    58 audio...
"""

from __future__ import annotations

import enum
import struct

import attrs

from eko_rtp.codec.frame import SAMPLE_RATE

__all__ = [
    "WavEncoding",
    "WavFormat",
    "HEADER_SIZE",
    "MAX_DATA_LENGTH",
    "RIFF_SIZE_OFFSET",
    "FACT_SAMPLES_OFFSET",
    "DATA_SIZE_OFFSET",
    "wav_header",
    "size_patches",
    "pad_byte",
    "interleave",
    "interleave_into",
]

_HEADER = struct.Struct("<4sI4s4sIHHIIHHH4sII4sI")
_SIZE = struct.Struct("<I")
HEADER_SIZE = _HEADER.size  # 58
RIFF_SIZE_OFFSET = 4
FACT_SAMPLES_OFFSET = 46
DATA_SIZE_OFFSET = 54
_FORM_OVERHEAD = HEADER_SIZE - 8  # what the RIFF size counts besides the audio
# The largest even length whose RIFF size still fits 32 bits.
MAX_DATA_LENGTH = (0xFFFFFFFF - _FORM_OVERHEAD) & ~1
_BITS_PER_SAMPLE = 8


class WavEncoding(enum.Enum):
    """WAVE format tags of G.711 (RFC 2361, appendix A)."""

    ALAW = 6
    MULAW = 7


def _check_channels(instance, attribute, value) -> None:
    if value not in (1, 2):
        raise ValueError(f"a recording has 1 channel (caller) or 2 (caller, bot), not {value!r}")


@attrs.frozen(kw_only=True)
class WavFormat:
    """What a recording holds: G.711 of one law at 8000 Hz, in one or two channels."""

    encoding: WavEncoding = attrs.field(validator=attrs.validators.instance_of(WavEncoding))
    channels: int = attrs.field(validator=_check_channels)

    @property
    def block_align(self) -> int:
        """Bytes per sample frame: one byte per channel."""
        return self.channels

    @property
    def byte_rate(self) -> int:
        return SAMPLE_RATE * self.channels


def _check_length(wav_format: WavFormat, data_length: int) -> None:
    if not 0 <= data_length <= MAX_DATA_LENGTH:
        raise ValueError(f"WAV data length {data_length!r} outside 0..{MAX_DATA_LENGTH}")
    if data_length % wav_format.channels:
        raise ValueError(
            f"WAV data length {data_length} is not a whole number of {wav_format.channels}-channel samples")


def pad_byte(data_length: int) -> bytes:
    """What follows the audio at the end: one zero byte when its length is odd, else nothing."""
    return b"\x00" if data_length & 1 else b""


def wav_header(wav_format: WavFormat, data_length: int = 0) -> bytes:
    """The 58 header bytes of a recording holding ``data_length`` bytes of audio."""
    _check_length(wav_format, data_length)
    return _HEADER.pack(
        b"RIFF", _FORM_OVERHEAD + data_length + (data_length & 1), b"WAVE",
        b"fmt ", 18, wav_format.encoding.value, wav_format.channels, SAMPLE_RATE, wav_format.byte_rate,
        wav_format.block_align, _BITS_PER_SAMPLE, 0,
        b"fact", 4, data_length // wav_format.channels,
        b"data", data_length,
    )


def size_patches(wav_format: WavFormat, data_length: int) -> tuple[tuple[int, bytes], ...]:
    """``(offset, bytes)`` to write over the header so that it declares ``data_length``
    bytes of audio: the RIFF size, the ``fact`` sample count and the ``data`` size."""
    _check_length(wav_format, data_length)
    return (
        (RIFF_SIZE_OFFSET, _SIZE.pack(_FORM_OVERHEAD + data_length + (data_length & 1))),
        (FACT_SAMPLES_OFFSET, _SIZE.pack(data_length // wav_format.channels)),
        (DATA_SIZE_OFFSET, _SIZE.pack(data_length)),
    )


def interleave(left: bytes | memoryview, right: bytes | memoryview) -> bytes:
    """Two channels' samples as one stereo stream: left, right, left, right…"""
    out = bytearray(2 * len(left))
    interleave_into(out, left, right)
    return bytes(out)


def interleave_into(out: bytearray | memoryview, left: bytes | memoryview, right: bytes | memoryview) -> None:
    """:func:`interleave` into a buffer the caller reuses (twice the length of a channel)."""
    if len(left) != len(right):
        raise ValueError(f"channels of different lengths: left {len(left)} bytes, right {len(right)}")
    if len(out) != 2 * len(left):
        raise ValueError(f"stereo buffer of {len(out)} bytes for two channels of {len(left)}")
    # Extended slice assignment copies each channel in one C loop, no Python per sample.
    out[0::2] = left
    out[1::2] = right
