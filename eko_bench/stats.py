"""What the bench computes from what it recorded: pure functions over numbers.

Theory of operation: the RTP engine records, per call, each packet's arrival time
(kernel receive timestamp, ns), its RTP sequence number and its RTP timestamp. From
those:

- inter-arrival deviation: ``|(arrival[i] - arrival[i-1]) - 20 ms|`` for consecutive
  packets in arrival order, pooled over every call (what a trunk's jitter buffer sees);
- loss, duplicates and reordering from the sequence numbers, extended past the 16-bit
  wrap the way RFC 3550 Appendix A.1 does (a new number is taken as the one closest
  to the highest seen so far);
- drift: the least-squares slope of ``arrival - rtp_timestamp / clock_rate`` against
  arrival, in ms per minute. A sender whose clock runs at the right rate has a slope
  of zero however much jitter it has.

Percentiles are nearest-rank (the smallest value with at least that fraction of
values at or below it), so every figure reported is a value that was measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

FRAME_NS = 20_000_000


@attrs.frozen(kw_only=True)
class Distribution:
    """Count, nearest-rank p50/p90/p99 and max of a set of values (same unit as the values)."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    def scaled(self, factor: float) -> "Distribution":
        """The same distribution in another unit (e.g. ns -> ms with 1e-6)."""
        def scale(value):
            return None if value is None else value * factor
        return Distribution(count=self.count, p50=scale(self.p50), p90=scale(self.p90), p99=scale(self.p99), max=scale(self.max))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already-sorted values; ``fraction`` in (0, 1]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def distribution(values: Sequence[float]) -> Distribution:
    """Summarise ``values`` (any order); all None when there are none."""
    if not values:
        return Distribution(count=0, p50=None, p90=None, p99=None, max=None)
    ordered = sorted(values)
    return Distribution(
        count=len(ordered),
        p50=percentile(ordered, 0.50),
        p90=percentile(ordered, 0.90),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
    )


def interarrival_deviations(arrivals_ns: Sequence[int], frame_ns: int = FRAME_NS) -> list[int]:
    """``|gap - frame|`` for each pair of consecutive arrivals, in ns."""
    return [abs(later - earlier - frame_ns) for earlier, later in zip(arrivals_ns, arrivals_ns[1:])]


def max_gap_ns(arrivals_ns: Sequence[int]) -> int | None:
    """The largest gap between consecutive arrivals (tshark's "Max Delta"), in ns."""
    if len(arrivals_ns) < 2:
        return None
    return max(later - earlier for earlier, later in zip(arrivals_ns, arrivals_ns[1:]))


def unwrap(values: Sequence[int], bits: int) -> list[int]:
    """Extend wrapping counters: each value becomes the one nearest the highest seen (RFC 3550 A.1)."""
    modulus = 1 << bits
    half = modulus >> 1
    extended: list[int] = []
    highest = None
    for value in values:
        if highest is None:
            current = value
        else:
            delta = (value - highest) % modulus
            current = highest + delta if delta < half else highest + delta - modulus
        extended.append(current)
        highest = current if highest is None or current > highest else highest
    return extended


@attrs.frozen(kw_only=True)
class SequenceQuality:
    """Packet accounting from RTP sequence numbers for one or more streams."""

    received: int
    expected: int
    lost: int
    duplicates: int
    reordered: int

    def __add__(self, other: "SequenceQuality") -> "SequenceQuality":
        return SequenceQuality(
            received=self.received + other.received,
            expected=self.expected + other.expected,
            lost=self.lost + other.lost,
            duplicates=self.duplicates + other.duplicates,
            reordered=self.reordered + other.reordered,
        )


NO_PACKETS = SequenceQuality(received=0, expected=0, lost=0, duplicates=0, reordered=0)


def sequence_quality(sequence_numbers: Sequence[int]) -> SequenceQuality:
    """Loss, duplicates and reordering of one stream, from its 16-bit sequence numbers in arrival order.

    expected = highest - lowest + 1 (extended); lost = expected - distinct numbers;
    a duplicate is a number seen before; a packet is reordered when it arrives after
    a higher number and is not a duplicate.
    """
    if not sequence_numbers:
        return NO_PACKETS
    extended = unwrap(sequence_numbers, 16)
    seen: set[int] = set()
    duplicates = reordered = 0
    highest = extended[0]
    for number in extended:
        if number in seen:
            duplicates += 1
            continue
        seen.add(number)
        if number < highest:
            reordered += 1
        else:
            highest = number
    expected = max(seen) - min(seen) + 1
    return SequenceQuality(
        received=len(extended),
        expected=expected,
        lost=expected - len(seen),
        duplicates=duplicates,
        reordered=reordered,
    )


def drift_ms_per_minute(arrivals_ns: Sequence[int], rtp_timestamps: Sequence[int], clock_rate: int = 8000) -> float | None:
    """Slope of (arrival - media time) over arrival, in ms per minute; None under two packets or 1 s."""
    if len(arrivals_ns) != len(rtp_timestamps):
        raise ValueError(f"{len(arrivals_ns)} arrivals but {len(rtp_timestamps)} timestamps")
    if len(arrivals_ns) < 2 or arrivals_ns[-1] - arrivals_ns[0] < 1_000_000_000:
        return None
    media = unwrap(rtp_timestamps, 32)
    origin_arrival, origin_media = arrivals_ns[0], media[0]
    # x: seconds since the first arrival; y: how far arrival is ahead of media time, seconds.
    xs = [(arrival - origin_arrival) / 1e9 for arrival in arrivals_ns]
    ys = [x - (stamp - origin_media) / clock_rate for x, stamp in zip(xs, media)]
    count = len(xs)
    mean_x = sum(xs) / count
    mean_y = sum(ys) / count
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return slope * 60_000.0
