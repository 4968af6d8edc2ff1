"""A call's audio quality both ways, from RTP reception and the caller's RTCP (RFC 3550 §6.4).

Theory of operation: three figures describe a call's audio to an operator: packet
loss, interarrival jitter and round-trip time. The first two we measure ourselves
on the caller's stream (:class:`~eko_rtp.media.rtp.ReceiverStatistics`, Appendix
A.3 and A.8); the caller measures the same on ours and tells us in the report
blocks of its SR/RR about our SSRC; and the round trip comes from the same block
(§6.4.1): the caller echoes the middle 32 bits of our last SR's NTP timestamp
(LSR) and how long it held it (DLSR), so at arrival time A the round trip is
``A - LSR - DLSR`` in 1/65536 s. The caller's own SRs are remembered in the
receive statistics so that our reports carry real LSR/DLSR in turn, and the caller
can compute the round trip too.

All times here are on the wall clock (Unix seconds): the kernel stamps arrivals
with it, and NTP timestamps in RTCP are wall-clock times. Nothing here reads a
clock or a socket: the shell passes the arrival time in.
"""

from __future__ import annotations

import attrs

from eko_rtp.media.rtcp import ReceiverReport, SenderReport, ntp_from_unix, ntp_middle_32, parse_rtcp_untrusted
from eko_rtp.media.rtp import ReceiverStatistics

__all__ = ["CallQuality", "QualityMonitor"]

# A round trip above this is a bogus report (a wrong LSR echoed, a clock step), not a path.
_MAX_ROUND_TRIP = 10.0


@attrs.frozen(kw_only=True)
class CallQuality:
    """What a call's audio went through; ``None`` where no report said."""

    packets_expected: int  # of the caller's audio, A.3
    packets_lost: int  # expected minus received (negative with duplicates)
    jitter: float  # s, the caller's stream as it reached us (A.8)
    remote_fraction_lost: float | None  # 0..1, our stream as the caller last reported it
    remote_jitter: float | None  # s, our stream as the caller last reported it
    round_trip: float | None  # s, the last one measured
    reports_received: int  # RTCP SR/RR from the caller

    @property
    def loss_ratio(self) -> float:
        """Lost over expected for the caller's stream (0 when nothing was expected or lost)."""
        if self.packets_expected <= 0:
            return 0.0
        return max(0, self.packets_lost) / self.packets_expected

    def summary(self) -> str:
        """The end-of-call log's words: ``loss=0.5% jitter=0.4ms rtt=1.2ms``."""
        rtt = "-" if self.round_trip is None else f"{self.round_trip * 1000:.1f}ms"
        remote = "-" if self.remote_fraction_lost is None else f"{self.remote_fraction_lost * 100:.1f}%"
        return (f"loss={self.loss_ratio * 100:.1f}% jitter={self.jitter * 1000:.1f}ms rtt={rtt} "
                f"remote_loss={remote}")

    def call_log_fields(self) -> dict:
        """The ``crm.log_call`` keys (docs/crm-rpc.md): a ratio and milliseconds, None when
        nothing was measured (no audio came, no report gave a round trip)."""
        heard = self.packets_expected > 0
        return {
            "loss_ratio": round(self.loss_ratio, 4) if heard else None,
            "jitter_ms": round(self.jitter * 1000, 2) if heard else None,
            "rtt_ms": None if self.round_trip is None else round(self.round_trip * 1000, 2),
        }


class QualityMonitor:
    """Reads the caller's RTCP for one call and keeps its quality figures.

    ``statistics`` are the call's reception statistics of the caller's RTP (the
    shell feeds them); ``our_ssrc`` the SSRC we send with.
    """

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = (
        "statistics", "our_ssrc", "reports_received", "round_trip", "remote_fraction_lost", "remote_jitter",
    )

    def __init__(self, *, statistics: ReceiverStatistics, our_ssrc: int):
        self.statistics = statistics
        self.our_ssrc = our_ssrc
        self.reports_received = 0
        self.round_trip: float | None = None
        self.remote_fraction_lost: float | None = None
        self.remote_jitter: float | None = None

    def receive(self, data: bytes | bytearray | memoryview, arrival: float) -> None:
        """Take one compound RTCP datagram that arrived at ``arrival`` (Unix seconds).

        Raises only :class:`~eko_rtp.media.rtcp.RtcpError` (from the parser).
        """
        for packet in parse_rtcp_untrusted(data):
            if isinstance(packet, SenderReport):
                self.statistics.note_sender_report(ntp_timestamp=packet.ntp_timestamp, arrival_time=arrival)
            elif not isinstance(packet, ReceiverReport):
                continue  # SDES, BYE: nothing for the figures
            self.reports_received += 1
            for block in packet.report_blocks:
                if block.ssrc == self.our_ssrc:
                    self._take_block(block, arrival)

    def _take_block(self, block, arrival: float) -> None:
        rate = self.statistics.clock_rate
        self.remote_fraction_lost = block.fraction_lost / 256
        self.remote_jitter = block.jitter / rate
        if block.last_sender_report == 0:
            return  # §6.4.1: no SR received from us yet, so no round trip
        here = ntp_middle_32(ntp_from_unix(arrival))
        units = (here - block.last_sender_report - block.delay_since_last_sender_report) & 0xFFFFFFFF
        round_trip = units / 65536
        if round_trip <= _MAX_ROUND_TRIP:
            self.round_trip = round_trip

    def quality(self) -> CallQuality:
        statistics = self.statistics
        return CallQuality(
            packets_expected=statistics.expected,
            packets_lost=statistics.expected - statistics.received if statistics.expected else 0,
            jitter=statistics.jitter / statistics.clock_rate,
            remote_fraction_lost=self.remote_fraction_lost,
            remote_jitter=self.remote_jitter,
            round_trip=self.round_trip,
            reports_received=self.reports_received,
        )
