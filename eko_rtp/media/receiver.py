"""One receive loop for every call's RTP and RTCP sockets.

Why: a trio task per socket means a wake-up, a ``wait_readable`` registration and a
context switch per inbound packet (50 000 a second at 1000 full-duplex calls). Here
all media sockets sit in one kernel ``epoll`` set; trio waits on that set's file
descriptor, and one drain empties every ready socket with non-blocking ``recvmsg``
calls, handing each datagram to the socket's handler synchronously.

A drain goes in rounds: each round takes ONE datagram from every socket the
(level-triggered) epoll set reports ready, then asks the set again (one
``epoll_wait(0)`` for all sockets, instead of a ``recvfrom`` per socket that would
only say "empty"). So every socket is emptied at each drain, round-robin: a caller
sending 100 packets a second (audio and RFC 4733 events side by side) is served as
promptly as one sending 50, and one flooded socket cannot starve the rest. A drain
stops after ``max_rounds`` rounds; a socket still ready then is falling behind: the
hub counts it (``backlogs``) and tells its owner (the call counts it too), and the
next drain goes on with it (at once, without the nap below, for a batch socket).
Handlers must not raise: a handler error is logged and counted, never propagated.

Arrival times come from the kernel (``SO_TIMESTAMPNS``: when the datagram reached
the socket, on the wall clock), because a datagram may wait up to a drain interval
in its socket buffer: RFC 3550 A.8 jitter computed from the drain's time would
measure the hub's schedule, not the network. Handlers get both: ``now`` (the trio
time of the drain step, for timers) and ``arrival`` (the kernel's, for jitter; only
differences between arrivals mean anything). Reading the timestamp costs a
``recvmsg`` with ancillary data instead of a ``recvfrom`` and its parsing, per
datagram; a socket registered with ``timestamp_every=n`` pays it on one datagram
in n and gets ``arrival=None`` for the others. A.8 works on any two stamped
packets (the transit difference of packets n apart has the same spread as that
of neighbours when the network's delays are independent), so the jitter stays
true while most datagrams take the cheap read.

The :class:`DrainPolicy` says when to drain. While at most ``ride_limit`` (64)
calls are up the hub rides the frame clock: the first clock tick at least ``nap``
(10 ms) after its last drain drains, in the clock's own task right behind the tick,
so inbound RTP never wakes the process by itself (at a few calls a wake-up of the
idle vCPU is the costly part of a packet) nor costs a task switch. With
more calls the process hardly ever sleeps and riding bought nothing (it cost CPU and
p99 in the benchmark), so the hub waits for a datagram, drains, and naps for ``nap``
before it looks again: about a hundred batches a second instead of a wake-up per
packet. Both modes drain the same way.

Two more rules keep the frame clock on time: the hub steps aside when the clock's
next tick is less than ``tick_margin`` away and waits until that tick has gone
(inbound packets wait in their socket buffers instead of the tick waiting behind
them), and a drain yields to the scheduler once a step has run for ``step_budget``.
A batch read (the shared port's ``recvmmsg`` and its handlers) takes far longer than
one datagram, so before each one the hub sizes it to the time left before the tick,
at what a datagram of that socket has lately cost (:class:`ReadCost`): a batch never
makes the tick wait, and the time before the tick is still used (refusing whole
batches that did not fit left the CPU idle while the shared socket overflowed at
1000 calls). When not even one datagram fits, the hub steps aside for the tick. All
of it reads trio's clock, the frame clock's time base (so the mock clock drives them
in tests too).
The measurements behind these choices are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import struct
import time
from typing import Callable

import attrs
import trio

log = logging.getLogger(__name__)

Handler = Callable[[bytes, tuple, float, "float | None"], None]
"""``handler(data, source, now, arrival)``: ``now`` on trio's clock, ``arrival`` the kernel's
(``None`` on the datagrams a sampling socket reads without it)."""

MAX_DATAGRAM = 2048
# Up to this many calls the hub rides the clock's ticks; above it the process hardly
# ever sleeps, so its own wake-ups cost nothing extra and its batches are bigger.
RIDE_LIMIT = 64
# Rounds of one datagram per ready socket in one drain. Drains are 10-20 ms apart, so
# this serves up to 3200 datagrams a second per socket (a call sends 50-100) before
# a socket counts as falling behind.
MAX_ROUNDS = 64
# The most a datagram's cost estimate may say: one read slowed down by the host (a
# preempted vCPU) must not keep the hub's reads small for long.
MAX_READ_COST = 0.0005
# What a batch read may take when no tick bounds it (the reader caps it to its batch).
UNBOUNDED = 1 << 16
# The longest a drain may hold the frame clock's task while riding (a slot); what is
# still waiting then is drained by the hub's own task, stepping aside for ticks.
RIDE_BUDGET = 0.001

# SO_TIMESTAMPNS from <asm-generic/socket.h> (the stdlib does not export it); the
# control message it adds carries a struct timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


@attrs.frozen(kw_only=True)
class DrainPolicy:
    """When the hub drains: right behind the frame clock's ticks, or on its own wake-ups.

    Riding pays while the process sleeps between ticks (a few calls): inbound RTP then
    costs no wake-up of its own. With more calls the process hardly sleeps, and the
    hub waits for a datagram and naps instead (see the module's theory).
    """

    nap: float = 0.010  # s at least between two drains
    ride_limit: int = RIDE_LIMIT  # most calls up for which the hub rides the ticks

    def __attrs_post_init__(self) -> None:
        if not 0 < self.nap <= 0.020:
            raise ValueError(f"nap must be within (0, 0.020] s (a frame), not {self.nap!r}")
        if self.ride_limit < 0:
            raise ValueError(f"ride_limit must not be negative, not {self.ride_limit!r}")

    def rides(self, streams: int) -> bool:
        """Whether to ride the clock with ``streams`` calls in its wheel (none: no ticks to ride)."""
        return 0 < streams <= self.ride_limit

    def next_ride(self, last_drain: float) -> float:
        """The time from which a tick may carry the next drain: a nap after the last."""
        return last_drain + self.nap


class ReadCost:
    """What a datagram of a socket's batch reads costs lately: the dearest, forgotten slowly.

    A read dearer per datagram than the estimate raises it at once (the next could
    be as dear); cheaper ones lower it by a sixteenth of the difference, so one light
    batch does not make the hub start a heavy one just before a tick.
    """

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0  # per datagram

    def add(self, seconds: float, datagrams: int) -> None:
        """A read of ``datagrams`` (at least one) took ``seconds``."""
        each = seconds / datagrams
        if each >= self.seconds:
            self.seconds = min(each, MAX_READ_COST)
        else:
            self.seconds += (each - self.seconds) / 16

    def fits(self, room: float) -> int:
        """How many datagrams a read may take to end within ``room`` seconds."""
        if room <= 0:
            return 0
        if self.seconds <= 0 or room >= self.seconds * UNBOUNDED:  # nothing measured, or no tick
            return UNBOUNDED
        return int(room / self.seconds)


class _Registration:
    __slots__ = ("sock", "handler", "on_backlog", "timestamp_every", "until_timestamp", "reader", "cost")

    def __init__(self, sock: socket.socket, handler: Handler | None, on_backlog: Callable[[], None] | None,
                 timestamp_every: int, reader: Callable[[float], int] | None = None):
        self.sock = sock
        self.handler = handler
        self.on_backlog = on_backlog
        self.timestamp_every = timestamp_every
        self.until_timestamp = 1  # the first datagram is stamped
        self.reader = reader  # a socket read by the batch (register_batch), not one datagram at a time
        self.cost = ReadCost() if reader is not None else None  # what its batch reads take lately


class ReceiveHub:
    """The epoll set of media sockets and the task that drains it."""

    def __init__(self, *, max_rounds: int = MAX_ROUNDS, step_budget: float = 0.00015,
                 policy: DrainPolicy = DrainPolicy(), clock=None, tick_margin: float = 0.00005):
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, not {max_rounds!r}")
        self._epoll = select.epoll()
        self._clock = clock
        self.tick_margin = tick_margin
        self._registrations: dict[int, _Registration] = {}
        self.max_rounds = max_rounds
        self.step_budget = step_budget
        self.policy = policy
        self.datagrams = 0
        self.handler_errors = 0
        self.backlogs = 0  # drains that ended with a socket still holding datagrams
        self._last_drain = -math.inf
        self._riding_failed = False  # a drain in the clock's task raised: drain in the hub's from then on

    @property
    def sockets(self) -> int:
        """How many sockets the hub drains (the leak test counts them)."""
        return len(self._registrations)

    def register(self, sock: socket.socket, handler: Handler, *, on_backlog: Callable[[], None] | None = None,
                 timestamp_every: int = 1) -> None:
        """Drain ``sock`` into ``handler``; ``on_backlog`` hears when it falls behind.

        ``timestamp_every=n`` reads the kernel's arrival time on one datagram in n
        (the first included); the others reach the handler with ``arrival=None``.
        """
        if timestamp_every < 1:
            raise ValueError(f"timestamp_every must be at least 1, not {timestamp_every!r}")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        fd = sock.fileno()
        self._registrations[fd] = _Registration(sock, handler, on_backlog, timestamp_every)
        self._epoll.register(fd, select.EPOLLIN)

    def register_batch(self, sock: socket.socket, reader: Callable[[float, int], int], *,
                       on_backlog: Callable[[], None] | None = None) -> None:
        """Drain ``sock`` with ``reader(now, limit)``, which takes a batch of at most ``limit``
        datagrams (``recvmmsg``), hands each to its owner and returns how many it took (0:
        the socket was empty).

        For the shared media port (media/shared_port.py): in each round of a drain the
        socket gives a batch where a per-call socket gives one datagram.
        """
        fd = sock.fileno()
        self._registrations[fd] = _Registration(sock, None, on_backlog, 1, reader)
        self._epoll.register(fd, select.EPOLLIN)

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._registrations.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def drain_socket(self, sock: socket.socket, *, limit: int = 512) -> int:
        """Hand every datagram waiting on ``sock`` to its handler now, in order.

        For the end of a call: what the caller sent just before its BYE (the last
        digit) is still in the socket buffer when the BYE arrives. Returns how many
        datagrams were handled (at most ``limit``).
        """
        registration = self._registrations.get(sock.fileno())
        if registration is None:
            return 0
        now = trio.current_time()
        handled = 0
        while handled < limit and self._receive_one(registration, now):
            handled += 1
        return handled

    def close(self) -> None:
        self._epoll.close()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drain ready sockets until cancelled."""
        task_status.started()
        epoll = self._epoll
        frame_clock = self._clock
        policy = self.policy
        ready: list = []
        while True:
            if frame_clock is not None and not self._riding_failed and policy.rides(frame_clock.streams):
                await self._ride(frame_clock)
                ready = epoll.poll(0)  # what a drain cut short left (a flood), or none
                if not ready:
                    continue
            elif not ready:  # nothing came during the nap: sleep until something does
                await trio.lowlevel.wait_readable(epoll.fileno())
                ready = epoll.poll(0)
            self._last_drain = trio.current_time()
            behind = await self._drain(ready) if ready else False
            ready = []
            if behind:
                # A batch socket (the shared port: every trunk call's packets)
                # still held datagrams after every round: a nap would let its
                # buffer overflow (it did at 1000 calls, with the CPU a quarter
                # idle). Go on after other due work instead. A call's own socket
                # that far behind is flooded (a call sends 50-100 packets a
                # second): it keeps the nap, which bounds what a flood costs us.
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(policy.nap)
            ready = epoll.poll(0)  # usually something is waiting: no second wake-up for it

    async def _ride(self, frame_clock) -> None:
        """A few calls up: drain in the frame clock's task, right behind its ticks.

        The first tick at least a nap after the last drain brings the drain along, so
        inbound RTP costs no wake-up of its own, nor a task switch. Returns when the
        hub should wait for datagrams instead: more calls than the policy rides
        with, or the wheel empty; or when a drain ran out of time (RIDE_BUDGET, or the
        next tick near) with sockets still ready: the hub's own drain, which steps
        aside for ticks, takes the rest, so a flood never holds the clock's task. A
        bug in the drain is logged once and ends riding for good: the hub's own loop
        carries on, and the clock's task is safe.
        """
        done = trio.Event()
        policy = self.policy

        def on_tick(now: float | None) -> None:
            if done.is_set():
                return
            if now is None or not policy.rides(frame_clock.streams):
                done.set()
                return
            if now < policy.next_ride(self._last_drain):
                return
            self._last_drain = now
            try:
                ready = self._epoll.poll(0)
                if ready and not self._drain_now(ready, now, frame_clock):
                    done.set()  # out of time with datagrams waiting: the hub's task goes on
            except Exception:
                self.handler_errors += 1
                log.exception("media drain behind the frame clock failed; the hub drains in its own task from now on")
                self._riding_failed = True
                done.set()

        frame_clock.ride(on_tick)
        try:
            await done.wait()
        finally:
            frame_clock.ride(None)

    def _drain_now(self, ready: list, now: float, frame_clock) -> bool:
        """:meth:`_drain` without stepping aside, for a drain in the clock's task right
        behind a tick; False when it stopped with sockets still ready because its time
        ran out (RIDE_BUDGET, or ``tick_margin`` before the next tick)."""
        clock = trio.lowlevel.current_clock().current_time
        deadline = min(frame_clock.next_tick - self.tick_margin, clock() + RIDE_BUDGET)
        for _ in range(self.max_rounds):
            for registration in self._registered(ready):
                started = clock()
                if started >= deadline:
                    return False
                cost = registration.cost
                if cost is not None:
                    limit = cost.fits(deadline - started)
                    if not limit:
                        return False
                    self._read_batch_costed(registration, now, limit, started, clock)
                else:
                    self._receive_one(registration, now)
            ready = self._still_ready(ready)
            if not ready:
                return True
        self._behind(ready)
        return True

    def _registered(self, ready: list):
        """The registrations of the ready descriptors (one unregistered meanwhile is skipped)."""
        registrations = self._registrations
        for fd, _events in ready:
            registration = registrations.get(fd)
            if registration is not None:
                yield registration

    def _still_ready(self, ready: list) -> list:
        """The next round takes only sockets this drain has just served that still
        hold datagrams (two packets per frame, a backlog): one that became ready
        meanwhile waits for the next drain, batched with the rest, instead of
        keeping this drain going for as long as traffic flows."""
        served = {fd for fd, _events in ready}
        return [entry for entry in self._epoll.poll(0) if entry[0] in served]

    def _read_batch_costed(self, registration: _Registration, now: float, limit: int, started: float,
                           clock) -> float:
        """:meth:`_read_batch`, and what it cost per datagram into the socket's estimate; the
        time it ended."""
        taken = self._read_batch(registration, now, limit)
        elapsed = clock()
        if taken:
            registration.cost.add(elapsed - started, taken)
        return elapsed

    async def _drain(self, ready: list) -> bool:
        """Empty every ready socket, a datagram (or a batch) per socket per round, stepping
        aside for ticks; whether a batch socket was still ready after the last round."""
        # Trio's own clock, the frame clock's time base (a bound method: cheaper per
        # datagram than trio.current_time(), and the mock clock in tests).
        clock = trio.lowlevel.current_clock().current_time
        budget = self.step_budget
        frame_clock = self._clock
        margin = self.tick_margin
        receive_one = self._receive_one
        # One trio time per step: inbound RTP needs it only for timers; jitter uses the
        # kernel's arrival time.
        now = step_started = clock()
        for _ in range(self.max_rounds):
            for registration in self._registered(ready):
                cost = registration.cost
                if cost is not None:
                    # A batch: as many datagrams as end before the tick; none fit: after it.
                    started = clock()
                    limit = UNBOUNDED
                    if frame_clock is not None:
                        limit = cost.fits(frame_clock.next_tick - margin - started)
                        if not limit:
                            await frame_clock.wait_tick()
                            now = step_started = started = clock()
                            limit = max(1, cost.fits(frame_clock.next_tick - margin - started))
                    elapsed = self._read_batch_costed(registration, now, limit, started, clock)
                else:
                    receive_one(registration, now)
                    elapsed = clock()
                if frame_clock is not None and elapsed > frame_clock.next_tick - margin:
                    await frame_clock.wait_tick()  # step aside: the tick goes first
                    now = step_started = clock()
                elif elapsed - step_started > budget:
                    await trio.lowlevel.checkpoint()  # let other due work go first
                    now = step_started = clock()
            ready = self._still_ready(ready)
            if not ready:
                return False
        return self._behind(ready)

    def _behind(self, ready: list) -> bool:
        """Count and report the sockets still ready after every round (they receive faster
        than we drain); whether one of them is a batch socket."""
        registrations = self._registrations
        batch_behind = False
        for fd, _events in ready:
            registration = registrations.get(fd)
            if registration is None:
                continue
            self.backlogs += 1
            batch_behind = batch_behind or registration.reader is not None
            if registration.on_backlog is not None:
                try:
                    registration.on_backlog()
                except Exception:
                    self.handler_errors += 1
                    log.exception("media backlog handler failed")
        return batch_behind

    def _read_batch(self, registration: _Registration, now: float, limit: int) -> int:
        """A batch of at most ``limit`` datagrams from the socket to its reader; how many."""
        try:
            taken = registration.reader(now, limit)
        except Exception:
            self.handler_errors += 1
            log.exception("batch reader failed on %s", registration.sock.getsockname())
            return 0
        self.datagrams += taken
        return taken

    def _receive_one(self, registration: _Registration, now: float) -> bool:
        """Take one datagram from the socket to its handler; False when none was waiting."""
        if registration.reader is not None:
            return self._read_batch(registration, now, UNBOUNDED) > 0
        stamp = registration.until_timestamp <= 1
        try:
            if stamp:
                data, ancillary, _flags, address = registration.sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SIZE)
            else:
                data, address = registration.sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:  # e.g. ICMP port unreachable reported on the socket
            log.debug("media socket %s: %s", registration.sock.getsockname(), error)
            return False
        self.datagrams += 1
        if stamp:
            registration.until_timestamp = registration.timestamp_every
            if ancillary and len(ancillary[0][2]) == _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
                arrival = seconds + nanoseconds * 1e-9
            else:  # no timestamp (not expected on Linux): the same clock, read now
                arrival = time.time()
        else:
            registration.until_timestamp -= 1
            arrival = None
        try:
            registration.handler(data, address, now, arrival)
        except Exception:
            self.handler_errors += 1
            log.exception("media handler failed for a datagram from %s", address)
        return True
