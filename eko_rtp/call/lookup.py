"""The caller look-up a call starts the moment its INVITE arrives.

Theory of operation: the server starts :meth:`CallerLookup.run` as the first task of
the call's nursery, in parallel with answering. The greeting waits for it with
:meth:`CallerLookup.wait` only until the budget measured *from the INVITE* (default
150 ms) runs out; then the standard greeting plays. The caller never waits on the
CRM and no call fails because of it: every CRM error ends the look-up with no record.
A late answer is still kept (``record``) for the rest of the call.

How each look-up ended goes to ``on_result`` (a :class:`LookupResult`), given when the
look-up is made: the server passes its metrics' counter there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from eko_rtp.crm.errors import CrmError
from eko_rtp.service.logs import mask_phone

log = logging.getLogger("eko_rtp.call.lookup")

# A late answer is still worth having for the rest of the call, but not forever.
LATE_ANSWER_LIMIT = 5.0


@attrs.frozen(kw_only=True)
class LookupResult:
    """How one look-up asked of the CRM ended."""

    took: float  # seconds from the INVITE to the answer or the failure
    answered: bool  # the CRM answered: a record, or "not a customer"
    past_budget: bool  # it ended after the greeting budget: the caller heard the standard greeting


class CallerLookup:
    """One call's CRM look-up: its outcome, and an event for those who wait on it."""

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = (
        "crm", "phone", "started_at", "budget", "call_id", "on_result", "done", "record", "error", "finished_at",
    )

    def __init__(self, *, crm, phone: str | None, started_at: float, budget: float, call_id: str,
                 on_result: Callable[[LookupResult], None] | None = None):
        self.crm = crm
        self.phone = phone
        self.started_at = started_at
        self.budget = budget
        self.call_id = call_id
        self.on_result = on_result
        self.done = trio.Event()
        self.record = None
        self.error: str | None = None
        self.finished_at: float | None = None
        # Nothing to ask: the look-up is over before it starts, and the greeting need
        # not wait a scheduler pass for a task to say so.
        if crm is None:
            self._nothing_to_ask("no CRM configured")
        elif phone is None:
            self._nothing_to_ask("anonymous or unparseable caller number")

    def _nothing_to_ask(self, why: str) -> None:
        self.error = why
        self.finished_at = self.started_at
        self.done.set()

    @property
    def deadline(self) -> float:
        return self.started_at + self.budget

    async def run(self) -> None:
        """Ask the CRM; never raises (failures are logged and counted by the client)."""
        if self.done.is_set():
            return  # nothing to ask (see __init__)
        try:
            self.record = await self.crm.lookup_caller(self.phone, timeout=LATE_ANSWER_LIMIT)
        except CrmError as error:
            self.error = str(error)
        finally:
            self.finished_at = trio.current_time()
            self.done.set()
        took = (self.finished_at - self.started_at) * 1000
        past_budget = self.finished_at > self.deadline
        late = " (after the greeting budget)" if past_budget else ""
        outcome = "known caller" if self.record is not None else (self.error or "unknown caller")
        log.info("CRM look-up of %s: %s in %.1f ms%s", mask_phone(self.phone), outcome, took, late)
        if self.on_result is not None:
            self.on_result(LookupResult(took=self.finished_at - self.started_at, answered=self.error is None,
                                        past_budget=past_budget))

    async def wait(self):
        """The record if the CRM answered within the budget from the INVITE, else None."""
        if self.done.is_set():
            return self.record  # no checkpoint: the caller's first phrase goes on in this step
        with trio.move_on_at(self.deadline):
            await self.done.wait()
        return self.record if self.done.is_set() else None
