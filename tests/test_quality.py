"""Call quality from the caller's RTCP: loss, jitter and round trip (RFC 3550 §6.4)."""

from __future__ import annotations

import pytest

from eko_rtp.media.quality import CallQuality, QualityMonitor
from eko_rtp.media.rtcp import (
    RtcpError,
    ReportBlock,
    build_receiver_report,
    build_sender_report,
    ntp_from_unix,
    ntp_middle_32,
)
from eko_rtp.media.rtp import ReceiverStatistics

OURS = 0x11111111
THEIRS = 0x22222222
T0 = 1_800_000_000.0  # Unix seconds: some time in 2027


def block(**overrides) -> ReportBlock:
    fields = dict(ssrc=OURS, fraction_lost=0, cumulative_lost=0, extended_highest_sequence=100, jitter=0,
                  last_sender_report=0, delay_since_last_sender_report=0)
    return ReportBlock(**{**fields, **overrides})


def monitor() -> QualityMonitor:
    return QualityMonitor(statistics=ReceiverStatistics(), our_ssrc=OURS)


def test_round_trip_is_arrival_minus_lsr_minus_dlsr():
    quality = monitor()
    our_sr_sent = T0
    held = 0.250  # the caller kept our SR this long before its report left
    path = 0.030  # both ways
    report = build_receiver_report(ssrc=THEIRS, cname="caller", report_blocks=[block(
        fraction_lost=64, jitter=80,
        last_sender_report=ntp_middle_32(ntp_from_unix(our_sr_sent)),
        delay_since_last_sender_report=round(held * 65536))])
    quality.receive(report, arrival=our_sr_sent + held + path)
    figures = quality.quality()
    assert figures.round_trip == pytest.approx(path, abs=2 / 65536)
    assert figures.remote_fraction_lost == 0.25 and figures.remote_jitter == 0.010
    assert figures.reports_received == 1


@pytest.mark.parametrize(
    ("report_block", "round_trip"),
    [
        (block(), None),  # LSR 0: the caller has no SR of ours yet (§6.4.1)
        (block(ssrc=0x33333333, last_sender_report=1), None),  # about another source: not ours
        # An LSR that makes the round trip negative (wraps) or absurd is ignored.
        (block(last_sender_report=ntp_middle_32(ntp_from_unix(T0 + 5))), None),
    ],
)
def test_reports_that_give_no_round_trip(report_block, round_trip):
    quality = monitor()
    quality.receive(build_receiver_report(ssrc=THEIRS, cname="c", report_blocks=[report_block]), arrival=T0 + 1)
    assert quality.quality().round_trip is round_trip


def test_the_callers_sr_is_echoed_in_our_next_report_block():
    statistics = ReceiverStatistics()
    quality = QualityMonitor(statistics=statistics, our_ssrc=OURS)
    for sequence in range(10):
        statistics.feed(sequence, sequence * 160, T0 + sequence * 0.02)
    their_ntp = ntp_from_unix(T0 + 0.1)
    quality.receive(build_sender_report(ssrc=THEIRS, ntp_time=their_ntp, rtp_timestamp=800, packet_count=10,
                                        octet_count=1600, cname="caller"), arrival=T0 + 0.1005)
    ours = statistics.report_block(now=T0 + 0.6005)
    assert ours.last_sender_report == ntp_middle_32(their_ntp)
    assert ours.delay_since_last_sender_report == 32768  # 0.5 s in 1/65536 s
    assert quality.reports_received == 1


def test_inbound_loss_and_jitter_come_from_the_reception_statistics():
    statistics = ReceiverStatistics()
    quality = QualityMonitor(statistics=statistics, our_ssrc=OURS)
    # A.1 probation takes the first packet; of the 100 after it, 5 are lost.
    for sequence in [*range(0, 51), *range(56, 101)]:
        statistics.feed(sequence, sequence * 160, T0 + sequence * 0.02 + (0.002 if sequence % 2 else 0))
    figures = quality.quality()
    assert figures.packets_expected == 100 and figures.packets_lost == 5 and figures.loss_ratio == 0.05
    assert 0.0015 < figures.jitter < 0.0021  # ±2 ms alternating converges near 2 ms (A.8)
    assert figures.summary().startswith("loss=5.0% jitter=")


def test_event_packets_count_for_loss_but_not_for_jitter():
    statistics = ReceiverStatistics()
    for sequence in range(20):
        statistics.feed(sequence, sequence * 160, T0 + sequence * 0.02)
    for sequence in range(20, 30):  # RFC 4733: one event's packets repeat its start timestamp
        statistics.feed(sequence, 20 * 160, None)
    assert statistics.jitter == 0 and statistics.expected == statistics.received == 29  # A.1 probation: 1


def test_garbage_raises_only_rtcp_error():
    with pytest.raises(RtcpError):
        monitor().receive(b"\x81\xc9\x00\x07" + b"\x00" * 3, arrival=T0)


def test_wire_form_for_the_crm():
    figures = CallQuality(packets_expected=200, packets_lost=3, jitter=0.00125, remote_fraction_lost=None,
                          remote_jitter=None, round_trip=0.0015, reports_received=2)
    assert figures.call_log_fields() == {"loss_ratio": 0.015, "jitter_ms": 1.25, "rtt_ms": 1.5}
    assert figures.summary() == "loss=1.5% jitter=1.2ms rtt=1.5ms remote_loss=-"
    silent = CallQuality(packets_expected=0, packets_lost=0, jitter=0.0, remote_fraction_lost=None,
                         remote_jitter=None, round_trip=None, reports_received=0)
    assert silent.call_log_fields() == {"loss_ratio": None, "jitter_ms": None, "rtt_ms": None}
