"""One frame clock for every call: wake on a 1 ms grid, send every frame that is due.

Why one shared clock: a sleeping task per call per frame costs a trio wake-up, a
heap operation and a context switch for every packet; at 1000 calls that is 50 000
wake-ups a second. Here each stream keeps its own absolute schedule (frame n due at
``t0 + n·20 ms`` on ``trio.current_time()``), and streams are kept in a timer wheel
of 1 ms slots. The clock sleeps until the earliest non-empty slot, then sends every
due frame of every stream in the slots it has reached. A stream's frames therefore
leave at its own phase, rounded to the next millisecond, which is a constant offset
per stream: it does not add jitter. The first frame of a stream is sent at once when
the stream starts (on the 200 OK), not at the next tick.

With ``precise=True`` (the server) the clock sleeps on a timerfd
(:mod:`eko_rtp.media.timer`) instead of a trio timeout, whose millisecond rounding
would otherwise add up to 1 ms of jitter; tests under trio's mock clock use the
plain timeout.

A stream is any object with ``next_due: float`` and ``send_due(now) -> float | None``
(send what is due at ``now``, return the next due time, or ``None`` when it stopped).
Lateness is the stream's business (it counts frames sent late); the clock only
guarantees it never sleeps past a due slot on purpose.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from eko_rtp.media.timer import PreciseTimer

SLOT_SECONDS = 0.001


class ScheduledStream(Protocol):
    next_due: float

    def send_due(self, now: float) -> float | None: ...


class FrameClock:
    """The timer wheel and the one task that drives it."""

    def __init__(self, *, slot_seconds: float = SLOT_SECONDS, precise: bool = False):
        self.slot_seconds = slot_seconds
        self._slots: dict[int, list[ScheduledStream]] = {}
        self._wakeup = trio.Event()
        self._timer = PreciseTimer() if precise else None
        self.ticks = 0
        self.streams = 0

    def _slot_of(self, due: float) -> int:
        return math.ceil(due / self.slot_seconds - 1e-9)

    def schedule(self, stream: ScheduledStream) -> None:
        """Put ``stream`` in the wheel at its ``next_due``."""
        slot = self._slot_of(stream.next_due)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [stream]
            self._wakeup.set()
            timer = self._timer
            if timer is not None and timer.armed_at is not None and slot * self.slot_seconds < timer.armed_at:
                timer.arm(slot * self.slot_seconds)  # a new stream needs an earlier tick
        else:
            bucket.append(stream)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drive every scheduled stream until cancelled."""
        task_status.started()
        slots = self._slots
        slot_seconds = self.slot_seconds
        while True:
            if not slots:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            earliest = min(slots)
            wake_at = earliest * slot_seconds
            if trio.current_time() < wake_at:
                if self._timer is not None:
                    self._timer.arm(wake_at)
                    await self._timer.wait()  # schedule() re-arms it for an earlier slot
                    continue
                self._wakeup = trio.Event()
                with trio.move_on_at(wake_at):
                    await self._wakeup.wait()  # a new stream may need an earlier slot
                continue
            now = trio.current_time()
            current = math.floor(now / slot_seconds + 1e-9)
            self.ticks += 1
            for slot in sorted(s for s in slots if s <= current):
                for stream in slots.pop(slot):
                    next_due = stream.send_due(now)
                    if next_due is not None:
                        stream.next_due = next_due
                        self.schedule(stream)
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
