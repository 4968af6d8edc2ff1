"""The frame clock's timerfd wake-up, on the real clock: never early, re-armable, closable."""

import contextlib
import os

import pytest
import trio

from eko_rtp.media.clock import FrameClock
from eko_rtp.media.timer import PreciseTimer


async def test_fires_at_the_deadline_not_before():
    timer = PreciseTimer()
    try:
        for delay in (0.002, 0.007, 0.013):
            deadline = trio.current_time() + delay
            timer.arm(deadline)
            await timer.wait()
            woke = trio.current_time()
            assert woke >= deadline
            assert woke - deadline < 0.25  # generous: a loaded CI machine may be slow to schedule us
            assert timer.armed_at is None
    finally:
        timer.close()


async def test_rearming_earlier_wakes_earlier_and_past_deadlines_fire_at_once():
    timer = PreciseTimer()
    try:
        start = trio.current_time()
        timer.arm(start + 5.0)
        timer.arm(start + 0.005)  # a new stream needed an earlier tick
        with trio.fail_after(2):
            await timer.wait()
        timer.arm(trio.current_time() - 1.0)
        with trio.fail_after(2):
            await timer.wait()
    finally:
        timer.close()


async def test_a_precise_clock_sends_frames_on_schedule_and_releases_its_fd():
    before = len(os.listdir("/proc/self/fd"))
    clock = FrameClock(precise=True)
    sent = []

    class Stream:
        def __init__(self, t0):
            self.t0, self.index, self.next_due = t0, 1, t0 + 0.020

        def send_due(self, now):
            sent.append((self.index, now))
            self.index += 1
            return None if self.index > 5 else self.t0 + self.index * 0.020

    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        t0 = trio.current_time()
        clock.schedule(Stream(t0))
        with trio.fail_after(5):
            while len(sent) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    clock.close()
    assert [index for index, _ in sent] == [1, 2, 3, 4, 5]
    assert all(now >= t0 + index * 0.020 for index, now in sent)  # never before its due time
    assert len(os.listdir("/proc/self/fd")) == before


async def test_a_periodic_timer_fires_every_interval_until_disarmed():
    timer = PreciseTimer()
    try:
        start = trio.current_time() + 0.005
        timer.arm(start, interval=0.004)
        for n in range(3):
            with trio.fail_after(2):
                await timer.wait()
            assert trio.current_time() >= start + n * 0.004
            assert abs(timer.armed_at - (start + (n + 1) * 0.004)) < 1e-9  # the next expiry
        await trio.sleep(0.0130)  # three expiries pass unread: one read counts them all
        await timer.wait()
        assert timer.armed_at > trio.current_time()
        timer.disarm()
        assert timer.armed_at is None
        with trio.move_on_after(0.05) as waited:
            await timer.wait()
        assert waited.cancelled_caught  # disarmed: it does not fire again
    finally:
        timer.close()


class TickedStream:
    """A frame-clock stream that notes each tick in the shared ``ticks`` and stops once it holds ``limit``."""

    def __init__(self, first_due: float, ticks: list, limit: int):
        self.next_due = first_due
        self.ticks = ticks
        self.limit = limit

    def send_due(self, now):
        self.ticks.append(now)
        return self.next_due + 0.020 if len(self.ticks) < self.limit else None


@contextlib.asynccontextmanager
async def running_clock(clock: FrameClock, phases, ticks: list, limit: int):
    """Run ``clock`` with a stream at each phase (ms past a grid point just ahead); on
    leaving the block, wait (5 s at most) until ``ticks`` holds ``limit``, then stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        base = (int(trio.current_time() * 1000) + 5) / 1000  # on the 1 ms grid
        for phase in phases:
            clock.schedule(TickedStream(base + phase * 0.001, ticks, limit))
        yield
        with trio.fail_after(5):
            while len(ticks) < limit:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def counting_arms(timer: PreciseTimer) -> list:
    """Wrap ``timer.arm`` so that every deadline it is armed at is noted in the list returned."""
    arms = []
    original_arm = timer.arm

    def counting_arm(deadline, **kwargs):
        arms.append(deadline)
        original_arm(deadline, **kwargs)

    timer.arm = counting_arm
    return arms


async def test_a_clock_with_a_stream_in_every_slot_arms_its_timer_once_not_every_tick():
    clock = FrameClock(precise=True)
    arms = counting_arms(clock._timer)
    ticks = []
    try:
        async with running_clock(clock, range(20), ticks, 200):  # one stream in every bucket
            pass
    finally:
        clock.close()
    assert len(ticks) >= 200
    # Late ticks (a loaded CI machine) re-arm it; an on-time run arms once.
    assert len(arms) < 40, len(arms)


@pytest.mark.parametrize("phases", [(0,), (0, 10)])
async def test_a_clock_with_evenly_spread_busy_slots_arms_its_timer_once_and_reads_it_once_a_tick(
        phases, monkeypatch):
    # A few calls share one bucket (or evenly spaced ones): the periodic timer's
    # interval is the gap between busy slots, so it is not re-armed every tick, and
    # the clock waits before reading it instead of reading it too early (EAGAIN).
    clock = FrameClock(precise=True)
    timer = clock._timer
    arms = counting_arms(timer)
    failed_reads = []
    original_read = os.read

    def counting_read(fd, size):
        try:
            return original_read(fd, size)
        except BlockingIOError:
            if fd == timer.fd:
                failed_reads.append(fd)
            raise

    monkeypatch.setattr(os, "read", counting_read)
    try:
        async with running_clock(clock, phases, [], 60 * len(phases)):
            pass
    finally:
        clock.close()
    # Late ticks (a loaded CI machine) re-arm it and may find it not yet readable;
    # an on-time run does neither more than a few times.
    assert len(arms) < 15, len(arms)
    assert len(failed_reads) < 15, len(failed_reads)


async def test_an_on_time_clock_costs_one_pass_of_trios_loop_a_tick():
    # The wait for the next tick is the clock's only yield when it is on time: no
    # extra checkpoint, so no extra pass of trio's loop (and its epoll_wait) per tick.
    class CountingWaits(trio.abc.Instrument):
        def __init__(self):
            self.waits = 0

        def before_io_wait(self, timeout):
            self.waits += 1

    clock = FrameClock(precise=True)
    ticks = []
    instrument = CountingWaits()
    try:
        async with running_clock(clock, [0], ticks, 50):
            with trio.fail_after(5):
                while len(ticks) < 5:
                    await trio.sleep(0.01)
            trio.lowlevel.add_instrument(instrument)
            counted_from = len(ticks)
            with trio.fail_after(5):
                while len(ticks) < 45:
                    await trio.sleep(0.1)  # this task's own wake-ups: a few, not one a tick
            trio.lowlevel.remove_instrument(instrument)
            counted = len(ticks) - counted_from
    finally:
        clock.close()
    # Late ticks (a loaded CI machine) add passes; an on-time run has one a tick.
    assert instrument.waits < 1.4 * counted, (instrument.waits, counted)
