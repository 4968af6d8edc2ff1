"""A call's clocks after the INVITE: its RTCP reports and its watchdog, as one schedule (sans I/O).

Theory of operation: a call has three deadlines besides its script's: the next RTCP
report (RFC 3550 §6.2: the first half a minimum interval after the answer, then every
``rtcp_interval`` randomised 0.5-1.5 times, §6.3.1), the end of the caller's silence
(``rtp_timeout_before_ack`` from the 200 OK until the ACK, ``rtp_timeout`` from the
ACK on, each counted from the caller's last packet), and the maximum duration (from
the INVITE). They were two tasks per call, each with its own coroutine chain, cancel
scope and sleep; one task that sleeps until the nearest of them costs half the
memory (docs/BENCHMARKS.md, thirteenth session).

:meth:`Timekeeper.step` is that task's whole decision: given the time, the caller's
last packet and what the call has seen (answer, ACK), it says whether a report is
due, whether to hang up and why, and when to look again. The shell (``Call``) sends
the report, hangs up, and sleeps until the time given or until the answer or ACK
comes, whichever is first. Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import secrets
from typing import Callable

import attrs

RTP_TIMEOUT = "rtp_timeout"
MAX_DURATION = "max_duration"


def _spread() -> float:
    """RFC 3550 §6.3.1's randomisation of the report interval: uniform in [0.5, 1.5)."""
    return 0.5 + secrets.randbelow(1000) / 1000


@attrs.frozen
class Step:
    """What is due at a step: a report to send, a reason to hang up (None: none), the next look."""

    report: bool
    hang_up: str | None
    wake_at: float
    silent_for: float = 0.0  # s since the caller's last packet when hanging up for rtp_timeout


class Timekeeper:
    """The RTCP schedule and the watchdog of one call (see the module's theory)."""

    __slots__ = ("_deadline", "_first_report", "_interval", "_before_ack", "_timeout", "_spread",
                 "answered_at", "confirmed_at", "_next_report")

    def __init__(self, *, invite_time: float, max_duration: float, rtp_timeout: float,
                 rtp_timeout_before_ack: float, rtcp_first_report: float, rtcp_interval: float,
                 spread: Callable[[], float] = _spread):
        self._deadline = invite_time + max_duration
        self._first_report = rtcp_first_report
        self._interval = rtcp_interval
        self._before_ack = rtp_timeout_before_ack
        self._timeout = rtp_timeout
        self._spread = spread
        self.answered_at: float | None = None
        self.confirmed_at: float | None = None
        self._next_report = float("inf")

    def answer(self, now: float) -> None:
        """The call was answered at ``now``: reports start, and the wait for the ACK."""
        if self.answered_at is None:
            self.answered_at = now
            self._next_report = now + self._first_report

    def confirm(self, now: float) -> None:
        """The ACK came at ``now``: silence is counted against ``rtp_timeout`` from here."""
        if self.confirmed_at is None:
            self.answer(now)
            self.confirmed_at = now

    def step(self, now: float, last_inbound: float | None) -> Step:
        """What is due at ``now``, the caller's last packet at ``last_inbound`` (None: none yet)."""
        if now >= self._deadline:
            return Step(report=False, hang_up=MAX_DURATION, wake_at=now)
        if self.answered_at is None:
            return Step(report=False, hang_up=None, wake_at=self._deadline)
        report = now >= self._next_report
        if report:
            self._next_report = now + self._interval * self._spread()
        if self.confirmed_at is None:
            since, timeout = self.answered_at, self._before_ack
        else:
            since, timeout = self.confirmed_at, self._timeout
        if last_inbound is not None and last_inbound > since:
            since = last_inbound
        if now - since >= timeout:
            return Step(report=report, hang_up=RTP_TIMEOUT, wake_at=now, silent_for=now - since)
        return Step(report=report, hang_up=None, wake_at=min(since + timeout, self._deadline, self._next_report))
