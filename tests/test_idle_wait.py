"""The frame clock's idle wait (media/idle_wait.py), on the real clock and real descriptors.

The tick here is far off (TICK seconds), and each test has something else happen
after EARLY seconds: a datagram, a trio deadline, a thread's callback, a signal, a
task waiting for the loop to go idle. The clock's wait must hand the loop back at
once, so that thing is seen long before the tick (by LATE at the latest; on a slow
machine EARLY may stretch, but not to a whole tick), and the clock's tick still comes.
"""

import contextlib
import gc
import os
import signal
import socket
import threading
import types
import weakref

import pytest
import trio
import trio.testing
from trio._core import _run as trio_run

from eko_rtp.media import idle_wait
from eko_rtp.media.clock import FrameClock
from eko_rtp.media.idle_wait import IdleWait
from eko_rtp.media.timer import PreciseTimer

TICK = 3.0
EARLY = 0.05
LATE = 1.5


async def _ticking(timer: PreciseTimer, ticks: list, *, task_status=trio.TASK_STATUS_IGNORED):
    """A frame clock reduced to its wait: TICK-spaced expiries, their times in ``ticks``.

    It first lets the test's body block (a wait decides once whether to skip trio's
    loop, and with the body still runnable it would not)."""
    timer.arm(trio.current_time() + TICK, interval=TICK)
    task_status.started()
    await trio.testing.wait_all_tasks_blocked()
    while True:
        await timer.wait()
        ticks.append(trio.current_time())


@contextlib.contextmanager
def _later(action):
    """``action()`` on another thread EARLY seconds from now."""
    worker = threading.Timer(EARLY, action)
    worker.start()
    try:
        yield
    finally:
        worker.join()


async def _with_waiting_clock(body):
    """Run ``body(timer)`` while a timer task waits TICK for its next tick; how long ``body`` took."""
    timer = PreciseTimer()
    ticks: list = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_ticking, timer, ticks)
            started = trio.current_time()
            with trio.fail_after(TICK * 2):
                await body(timer)
            took = trio.current_time() - started
            nursery.cancel_scope.cancel()
    finally:
        timer.close()
    return took, timer


async def _periodic_waits(count: int) -> IdleWait:
    """``count`` waits of a 10 ms periodic timer; its idle wait's counters."""
    timer = PreciseTimer()
    try:
        assert timer.idle.available
        timer.arm(trio.current_time() + 0.01, interval=0.01)
        for _ in range(count):
            await timer.wait()
    finally:
        timer.close()
    return timer.idle


async def test_a_lone_timer_waits_outside_trios_loop():
    idle = await _periodic_waits(10)
    # Nothing else in this run: every wait but the first few (pytest-trio's own set-up) skips the loop.
    assert idle.bypassed >= 8


async def test_a_datagram_for_another_task_is_read_at_once():
    receiver = trio.socket.socket(type=socket.SOCK_DGRAM)
    await receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(type=socket.SOCK_DGRAM)

    async def receive(timer):
        with _later(lambda: sender.sendto(b"INVITE", receiver.getsockname())):
            assert await receiver.recv(100) == b"INVITE"

    try:
        took, timer = await _with_waiting_clock(receive)
    finally:
        receiver.close()
        sender.close()
    assert took < LATE
    assert timer.idle.handed_back >= 1  # the clock was waiting outside the loop when it came


async def test_a_deadline_before_the_tick_is_kept():
    async def sleep(timer):
        await trio.sleep(EARLY)

    took, timer = await _with_waiting_clock(sleep)
    assert EARLY <= took < LATE
    assert timer.idle.deferred >= 1  # the sleep's deadline came before the tick


async def test_a_callback_from_another_thread_runs_at_once():
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    async def wait_for_thread(timer):
        with _later(lambda: token.run_sync_soon(done.set)):
            await done.wait()

    took, timer = await _with_waiting_clock(wait_for_thread)
    assert took < LATE
    assert timer.idle.handed_back >= 1


async def test_a_signal_is_received_at_once():
    async def wait_for_signal(timer):
        with trio.open_signal_receiver(signal.SIGUSR1) as signals, _later(lambda: os.kill(os.getpid(), signal.SIGUSR1)):
            async for signum in signals:
                assert signum == signal.SIGUSR1
                break

    took, timer = await _with_waiting_clock(wait_for_signal)
    assert took < LATE
    assert timer.idle.handed_back >= 1


