"""G.711 µ-law and A-law (ITU-T G.711), done with lookup tables.

Theory of operation: both laws compand a 16-bit linear sample into 8 bits with a
sign, a 3-bit segment (exponent) and a 4-bit step (mantissa). Every table here is
computed once at import from the segment rules, so the hot path never branches per
sample: µ-law → A-law for RTP PCMA is ``bytes.translate`` with a 256-byte table
(the cache is stored in µ-law, PCMU's payload as is), and decoding is a
256-entry lookup. ``audioop`` is not used (Python 3.13 removed it).
"""

from __future__ import annotations

import array
import sys

__all__ = [
    "ULAW_SILENCE",
    "ALAW_SILENCE",
    "ULAW_TO_ALAW",
    "ALAW_TO_ULAW",
    "ulaw_encode_sample",
    "ulaw_decode_sample",
    "alaw_encode_sample",
    "alaw_decode_sample",
    "linear16_to_ulaw",
    "ulaw_to_linear16",
    "alaw_to_linear16",
    "ulaw_to_alaw",
]

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit linear sample as a µ-law byte."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = min(7, max(0, (magnitude >> 7).bit_length() - 1))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode_sample(code: int) -> int:
    """Decode one µ-law byte to a signed 16-bit linear sample."""
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << exponent
    magnitude -= _ULAW_BIAS
    return -magnitude if code & 0x80 else magnitude


def alaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit linear sample as an A-law byte (even bits inverted)."""
    value = sample >> 3  # A-law works on 13-bit samples
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    for segment, end in enumerate(_ALAW_SEGMENT_ENDS):
        if value <= end:
            break
    else:
        return 0x7F ^ mask
    step = (value >> 1) if segment < 2 else (value >> segment)
    return ((segment << 4) | (step & 0x0F)) ^ mask


def alaw_decode_sample(code: int) -> int:
    """Decode one A-law byte to a signed 16-bit linear sample."""
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


_ULAW_DECODE = array.array("h", (ulaw_decode_sample(code) for code in range(256)))
_ALAW_DECODE = array.array("h", (alaw_decode_sample(code) for code in range(256)))
# Indexed by the 16-bit sample read as unsigned (two's complement), so a whole
# buffer encodes with one `map` over a memoryview cast to 'H'.
_ULAW_ENCODE = bytes(ulaw_encode_sample(u - 65536 if u >= 32768 else u) for u in range(65536))

ULAW_TO_ALAW = bytes(alaw_encode_sample(ulaw_decode_sample(code)) for code in range(256))
ALAW_TO_ULAW = bytes(ulaw_encode_sample(alaw_decode_sample(code)) for code in range(256))
ULAW_SILENCE = ulaw_encode_sample(0)  # 0xFF
ALAW_SILENCE = alaw_encode_sample(0)  # 0xD5


def linear16_to_ulaw(pcm: bytes | bytearray | memoryview) -> bytes:
    """Encode signed 16-bit little-endian mono PCM as µ-law (one byte per sample)."""
    view = memoryview(pcm)
    if view.nbytes % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {view.nbytes}")
    samples = view.cast("B").cast("H")
    if sys.byteorder == "big":  # pragma: no cover - our targets are little-endian
        swapped = array.array("H", samples)
        swapped.byteswap()
        samples = memoryview(swapped)
    return bytes(map(_ULAW_ENCODE.__getitem__, samples))


def ulaw_to_linear16(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode µ-law to signed 16-bit little-endian PCM."""
    out = array.array("h", map(_ULAW_DECODE.__getitem__, memoryview(ulaw).cast("B")))
    if sys.byteorder == "big":  # pragma: no cover
        out.byteswap()
    return out.tobytes()


def alaw_to_linear16(alaw: bytes | bytearray | memoryview) -> bytes:
    """Decode A-law to signed 16-bit little-endian PCM."""
    out = array.array("h", map(_ALAW_DECODE.__getitem__, memoryview(alaw).cast("B")))
    if sys.byteorder == "big":  # pragma: no cover
        out.byteswap()
    return out.tobytes()


def ulaw_to_alaw(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Transcode µ-law to A-law with one ``bytes.translate``."""
    return bytes(ulaw).translate(ULAW_TO_ALAW)
