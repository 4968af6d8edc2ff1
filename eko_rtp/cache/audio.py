"""Cached audio format and the conversions into it (sans-I/O).

Theory of operation: a cached phrase is what an RTP PCMU packet carries, as is
(RFC 3551 section 4.5.14: G.711 µ-law, 8000 Hz, one channel), 160 bytes per 20 ms
frame. The tail is padded with µ-law silence (0xFF) to a whole number of frames so
the media clock can send ``frame(i)`` slices with no copy and no short packet.

Leading silence is what a caller waits through before hearing anything, so it is
trimmed: everything before the first *audible* sample (magnitude at least -40 dBFS)
goes, except a 5 ms pre-roll that keeps the onset of the first phoneme intact.
Both the encoder and the trimmer work on a stream (chunks of any size, split
anywhere) so the live TTS path can push espeak-ng/sox output through the same
steps as the cache build; feeding a buffer whole or in pieces gives the same bytes.
"""

from __future__ import annotations

from eko_rtp.codec.frame import FRAME_BYTES, SAMPLE_RATE
from eko_rtp.codec.g711 import ULAW_SILENCE, linear16_to_ulaw, ulaw_decode_sample

__all__ = [
    "AUDIBLE_THRESHOLD",
    "PRE_ROLL_SAMPLES",
    "Linear16ToUlawStream",
    "LeadingSilenceTrimmer",
    "first_audible_index",
    "pad_to_frames",
    "finish_ulaw",
    "duration_of",
]

AUDIBLE_THRESHOLD = 328  # |sample| >= 328 is -40 dBFS of a 16-bit full scale
PRE_ROLL_SAMPLES = 40  # 5 ms kept before the first audible sample

# 1 where a µ-law byte decodes to an audible sample: `bytes.translate` + `find`
# locate the first audible sample without a Python loop per sample.
_AUDIBLE = bytes(int(abs(ulaw_decode_sample(code)) >= AUDIBLE_THRESHOLD) for code in range(256))


def first_audible_index(ulaw: bytes | bytearray | memoryview) -> int | None:
    """Index of the first audible µ-law sample, or None if all are below the threshold."""
    index = bytes(ulaw).translate(_AUDIBLE).find(1)
    return None if index < 0 else index


class Linear16ToUlawStream:
    """Encode signed 16-bit little-endian PCM to µ-law across chunk boundaries.

    A chunk may end in the middle of a sample; the odd byte waits for the next one.
    """

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, pcm: bytes | bytearray | memoryview) -> bytes:
        data = self._carry + bytes(pcm)
        usable = len(data) & ~1
        self._carry = data[usable:]
        return linear16_to_ulaw(data[:usable])

    def finish(self) -> bytes:
        """End of stream; an odd trailing byte means the PCM was truncated."""
        if self._carry:
            raise ValueError("16-bit PCM stream ended in the middle of a sample (odd byte count)")
        return b""


class LeadingSilenceTrimmer:
    """Drop µ-law samples before the first audible one, keeping a short pre-roll."""

    def __init__(self, pre_roll: int = PRE_ROLL_SAMPLES) -> None:
        self._pre_roll = pre_roll
        self._pending = bytearray()
        self._audible = False

    @property
    def heard_audio(self) -> bool:
        """True once an audible sample has gone through."""
        return self._audible

    def feed(self, ulaw: bytes | bytearray | memoryview) -> bytes:
        if self._audible:
            return bytes(ulaw)
        index = first_audible_index(ulaw)
        if index is None:
            self._pending += ulaw
            del self._pending[: max(0, len(self._pending) - self._pre_roll)]
            return b""
        self._audible = True
        lead = bytes(self._pending) + bytes(ulaw[:index])
        self._pending = bytearray()
        return lead[len(lead) - min(len(lead), self._pre_roll):] + bytes(ulaw[index:])


def pad_to_frames(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Pad with µ-law silence to a whole number of 160-byte frames."""
    data = bytes(ulaw)
    return data + bytes([ULAW_SILENCE]) * (-len(data) % FRAME_BYTES)


def finish_ulaw(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Trim leading silence and pad to frames: the form every cached phrase is stored in.

    Raises ValueError if no sample is audible (a render that produced only silence).
    """
    trimmer = LeadingSilenceTrimmer()
    trimmed = trimmer.feed(ulaw)
    if not trimmer.heard_audio:
        raise ValueError(f"audio of {len(ulaw)} samples has no audible sample (all below -40 dBFS)")
    return pad_to_frames(trimmed)


def duration_of(byte_length: int) -> float:
    """Seconds of audio in ``byte_length`` µ-law bytes."""
    return byte_length / SAMPLE_RATE
