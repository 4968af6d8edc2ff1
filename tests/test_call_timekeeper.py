"""The call's RTCP schedule and watchdog as one schedule (eko_rtp/call/timekeeper.py), step by step."""

from __future__ import annotations

import pytest

from eko_rtp.call.timekeeper import MAX_DURATION, RTP_TIMEOUT, Step, Timekeeper


def keeper(**overrides) -> Timekeeper:
    settings = dict(invite_time=100.0, max_duration=60.0, rtp_timeout=10.0, rtp_timeout_before_ack=5.0,
                    rtcp_first_report=2.5, rtcp_interval=5.0, spread=lambda: 1.0)
    settings.update(overrides)
    return Timekeeper(**settings)


def test_before_the_answer_only_the_maximum_duration_counts():
    clock = keeper()
    assert clock.step(101.0, None) == Step(report=False, hang_up=None, wake_at=160.0)
    assert clock.step(159.0, 158.0) == Step(report=False, hang_up=None, wake_at=160.0)
    assert clock.step(160.0, None) == Step(report=False, hang_up=MAX_DURATION, wake_at=160.0)


@pytest.mark.parametrize(
    ("confirmed_at", "last_inbound", "now", "expected"),
    [
        # answered at 110, no ACK: 5 s of silence from the answer or the last packet
        (None, None, 112.0, Step(report=False, hang_up=None, wake_at=115.0)),
        (None, None, 114.9, Step(report=False, hang_up=None, wake_at=115.0)),
        (None, None, 115.0, Step(report=False, hang_up=RTP_TIMEOUT, wake_at=115.0, silent_for=5.0)),
        (None, 114.0, 115.0, Step(report=False, hang_up=None, wake_at=119.0)),
        (None, 109.0, 115.0, Step(report=False, hang_up=RTP_TIMEOUT, wake_at=115.0, silent_for=5.0)),  # before the answer
        # the ACK at 111: 10 s from the ACK or the last packet
        (111.0, None, 120.9, Step(report=False, hang_up=None, wake_at=121.0)),
        (111.0, None, 121.0, Step(report=False, hang_up=RTP_TIMEOUT, wake_at=121.0, silent_for=10.0)),
        (111.0, 120.0, 121.0, Step(report=False, hang_up=None, wake_at=130.0)),
        (111.0, 155.0, 159.0, Step(report=False, hang_up=None, wake_at=160.0)),  # the maximum duration is nearer
        (111.0, 159.0, 160.0, Step(report=False, hang_up=MAX_DURATION, wake_at=160.0)),
    ],
)
def test_silence_is_counted_from_the_answer_the_ack_or_the_last_packet(confirmed_at, last_inbound, now, expected):
    clock = keeper(rtcp_first_report=1000.0)  # reports apart: the next test
    clock.answer(110.0)
    if confirmed_at is not None:
        clock.confirm(confirmed_at)
    assert clock.step(now, last_inbound) == expected


def test_reports_start_half_an_interval_after_the_answer_then_follow_the_spread_interval():
    spreads = iter([0.5, 1.5, 1.0])
    clock = keeper(spread=lambda: next(spreads))
    clock.answer(110.0)
    clock.confirm(110.1)
    steps = []
    now = 110.1
    for _ in range(4):
        step = clock.step(now, now)  # the caller sends all along: only reports are due
        steps.append((now, step.report))
        now = step.wake_at
    # reports at 112.5, then 2.5 s later (0.5 x 5), then 7.5 s later (1.5 x 5)
    assert steps == [(110.1, False), (112.5, True), (115.0, True), (122.5, True)]


def test_a_report_due_at_the_hang_up_is_still_sent():
    clock = keeper()
    clock.answer(110.0)
    assert clock.step(115.0, None) == Step(report=True, hang_up=RTP_TIMEOUT, wake_at=115.0, silent_for=5.0)


def test_an_ack_without_an_answer_event_answers_too_and_answer_and_confirm_count_once():
    clock = keeper()
    clock.confirm(111.0)
    clock.confirm(130.0)
    clock.answer(140.0)
    assert (clock.answered_at, clock.confirmed_at) == (111.0, 111.0)
    assert clock.step(113.5, None).report  # reports from the first of them
