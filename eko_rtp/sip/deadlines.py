"""Every timer of the user agent in one structure: keyed deadlines in a heap.

Theory of operation: the user agent arms a timer by giving it a key and an
absolute deadline (``now`` based, in seconds), and the shell asks for
:meth:`Deadlines.next_deadline` to know when to call back. The keys are the
things that wait: a transaction (its retransmission and timeout, RFC 3261 §17),
and the timers of a call: the 2xx retransmission and the 64·T1 give-up for its ACK
(§13.3.1.4), the session refresh and expiry (RFC 4028 §10). Arming a key again
moves its deadline; :meth:`Deadlines.cancel` disarms it; :meth:`Deadlines.pop_due`
hands back the keys whose deadline has come, earliest first, disarmed, so that a
handler re-arms only what must run again.

The heap keeps entries that went stale when their key was moved or cancelled; they
are dropped when they reach the top, and the heap is rebuilt when stale entries
outnumber live ones, so a peer that makes us move a deadline on every message
cannot grow it without bound. Two deadlines at the same instant come out in the
order they were armed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable

__all__ = ["Deadlines"]

_SLACK = 64  # stale entries tolerated beyond the live ones before a rebuild


class Deadlines:
    """Keyed absolute deadlines: schedule, cancel, next_deadline, pop_due."""

    def __init__(self) -> None:
        self._armed: dict[Hashable, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._armed)

    def __contains__(self, key: object) -> bool:
        return key in self._armed

    def deadline(self, key: Hashable) -> float | None:
        """When ``key`` fires, None when it is not armed."""
        entry = self._armed.get(key)
        return None if entry is None else entry[0]

    def schedule(self, key: Hashable, at: float | None) -> None:
        """Arm ``key`` at ``at`` (replacing its deadline); None cancels it."""
        if at is None:
            self.cancel(key)
            return
        entry = (at, next(self._sequence))
        self._armed[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        if len(self._heap) > 2 * len(self._armed) + _SLACK:
            self._rebuild()

    def cancel(self, key: Hashable) -> None:
        """Disarm ``key``; nothing happens when it is not armed."""
        self._armed.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest armed deadline, None when nothing is armed."""
        heap = self._heap
        while heap:
            at, sequence, key = heap[0]
            if self._armed.get(key) == (at, sequence):
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Hashable]:
        """Disarm and return the keys due at ``now``: earliest first, ties in arming order."""
        due = []
        while (at := self.next_deadline()) is not None and at <= now:
            key = heapq.heappop(self._heap)[2]
            del self._armed[key]
            due.append(key)
        return due

    def _rebuild(self) -> None:
        self._heap = [(at, sequence, key) for key, (at, sequence) in self._armed.items()]
        heapq.heapify(self._heap)
