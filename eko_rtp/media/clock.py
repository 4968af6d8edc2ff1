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
plain timeout. While trio has nothing else to do before the tick, the timerfd is
waited for outside trio's loop (:mod:`eko_rtp.media.idle_wait`). The timerfd is
armed periodic, as far apart as the slot it wakes for and the next busy one: when
the next busy slot is the timer's next expiry (every slot busy, at a few hundred
calls; one busy slot, at a few calls) the clock just waits for it instead of
re-arming the timer on every tick.

A stream is any object with ``next_due: float`` and ``send_due(now) -> float | None``
(send what is due at ``now``, return the next due time, or ``None`` when it stopped).
Lateness is the stream's business (it counts frames sent late); the clock only
guarantees it never sleeps past a due slot on purpose.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import trio

from eko_rtp.codec.frame import FRAME_SECONDS
from eko_rtp.media.timer import PreciseTimer

SLOT_SECONDS = 0.001
WHEEL_SLOTS = round(FRAME_SECONDS / SLOT_SECONDS)  # one bucket per millisecond of the frame period
MAX_SHIFT_SLOTS = WHEEL_SLOTS - 1  # how far on a new stream's schedule may move to a better millisecond
PERIODIC_MATCH = 1e-6  # s: a periodic expiry this close to the wanted slot is that slot
# Streams a bucket takes before new ones go elsewhere. Every busy bucket is a wake-up
# of the loop 50 times a second, and a fuller tick moves no stream's own spacing
# (16 kept all 20 buckets busy from 320 calls on: docs/BENCHMARKS.md, thirteenth session).
PACK_LIMIT = 64


class ScheduledStream(Protocol):
    next_due: float

    def send_due(self, now: float) -> float | None: ...


