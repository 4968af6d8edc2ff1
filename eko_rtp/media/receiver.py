"""One receive loop for every call's RTP and RTCP sockets.

Why: a trio task per socket means a wake-up, a ``wait_readable`` registration and a
context switch per inbound packet (50 000 a second at 1000 full-duplex calls). Here
all media sockets sit in one kernel ``epoll`` set, and :meth:`ReceiveHub.drain`
reads ready sockets with non-blocking ``recvfrom`` calls, handing each datagram to
the socket's handler synchronously, until a deadline. One datagram is taken from a
socket per turn, so one flooded call cannot starve the rest, and no ``recvfrom`` is
spent only to hear "empty" (the set is level-triggered: a socket with more waiting
is reported again by the next ``epoll`` poll). Handlers must not raise: a handler
error is logged and counted, never propagated.

Who drains: while calls are sending, the frame clock does, right after each tick,
until shortly before its next one (``FrameClock.after_tick``). Receiving then never
delays a tick, and it costs no wake-up of its own: the clock is awake anyway.
Inbound packets wait in their socket buffers for at most one tick interval, which
matters to none of what inbound RTP does here (the inactivity timer, symmetric-RTP
latching, DTMF, RTCP statistics); a socket buffer holds hundreds of packets. When
the clock has no stream, the hub's own task drains: it waits for a readable socket,
drains for ``step_budget``, then naps for ``nap`` so packets are taken in batches.
Measured with the benchmark (docs/BENCHMARKS.md): a hub that woke per packet, or
drained between ticks on its own schedule, delayed ticks and left p99 deviation at
about 2 ms at 500 calls.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Callable

import trio

log = logging.getLogger(__name__)

Handler = Callable[[bytes, tuple, float], None]
MAX_DATAGRAM = 2048


class ReceiveHub:
    """The epoll set of media sockets, drained by the frame clock or by its own task."""

    def __init__(self, *, step_budget: float = 0.00015, nap: float = 0.010, minimum: int = 8):
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple[socket.socket, Handler]] = {}
        self._ready: list[int] = []  # fds reported ready and not yet read, last first
        self.step_budget = step_budget
        self.nap = nap
        self.minimum = minimum  # datagrams a drain takes even past its deadline
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

    def drain(self, until: float) -> bool:
        """Read ready sockets until ``time.perf_counter()`` passes ``until``.

        At least ``minimum`` datagrams are taken when that many are waiting, so a
        drain squeezed by late ticks still makes progress. Returns True when sockets
        are still waiting to be read.
        """
        ready = self._ready
        if not ready:
            ready.extend(fd for fd, _ in reversed(self._epoll.poll(0)))
            if not ready:
                return False
        handlers = self._handlers
        clock = time.perf_counter
        now = trio.current_time()  # one arrival time per drain: see the module docstring
        taken = 0
        while ready:
            entry = handlers.get(ready.pop())
            if entry is None:  # unregistered since the poll
                continue
            sock, handler = entry
            try:
                data, address = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:  # e.g. ICMP port unreachable reported on the socket
                log.debug("media socket %s: %s", sock.getsockname(), error)
                continue
            taken += 1
            try:
                handler(data, address, now)
            except Exception:
                self.handler_errors += 1
                log.exception("media handler failed for a datagram from %s", address)
            if taken >= self.minimum and clock() > until:
                break
        self.datagrams += taken
        return bool(ready)

    async def run(self, *, clock=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Drain on its own whenever ``clock`` (the frame clock) has no stream to drive it."""
        task_status.started()
        while True:
            if clock is not None and clock.streams:
                await clock.wait_idle()
                continue
            if not self._ready:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
            if self.drain(time.perf_counter() + self.step_budget):
                await trio.lowlevel.checkpoint()  # more to read: let other work go first
            else:
                await trio.sleep(self.nap)
