"""Technician load: at most ``limit`` transfers in any ``window`` seconds, across all calls.

Theory of operation: the technicians behind the line can pick up only so many calls;
rather than ask them (there is no presence API), the server paces what it sends: a
transfer is allowed when fewer than ``limit`` transfers happened in the last
``window`` seconds. The window slides: a transfer made at ``t`` counts against every
instant in ``[t, t + window)`` and frees its slot at exactly ``t + window``.

A :class:`LoadWindow` keeps the times of the most recent ``limit`` transfers in a
deque of at most ``limit`` entries, oldest first; whether a slot is free depends
only on those (fewer than ``limit`` transfers in the window means the ``limit``-th
most recent one has left it), so memory stays bounded however many calls come in.
Entries that left the window are dropped whenever the window is looked at.

``now`` is in seconds on a monotonic clock (``trio.current_time()`` in the shell),
never the wall clock: a wall clock stepped back by NTP would hold slots for longer.
One :class:`LoadWindow` is shared by every call of the server; it does no I/O and
takes no lock, which is safe under trio because no method awaits. Use
:meth:`LoadWindow.try_take` to decide and count in one step.
"""

from __future__ import annotations

import collections
import math

__all__ = ["LoadWindow"]


class LoadWindow:
    """A sliding-window limit on transfers: ``limit`` in any ``window`` seconds."""

    __slots__ = ("limit", "window", "_recent")

    def __init__(self, limit: int = 5, window: float = 600.0) -> None:
        if type(limit) is not int or limit < 0:
            raise ValueError(f"transfer limit must be a whole number >= 0 (0 turns transfers off), not {limit!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) \
                or not math.isfinite(window) or window <= 0:
            raise ValueError(f"transfer window must be a number of seconds > 0, not {window!r}")
        self.limit = limit
        self.window = float(window)
        # maxlen: recording past the limit forgets the oldest, which no answer depends on.
        self._recent: collections.deque[float] = collections.deque(maxlen=limit)

    def __repr__(self) -> str:
        return f"LoadWindow(limit={self.limit}, window={self.window}, recent={list(self._recent)})"

    def _expire(self, now: float) -> None:
        recent = self._recent
        # A transfer at t frees its slot at t + window exactly.
        while recent and recent[0] + self.window <= now:
            recent.popleft()

    def in_window(self, now: float) -> int:
        """How many transfers count against ``now`` (at most ``limit``: older ones are forgotten)."""
        self._expire(now)
        return len(self._recent)

    def allows(self, now: float) -> bool:
        """Whether a transfer at ``now`` stays within the limit (never when ``limit`` is 0)."""
        return self.in_window(now) < self.limit

    def record(self, now: float) -> None:
        """Count a transfer made at ``now``, even one :meth:`allows` refused (a forced transfer).

        Raises ValueError when ``now`` is earlier than the last transfer recorded: the
        caller mixed two clocks.
        """
        if self._recent and now < self._recent[-1]:
            raise ValueError(f"transfer recorded at {now}, before the last one at {self._recent[-1]}: "
                             f"now must come from one monotonic clock")
        self._expire(now)
        self._recent.append(now)

    def try_take(self, now: float) -> bool:
        """Record a transfer at ``now`` if the limit allows it; whether it did."""
        if not self.allows(now):
            return False
        self.record(now)
        return True

    def next_free(self, now: float) -> float | None:
        """When a transfer will next be allowed: ``now`` if it is now, None if never (limit 0)."""
        if self.limit == 0:
            return None
        if self.allows(now):
            return now
        return self._recent[0] + self.window