class FrameClock:
    """The timer wheel and the one task that drives it.

    The wheel has ``WHEEL_SLOTS`` buckets, one per millisecond of the 20 ms frame
    period, and a stream stays in the bucket of its phase: serving slot ``s``
    serves bucket ``s % WHEEL_SLOTS``. A stream whose next due time falls in the
    same bucket 20 slots on (every call: frames are 20 ms apart) stays where it
    is, so the per-frame cost is one ``send_due`` call and two float comparisons,
    not a re-insertion. A stream that returns another phase (a test stream with
    another period) is moved; one that returns ``None`` is dropped.
    """

    def __init__(self, *, slot_seconds: float = SLOT_SECONDS, precise: bool = False):
        self.slot_seconds = slot_seconds
        self._buckets: list[list[ScheduledStream]] = [[] for _ in range(WHEEL_SLOTS)]
        self._count = 0  # streams in the wheel
        self._served: int | None = None  # the last slot served
        self._sleeping_until: int | None = None
        self._wakeup = trio.Event()
        self._timer = PreciseTimer() if precise else None
        self._ticked: trio.Event | None = None  # made by wait_tick, set by the next tick
        # When the next tick is due, on trio's clock (the one time base of the media
        # path): the receive hub reads it to step aside before a tick (see ReceiveHub).
        self.next_tick = math.inf
        self.ticks = 0
        self._after_tick: list[Callable[[], None]] = []
        self._rider: Callable[[float | None], None] | None = None

    def after_tick(self, flush: Callable[[], None]) -> None:
        """Call ``flush()`` once a tick has served every stream due: a batched sender
        (media/shared_port.py) sends the tick's frames in one system call there."""
        self._after_tick.append(flush)

    def ride(self, rider: Callable[[float | None], None] | None) -> None:
        """Call ``rider(now)`` in the clock's own task after every tick, once the tick's
        flushes are done, and ``rider(None)`` when the wheel empties (no tick to come);
        None: stop. The receive hub drains there while a few calls are up, so their
        inbound packets cost neither a wake-up nor a task switch of their own."""
        self._rider = rider

    def _tell_rider(self, now: float | None) -> None:
        rider = self._rider
        if rider is not None:
            rider(now)

    @property
    def streams(self) -> int:
        """Streams in the wheel (a stopped one leaves at its next slot)."""
        return self._count

    def _slot_of(self, due: float) -> int:
        return math.ceil(due / self.slot_seconds - 1e-9)

    def balancing_shift(self, due: float) -> float:
        """How far on to move a new stream's schedule, once, so its ticks stay short and few.

        Calls are answered in bursts (a trunk paces its INVITEs: at 100 calls a second
        every answer lands on the same two phases of the 20 ms period), so left alone
        a few buckets hold most streams and their ticks send 150 packets where 50
        would be the share: a tick that long leaves its last frames milliseconds late.
        At low load the opposite matters: every busy bucket is one more wake-up of
        the whole loop per period (at 4 calls, a wake-up of the idle vCPU is most of
        the cost). So up to ``MAX_SHIFT_SLOTS`` ms on (the whole period: any bucket)
        a new stream joins the fullest bucket still under ``PACK_LIMIT`` (one
        wake-up serves them all), and once every bucket is that full, the
        least-loaded one; the nearest wins a tie.

        Only later, never earlier: the stream's first frame has already left (on the
        200 OK), and the stream counts the shift in its RTP timestamps
        (:meth:`MediaStream.shift_schedule`), so the second frame is sampled that much
        after the first ends: a short pause at the call's start, not jitter, for a
        receiver that reads timestamps (RFC 3550 §6.4.1). Returns seconds to add (>= 0).
        """
        natural = self._slot_of(due)
        buckets = self._buckets
        loads = [len(buckets[(natural + shift) % WHEEL_SLOTS]) for shift in range(MAX_SHIFT_SLOTS + 1)]
        joinable = [(load, shift) for shift, load in enumerate(loads) if 0 < load < PACK_LIMIT]
        if joinable:
            best = max(joinable, key=lambda pair: pair[0])  # max keeps the first (nearest) of equals
            return best[1] * self.slot_seconds
        if loads[0] == 0:
            return 0.0
        return loads.index(min(loads)) * self.slot_seconds

    def schedule(self, stream: ScheduledStream) -> None:
        """Put ``stream`` in the wheel at its ``next_due``."""
        slot = self._slot_of(stream.next_due)
        self._buckets[slot % WHEEL_SLOTS].append(stream)
        self._count += 1
        if self._served is None or slot <= self._served:
            # The first stream, or one due in a slot already served (started between
            # ticks): the next pass's bucket scan starts at its slot.
            self._served = slot - 1
        if self._sleeping_until is None or slot < self._sleeping_until:
            self._wakeup.set()
            timer = self._timer
            if timer is not None and timer.armed_at is not None and slot * self.slot_seconds < timer.armed_at:
                timer.arm(slot * self.slot_seconds, interval=self.slot_seconds)  # a new stream needs an earlier tick

    def _next_busy_slot(self) -> int | None:
        """The first slot after the last served whose bucket holds a stream."""
        buckets = self._buckets
        served = self._served
        for slot in range(served + 1, served + 1 + WHEEL_SLOTS):
            if buckets[slot % WHEEL_SLOTS]:
                return slot
        return None

    def _gap_after(self, slot: int) -> int:
        """Slots from ``slot`` to the next busy one after it (WHEEL_SLOTS when it is the only one)."""
        buckets = self._buckets
        for gap in range(1, WHEEL_SLOTS):
            if buckets[(slot + gap) % WHEEL_SLOTS]:
                return gap
        return WHEEL_SLOTS

    def _serve(self, slot: int, now: float) -> None:
        """Send what is due for every stream in ``slot``'s bucket."""
        index = slot % WHEEL_SLOTS
        bucket = self._buckets[index]
        if not bucket:
            return
        slot_seconds = self.slot_seconds
        # A next due time that _slot_of puts in slot + WHEEL_SLOTS keeps the stream here.
        upper = (slot + WHEEL_SLOTS + 1e-9) * slot_seconds
        lower = upper - slot_seconds
        leaving = None
        for stream in bucket:
            next_due = stream.send_due(now)
            if next_due is not None:
                stream.next_due = next_due
                if lower < next_due <= upper:
                    continue
            if leaving is None:
                leaving = []
            leaving.append((stream, next_due))
        if leaving is None:
            return
        gone = {id(stream) for stream, _ in leaving}
        self._buckets[index] = [stream for stream in bucket if id(stream) not in gone]
        self._count -= len(leaving)
        for stream, next_due in leaving:
            if next_due is not None:
                self.schedule(stream)  # another phase, or more than a period ahead

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drive every scheduled stream until cancelled."""
        task_status.started()
        slot_seconds = self.slot_seconds
        # Trio's clock, read through its bound method: trio.current_time() is three
        # Python calls, and this loop reads the time four times a tick.
        clock = trio.lowlevel.current_clock().current_time
        while True:
            wake_slot = self._next_busy_slot() if self._count else None
            if wake_slot is None:
                self._release_tick_waiter()  # no more ticks to wait for
                self._tell_rider(None)
                if self._timer is not None and self._timer.armed_at is not None:
                    self._timer.disarm()  # an idle clock takes no periodic wake-ups
                self._sleeping_until = None
                self.next_tick = math.inf
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            wake_at = wake_slot * slot_seconds
            now = clock()
            self.next_tick = wake_at
            if now < wake_at:
                self._sleeping_until = wake_slot
                timer = self._timer
                if timer is not None:
                    next_expiry = timer.armed_at
                    if next_expiry is None or abs(next_expiry - wake_at) > PERIODIC_MATCH:
                        # Periodic, as far apart as this busy slot and the next: while the
                        # busy slots are evenly spread (every slot from about 320 calls;
                        # one slot for a few calls) the timer is armed once, not once a tick.
                        timer.arm(wake_at, interval=self._gap_after(wake_slot) * slot_seconds)
                    await timer.wait(now)  # schedule() re-arms it for an earlier slot
                else:
                    self._wakeup = trio.Event()
                    with trio.move_on_at(wake_at):
                        await self._wakeup.wait()  # a new stream may need an earlier slot
                self._sleeping_until = None
                continue
            now = clock()
            current = math.floor(now / slot_seconds + 1e-9)
            self.ticks += 1
            # Every bucket is served once at most: a clock more than a period late
            # serves each bucket once and the streams send all their due frames.
            first = max(self._served + 1, current - WHEEL_SLOTS + 1)
            self._served = current
            buckets = self._buckets
            for slot in range(first, current + 1):
                if buckets[slot % WHEEL_SLOTS]:  # most slots are empty at a few calls
                    self._serve(slot, now)
            for flush in self._after_tick:
                flush()
            # The tick just served is no longer the next one: say which is before the
            # hub (released below) compares its time with it, or it would step aside
            # for a tick that has already gone.
            following = self._next_busy_slot() if self._count else None
            self.next_tick = following * slot_seconds if following is not None else math.inf
            self._release_tick_waiter()
            self._tell_rider(now)
            if self.next_tick <= clock():
                # Late: the next tick is due already. Let other due work go first. On
                # time, the wait for the next tick below lets it go, at no extra pass
                # of trio's loop (and its epoll_wait) per tick.
                await trio.lowlevel.checkpoint()

    def _release_tick_waiter(self) -> None:
        if self._ticked is not None:
            self._ticked.set()
            self._ticked = None

    async def wait_tick(self) -> None:
        """Return after the clock's next tick.

        Returns at once when the wheel is empty, and as soon as it empties: there is
        no tick to wait for then. The receive hub waits here when it steps aside
        for a tick in the middle of a drain.
        """
        if not self._count:
            await trio.lowlevel.checkpoint()
            return
        if self._ticked is None:
            self._ticked = trio.Event()
        await self._ticked.wait()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
