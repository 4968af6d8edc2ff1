"""The handover desk: can a technician take this caller now, and what is left for them when not.

Theory of operation: one desk serves every call of the server, because the
technician load is the team's, not a call's. When a caller wants a technician the
script asks :meth:`HandoverDesk.plan`, which weighs the business hours (a weekly
schedule and holidays in Europe/Paris time) and the load window (at most N
transfers in a sliding window) with the pure rules of ``eko_rtp/transfer/`` and
answers: transfer to this queue's URI, closed, or busy. A transfer takes its slot
in the window at that moment. When the caller cannot be put through (closed, busy,
no queue configured, or the transfer failed) the script calls
:meth:`HandoverDesk.leave_request`: a callback request in the CRM (a ticket for an
anonymous caller, who cannot be called back), retried while the call lives
(``eko_rtp/crm/followup.py``) even past a hang-up, within a budget, never lost without a log line and a count.

The desk survives a reload: :meth:`HandoverDesk.reconfigured` keeps the load
window (transfers already made still count) and takes the new hours and queues.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Callable

import attrs
import trio

from eko_rtp.crm.followup import FollowupStats
from eko_rtp.transfer.hours import BusinessHours
from eko_rtp.transfer.load import LoadWindow
from eko_rtp.transfer.policy import Decision, TransferTargets, decide

log = logging.getLogger("eko_rtp.call.handover")

# s the CRM has to take a callback or ticket, counted from the request: the caller
# hears the promise meanwhile, and the call waits for it at most this long.
FOLLOWUP_BUDGET = 8.0


@attrs.frozen(kw_only=True)
class HandoverPlan:
    """What the desk decided for one caller."""

    decision: Decision
    queue: str
    target: str | None = None  # the queue's SIP URI when the decision is TRANSFER
    opens_at: float | None = None  # unix time the service opens next, when CLOSED
    why: str = ""


class HandoverDesk:
    """Business hours, technician load, queues, and the CRM for callbacks: shared by all calls."""

    def __init__(self, *, hours: BusinessHours, targets: TransferTargets, load: LoadWindow, crm=None,
                 wall_clock: Callable[[], float] = time.time):
        self.hours = hours
        self.targets = targets
        self.load = load
        self.crm = crm
        self._wall_clock = wall_clock
        self.followup_failures = 0  # callbacks and tickets the CRM never took (counted for metrics)
        self.followup_stats = FollowupStats()

    def reconfigured(self, *, hours: BusinessHours, targets: TransferTargets, limit: int, window: float,
                     crm=None) -> "HandoverDesk":
        """The desk after a reload: new hours and queues; the load window keeps its transfers if unchanged."""
        load = self.load if (self.load.limit, self.load.window) == (limit, window) else LoadWindow(limit, window)
        desk = HandoverDesk(hours=hours, targets=targets, load=load, crm=crm if crm is not None else self.crm,
                            wall_clock=self._wall_clock)
        desk.followup_failures, desk.followup_stats = self.followup_failures, self.followup_stats
        return desk

    def plan(self, queue: str | None) -> HandoverPlan:
        """Transfer, closed or busy for a caller of ``queue`` ("internet", "mobile", None: default)."""
        queue = queue if queue in ("internet", "mobile") else "default"
        wall = self._wall_clock()
        if not self.targets.configured:
            return HandoverPlan(decision=Decision.BUSY, queue=queue, why="no technician queue is configured")
        decision = decide(hours=self.hours, load=self.load, wall_time=wall, now=trio.current_time())
        if decision is Decision.CLOSED:
            return HandoverPlan(decision=decision, queue=queue, opens_at=self.hours.next_change(wall),
                                why="outside business hours")
        if decision is Decision.BUSY:
            return HandoverPlan(decision=decision, queue=queue,
                                why=f"{self.load.limit} transfers in the last {self.load.window:.0f} s")
        return HandoverPlan(decision=decision, queue=queue, target=self.targets.target_for(queue))

    async def leave_request(self, *, call_id: str, phone: str | None, reason: str, queue: str,
                            not_before: float | None = None) -> str | None:
        """Record a callback (or, for an anonymous caller, a ticket); its CRM id, None if not recorded.

        Retried within :data:`FOLLOWUP_BUDGET`, even if the caller hangs up meanwhile; a
        failure is logged and counted by the follow-up, and counted here for the metrics.
        """
        from eko_rtp.crm.followup import deliver
        from eko_rtp.crm.records import CallbackRequest, TicketRequest

        if self.crm is None:
            log.warning("no CRM: the %s request of this caller (%s) is only in this log", queue, reason)
            self.followup_failures += 1
            return None
        if phone is None:
            request = TicketRequest(call_id=call_id, phone=None, reason=reason, category=_category(queue),
                                    created_at=_utc_now(self._wall_clock()))
        else:
            request = CallbackRequest(call_id=call_id, phone=phone, reason=reason, queue=queue,
                                      not_before=None if not_before is None else _utc_now(not_before))
        deadline = trio.current_time() + FOLLOWUP_BUDGET
        # The caller has been promised a callback: a hang-up right after the promise must
        # not lose it, so the request outlives the call's cancellation, within its budget.
        # (deliver stops by the deadline itself; the scope's own deadline is only a backstop.)
        identifier = None
        with trio.CancelScope(shield=True, deadline=deadline + 1.0):
            identifier = await deliver(self.crm, request, deadline=deadline, stats=self.followup_stats)
        if identifier is None:
            self.followup_failures += 1
        return identifier


def _category(queue: str) -> str:
    return queue if queue in ("internet", "mobile") else "other"


def _utc_now(unix_time: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc)
