"""Modular arithmetic for RTP's 16-bit sequence numbers and 32-bit timestamps.

Theory of operation: RTP counters start at random values (RFC 3550 §5.1) and wrap,
so "newer" means "less than half the space ahead" (serial number arithmetic, as
RFC 1982 defines it). A receiver that needs a monotonic count keeps an
:class:`Unwrapper`, which extends each wrapped value to the unbounded integer
nearest to the highest one seen so far.
"""

from __future__ import annotations

__all__ = [
    "SEQUENCE_MODULUS",
    "TIMESTAMP_MODULUS",
    "seq_diff",
    "seq_newer",
    "timestamp_diff",
    "timestamp_newer",
    "Unwrapper",
]

SEQUENCE_MODULUS = 1 << 16
TIMESTAMP_MODULUS = 1 << 32


def _signed_diff(a: int, b: int, modulus: int) -> int:
    half = modulus >> 1
    return ((a - b + half) % modulus) - half


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers, in [-32768, 32767]."""
    return _signed_diff(a, b, SEQUENCE_MODULUS)


def seq_newer(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes after ``b`` (modulo 2^16)."""
    return seq_diff(a, b) > 0


def timestamp_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit RTP timestamps, in [-2^31, 2^31 - 1]."""
    return _signed_diff(a, b, TIMESTAMP_MODULUS)


def timestamp_newer(a: int, b: int) -> bool:
    """Whether RTP timestamp ``a`` comes after ``b`` (modulo 2^32)."""
    return timestamp_diff(a, b) > 0


class Unwrapper:
    """Extends wrapped counters (16 or 32 bits) to unbounded integers.

    The first value fed is returned as is; each later value becomes the integer
    congruent to it that is nearest to the highest extended value so far. A late
    packet from before the first one may therefore come out negative.
    """

    __slots__ = ("_modulus", "_highest")

    def __init__(self, bits: int = 16):
        if bits not in (16, 32):
            raise ValueError(f"Unwrapper bits must be 16 or 32, not {bits!r}")
        self._modulus = 1 << bits
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest extended value returned so far (None before the first)."""
        return self._highest

    def extend(self, value: int) -> int:
        """Return ``value`` extended; remembers it when it is the newest so far."""
        if not 0 <= value < self._modulus:
            raise ValueError(f"counter value {value!r} outside 0..{self._modulus - 1}")
        highest = self._highest
        if highest is None:
            self._highest = value
            return value
        extended = highest + _signed_diff(value, highest % self._modulus, self._modulus)
        if extended > highest:
            self._highest = extended
        return extended