async def test_a_task_waiting_for_the_loop_to_idle_is_woken():
    async def wait_idle(timer):
        await trio.testing.wait_all_tasks_blocked(cushion=EARLY)

    took, _timer = await _with_waiting_clock(wait_idle)
    assert took < LATE


async def test_the_tick_still_comes_while_other_work_happens():
    clock = FrameClock(precise=True)
    sent = []

    class Stream:
        def __init__(self, t0):
            self.next_due, self.t0, self.index = t0 + 0.02, t0, 1

        def send_due(self, now):
            sent.append(now)
            self.index += 1
            return None if self.index > 20 else self.t0 + self.index * 0.02

    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        t0 = trio.current_time()
        clock.schedule(Stream(t0))
        with trio.fail_after(5):
            while len(sent) < 20:
                await trio.sleep(0.033)  # a deadline now and then, between ticks
        nursery.cancel_scope.cancel()
    clock.close()
    assert len(sent) == 20
    assert clock._timer.idle.bypassed >= 1 and clock._timer.idle.deferred >= 1


@pytest.mark.parametrize("weakly_referenced", [True, False])
async def test_an_unknown_loop_is_always_waited_through_trio(monkeypatch, weakly_referenced):
    class Runner:  # a loop with a run queue, and nothing else the idle test reads
        __slots__ = ("runq",) + (("__weakref__",) if weakly_referenced else ())

        def __init__(self):
            self.runq = []

    monkeypatch.setattr(idle_wait, "_RUN_CONTEXT", types.SimpleNamespace(runner=Runner()))
    timer = PreciseTimer()
    try:
        assert not timer.idle.available
        assert timer.idle.wait(trio.current_time() + 1.0) is False
        timer.arm(trio.current_time() + 0.01)
        with trio.fail_after(2):
            await timer.wait()  # through trio's loop, as before
    finally:
        timer.close()
    assert timer.idle.bypassed == 0


def test_outside_a_trio_run_it_declines():
    wait = IdleWait(os.open("/dev/null", os.O_RDONLY))
    try:
        assert not wait.available
        assert wait.wait(0.0) is False
    finally:
        os.close(wait.fd)


def test_an_instrumented_run_is_waited_through_trio():
    class Steps(trio.abc.Instrument):
        waits = 0

        def before_io_wait(self, timeout):
            Steps.waits += 1

    async def main():
        return (await _periodic_waits(3)).bypassed

    assert trio.run(main, instruments=[Steps()]) == 0  # instruments expect to see every wait
    assert Steps.waits >= 3


async def test_a_task_woken_with_the_clock_runs_before_the_next_tick():
    """A task made runnable in the same pass of the loop as the clock is in the loop's
    current batch, not its run queue. When the clock runs first, its next wait must
    still give the loop back: else the clock ticks on in one step and the task waits
    until something sends the clock through trio (here: until the clock stops)."""
    period = 0.02
    timer = PreciseTimer()
    lateness = []

    async def clock():
        for _ in range(40):
            await timer.wait()

    async def woken_with_each_tick(start):
        for tick in range(1, 16):
            await trio.sleep_until(start + tick * period)  # the timer's own expiry: the same pass
            lateness.append(trio.current_time() - (start + tick * period))

    try:
        start = trio.current_time() + period
        timer.arm(start + period, interval=period)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clock)
                nursery.start_soon(woken_with_each_tick, start)
    finally:
        timer.close()
    assert len(lateness) == 15
    # Each wake-up shares a batch with the clock; the loop runs a batch in either order,
    # so in 15 the clock runs first in some (all but one in 2**15 runs).
    assert max(lateness) < period * 0.75, [f"{late * 1000:.1f} ms" for late in lateness]
    assert timer.idle.bypassed + timer.idle.deferred + timer.idle.handed_back >= 30


def test_a_timer_that_outlives_its_run_does_not_keep_the_run_alive():
    """What the idle wait keeps of a run must not hold its runner: a clock kept after its
    run (a server object a test holds, say) would keep every task of that run alive."""
    timer = PreciseTimer()
    runner = []

    async def main():
        runner.append(weakref.ref(trio_run.GLOBAL_RUN_CONTEXT.runner))
        timer.arm(trio.current_time() + 0.01, interval=0.01)
        for _ in range(5):
            await timer.wait()
        return timer.idle.bypassed

    try:
        assert trio.run(main) > 0  # the wait did skip the loop: it read this run's parts
        gc.collect()
        assert runner[0]() is None
    finally:
        timer.close()
