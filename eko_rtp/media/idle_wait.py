"""The frame clock's wait for its tick, without a pass of trio's loop while the loop is idle.

Why: at a few calls the server does little each 20 ms tick, and most of what it spends
is the wake-up itself. A pass of trio's run loop (its deadlines, its instruments, the
epoll registration of the timer, the task switch into the clock's coroutine) costs
about as much again as the tick's own work on a 2-vCPU guest, because between two
ticks that code has left the CPU's caches (docs/BENCHMARKS.md, nineteenth session).

How: when the frame clock is about to wait for its timerfd and trio has nothing else
to do before the tick (no task runnable, none left to run in the loop's current batch,
no callback queued from another thread, no task waiting for the loop to go idle, no
cancel-scope deadline before the tick), the
clock's task blocks in one ``poll`` on two descriptors: the timerfd, and trio's own
epoll descriptor, which becomes readable as soon as any descriptor trio waits on
(a SIP socket, the CRM's connection, the receive hub, the wake-up socket that signals
and other threads write to) has something. The timerfd alone: the tick is due and
nothing else happened, so the clock goes on without giving the loop a pass. Anything
on trio's side, or the poll's bound (trio's next deadline) reached: the clock waits
through trio as before, and trio sees everything it would have seen. So nothing trio
runs waits longer than it would have; the loop is only skipped when it would have
found nothing to do but wake the clock.

The test of "nothing else to do" reads trio's run loop, which trio does not publish
(``trio.lowlevel.current_statistics`` has most of it, but builds an object for each
call, and has neither the idle waiters nor the epoll descriptor). The loop runs the
tasks made runnable together as one batch, which it takes out of its run queue first:
a task woken with the clock and not yet run is in that batch, not the queue, so the
batch is read too (a local of trio's ``unrolled_run``, found on the clock's stack).
Without that, the clock would tick on and on in one step, every other task of its
batch waiting until something sent the clock through trio. What is read is
checked once per run: another trio, another clock than the system's (a test's mock
clock) or guest mode, and the clock waits through trio on every tick, as it did
before this module; so it does while an instrument is installed (instruments expect
to see every wait of the loop).
"""

from __future__ import annotations

import math
import select
import sys
import weakref

import trio

__all__ = ["IdleWait"]

try:  # trio's run context: where its running loop is kept for this thread
    from trio._core._run import GLOBAL_RUN_CONTEXT as _RUN_CONTEXT, SystemClock as _SystemClock
    from trio._core._run import unrolled_run as _unrolled_run
    _LOOP_CODE = _unrolled_run.__code__ if "batch" in _unrolled_run.__code__.co_varnames else None
except (ImportError, AttributeError):  # pragma: no cover - a trio that moved them: every wait goes through trio
    _RUN_CONTEXT = _SystemClock = _LOOP_CODE = None


def _NO_RUN() -> None:
    return None


def _loop_frame():
    """The frame of trio's run loop on this task's stack (its locals hold the current batch), or None."""
    if _LOOP_CODE is None:
        return None
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not _LOOP_CODE:
        frame = frame.f_back
    return frame


def _loop_parts(runner) -> tuple | None:
    """What the idle test reads of ``runner``, or None when this runner is not one known here.

    None of it holds the runner itself, so a clock that outlives its run does not keep the
    run's tasks alive. The loop's frame would (its locals hold the runner): it is found
    again on each wait instead of being kept here.
    """
    try:
        parts = (runner.runq, runner.entry_queue.queue, runner.entry_queue.idempotent_queue,
                 runner.instruments.data["_all"], runner.deadlines.next_deadline, runner.io_manager._epoll.fileno())
        plain = type(runner.clock) is _SystemClock and not runner.is_guest and hasattr(runner, "waiting_for_idle")
    except (AttributeError, KeyError, TypeError, ValueError, OSError):
        return None
    return parts if plain and _loop_frame() is not None else None


class IdleWait:
    """Waits for one descriptor (the frame clock's timerfd) while trio's loop is idle.

    Counters: ``bypassed``, the waits that skipped trio's loop; ``handed_back``, those
    that blocked and gave the loop back when something for trio came first (or its
    next deadline did); ``deferred``, those that went through trio at once (something
    was due before the tick).
    """

    __slots__ = ("fd", "bypassed", "handed_back", "deferred", "_runner", "_parts", "_poll")

    def __init__(self, fd: int):
        self.fd = fd
        self.bypassed = 0
        self.handed_back = 0
        self.deferred = 0
        self._runner = _NO_RUN  # the run the parts below are of (kept weakly: it may end first)
        self._parts: tuple | None = None
        self._poll: select.poll | None = None

    @property
    def available(self) -> bool:
        """Whether this run's loop is one the idle test knows (see the module docstring); an
        instrument installed makes every wait go through trio, but leaves this true."""
        return self._parts_of_current_run() is not None

    def _parts_of_current_run(self) -> tuple | None:
        runner = getattr(_RUN_CONTEXT, "runner", None)
        if runner is not self._runner():
            try:
                self._runner = weakref.ref(runner) if runner is not None else _NO_RUN
            except TypeError:  # not trio's runner as known here: kept as it is, never used
                self._runner = lambda kept=runner: kept
                runner = None
            self._parts = _loop_parts(runner) if runner is not None else None
            self._poll = None
            if self._parts is not None:
                self._poll = select.poll()
                self._poll.register(self._parts[5], select.POLLIN)
                self._poll.register(self.fd, select.POLLIN)
        return self._parts

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C in the poll goes to trio, as in its own wait
    def wait(self, until: float) -> bool:
        """Block until the descriptor is readable, if trio has nothing to do before ``until``
        (trio's time of the expected wake-up). True: it is readable and nothing else came;
        False: wait through trio (``trio.lowlevel.wait_readable``)."""
        parts = self._parts_of_current_run()
        if parts is None:
            return False
        runq, entries, idempotent_entries, instruments, next_deadline, _epoll_fd = parts
        runner = self._runner()
        # The cheap tests first: under load one of them holds, and the deadline is not read.
        if runq or entries or idempotent_entries or instruments or runner.waiting_for_idle:
            self.deferred += 1
            return False
        loop_frame = _loop_frame()
        if loop_frame is None or loop_frame.f_locals.get("batch"):
            self.deferred += 1
            return False
        deadline = next_deadline()
        if deadline <= until:
            self.deferred += 1
            return False
        # Bounded by trio's next deadline (CPython rounds the milliseconds up, as trio's own
        # epoll_wait does): past it, trio has a timeout to deliver.
        timeout = None if deadline == math.inf else max(0.0, (deadline - runner.clock.current_time()) * 1000)
        ready = self._poll.poll(timeout)
        if len(ready) == 1 and ready[0][0] == self.fd:
            self.bypassed += 1
            return True
        self.handed_back += 1
        return False
