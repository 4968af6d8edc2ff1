"""One receive loop for every call's RTP and RTCP sockets.

Why: a trio task per socket means a wake-up, a ``wait_readable`` registration and a
context switch per inbound packet (50 000 a second at 1000 full-duplex calls). Here
all media sockets sit in one kernel ``epoll`` set; trio waits on that set's file
descriptor, and one pass drains every ready socket with non-blocking ``recvfrom``
calls, handing each datagram to the socket's handler synchronously. A pass takes at
most ``burst`` datagrams from one socket so one flooded call cannot starve the rest;
the default of one avoids the extra ``recvfrom`` that would only say "empty"
(the epoll set is level-triggered: a socket with more waiting is reported again on
the next pass, and a call sends one packet per 20 ms).
Handlers must not raise: a handler error is logged and counted, never propagated.

While at most ``ride_limit`` (64) calls are up the hub rides the frame clock: it
waits for the first clock tick at least ``nap`` (10 ms) after its last drain and
drains then, right behind the tick, so inbound RTP never wakes the process by itself
(at a few calls a wake-up of the idle vCPU is the costly part of a packet). Ticks
are up to 20 ms apart then, so a drain looks twice (``passes``): the second look
takes a second datagram waiting on a socket (a caller sending every 10 ms). With
more calls the process hardly ever sleeps and riding bought nothing (it cost CPU and
p99 in the benchmark), so the hub waits for a datagram, drains, and naps for ``nap``
before it looks again: about a hundred batches a second instead of a wake-up per
packet.

Two more rules keep the frame clock on time: the hub steps aside when the clock's
next tick is less than ``tick_margin`` away and waits until that tick has gone
(inbound packets wait in their socket buffers instead of the tick waiting behind
them), and a pass yields to the scheduler once it has run for ``step_budget``.
Inbound RTP only refreshes the inactivity timer, latches the destination and carries
DTMF: 10-20 ms do not matter to any of them, and a call's socket buffer holds far more.
Measured with the benchmark at 500 calls (docs/BENCHMARKS.md): waking per packet, or
every millisecond, interleaved receive steps with clock ticks and left p99 deviation
at about 2 ms; batching every 10 ms brought it under 1 ms and cut CPU.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time
from typing import Callable

import trio

log = logging.getLogger(__name__)

Handler = Callable[[bytes, tuple, float], None]
MAX_DATAGRAM = 2048
# Up to this many calls the hub rides the clock's ticks; above it the process hardly
# ever sleeps, so its own wake-ups cost nothing extra and its batches are bigger.
RIDE_LIMIT = 64


class ReceiveHub:
    """The epoll set of media sockets and the task that drains it."""

    def __init__(self, *, burst: int = 1, step_budget: float = 0.00015, nap: float = 0.010, clock=None,
                 tick_margin: float = 0.00005, passes: int = 2,
                 ride_limit: int = RIDE_LIMIT):
        self._epoll = select.epoll()
        self._clock = clock
        self.tick_margin = tick_margin
        self._handlers: dict[int, tuple[socket.socket, Handler]] = {}
        self.burst = burst
        self.step_budget = step_budget
        self.nap = nap
        self.passes = passes
        self.ride_limit = ride_limit
        self.datagrams = 0
        self.handler_errors = 0

    def register(self, sock: socket.socket, handler: Handler) -> None:
        fd = sock.fileno()
        self._handlers[fd] = (sock, handler)
        self._epoll.register(fd, select.EPOLLIN)

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._epoll.close()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drain ready sockets until cancelled."""
        task_status.started()
        epoll = self._epoll
        frame_clock = self._clock
        nap = self.nap
        last_drain = -math.inf
        ready: list = []
        while True:
            riding = frame_clock is not None and 0 < frame_clock.streams <= self.ride_limit
            if riding:
                # A few calls up: ride the clock's wake-ups. The first tick at least a
                # nap after the last drain brings the hub along, so inbound RTP costs
                # no wake-up of its own.
                await frame_clock.wait_tick(last_drain + nap)
                ready = epoll.poll(0)
                passes = self.passes
            else:
                if not ready:  # nothing came during the nap: sleep until something does
                    await trio.lowlevel.wait_readable(epoll.fileno())
                    ready = epoll.poll(0)
                passes = 1  # the next drain is a nap away: no need to look twice
            last_drain = trio.current_time()
            for attempt in range(passes):
                if not ready:
                    break
                await self._drain(ready)
                # A second look (riding only, where drains are up to 20 ms apart) takes a
                # second datagram waiting on a socket: a caller sending every 10 ms.
                ready = epoll.poll(0) if attempt + 1 < passes else []
            if not riding:
                await trio.sleep(nap)
                ready = epoll.poll(0)  # usually something is waiting: no second wake-up for it

    async def _drain(self, ready: list) -> None:
        """Take up to ``burst`` datagrams from each ready socket, stepping aside for ticks."""
        handlers = self._handlers
        burst = self.burst
        clock = time.perf_counter
        budget = self.step_budget
        frame_clock = self._clock
        margin = self.tick_margin
        # One arrival time per step: inbound RTP needs it only for the inactivity
        # timer and RTCP jitter, and a step is short.
        now = trio.current_time()
        step_started = clock()
        for fd, _ in ready:
            entry = handlers.get(fd)
            if entry is None:
                continue
            sock, handler = entry
            taken = 0
            while taken < burst:
                try:
                    data, address = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as error:  # e.g. ICMP port unreachable reported on the socket
                    log.debug("media socket %s: %s", sock.getsockname(), error)
                    break
                taken += 1
                try:
                    handler(data, address, now)
                except Exception:
                    self.handler_errors += 1
                    log.exception("media handler failed for a datagram from %s", address)
            self.datagrams += taken
            elapsed = clock()
            if frame_clock is not None and elapsed > frame_clock.next_tick_perf - margin:
                await frame_clock.wait_tick()  # step aside: the tick goes first
                now = trio.current_time()
                step_started = clock()
            elif elapsed - step_started > budget:
                await trio.lowlevel.checkpoint()  # let other due work go first
                now = trio.current_time()
                step_started = clock()
