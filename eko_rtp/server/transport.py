"""SIP over UDP and TCP: bytes in, bytes out, no protocol rules.

The UDP side is one non-blocking stdlib socket: datagrams are read in a loop that
waits with ``trio.lowlevel.wait_readable`` only when the socket is empty, and
responses are written with a synchronous ``sendto`` (a full send buffer drops the
datagram, which SIP over UDP retransmits anyway). The TCP side accepts connections
(trunks switch to TCP for large INVITEs, RFC 3261 §18.1.1), frames messages with the
SIP core's :class:`StreamFramer` (Content-Length required) and writes through a
per-connection task fed by a bounded channel, so a slow peer never blocks the loop.
A connection that sends an unframeable stream is closed; nothing else is affected.
With a ``trace`` (:class:`~eko_rtp.service.logs.SipTrace`), each message in and out
is handed to it as well.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import socket
import time
from typing import Callable

import trio

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer

log = logging.getLogger("eko_rtp.sip.transport")

MAX_DATAGRAM = 65535
UDP_BURST = 64  # datagrams handled before yielding to other tasks...
STEP_BUDGET = 0.0003  # ...or fewer: yield once a step has run this long, so the frame clock is never held up

Deliver = Callable[[bytes, tuple, str, object], None]


RESOLVE_TIMEOUT = 5.0  # s for a name in a Contact or Route to resolve
MAX_PENDING_RESOLUTIONS = 64  # names being resolved at once; beyond, messages are dropped


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TcpConnection:
    """One accepted (or dialled) TCP connection and its writer channel."""

    _ids = itertools.count(1)

    def __init__(self, stream: trio.SocketStream, peer: tuple):
        self.id = next(self._ids)
        self.stream = stream
        self.peer = peer
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](64)

    def __repr__(self) -> str:
        return f"<tcp#{self.id} {self.peer[0]}:{self.peer[1]}>"


class SipTransport:
    """Owns the SIP sockets; hands complete messages to ``deliver``."""

    def __init__(self, *, host: str, port: int, transports: list[str], max_message_size: int, deliver: Deliver,
                 trace=None):
        self.host = host
        self.port = port
        self.transports = transports
        self.max_message_size = max_message_size
        self.deliver = deliver
        self.trace = trace  # a SipTrace, or None (the default: no per-message work)
        self.udp: socket.socket | None = None
        self.connections: dict[int, TcpConnection] = {}
        self._by_peer: dict[tuple, TcpConnection] = {}
        self._nursery: trio.Nursery | None = None
        self.bound: dict[str, tuple] = {}
        self.udp_dropped = 0
        self.resolving = 0  # names being resolved now
        self.resolution_failures = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if "udp" in self.transports:
                self.udp = socket.socket(family, socket.SOCK_DGRAM)
                self.udp.setblocking(False)
                self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                self.udp.bind((self.host, self.port))
                self.bound["udp"] = self.udp.getsockname()[:2]
                nursery.start_soon(self._udp_loop)
            if "tcp" in self.transports:
                port = self.bound["udp"][1] if "udp" in self.bound else self.port
                listeners = await trio.open_tcp_listeners(port, host=self.host)
                self.bound["tcp"] = listeners[0].socket.getsockname()[:2]
                nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
            nursery.start_soon(self._flush_trace)
            task_status.started(self.bound)

    async def _flush_trace(self) -> None:
        """Once a second, let the trace summarise what it skipped (it may be switched on by a reload)."""
        while True:
            await trio.sleep(1.0)
            if self.trace is not None:
                self.trace.flush(trio.current_time())

    # -- UDP -----------------------------------------------------------------------

    async def _udp_loop(self) -> None:
        sock = self.udp
        clock = time.perf_counter
        while True:
            await trio.lowlevel.wait_readable(sock)
            step_started = clock()
            for _ in range(UDP_BURST):
                if clock() - step_started > STEP_BUDGET:
                    break
                try:
                    data, source = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as error:  # ICMP errors surface here; the socket stays usable
                    log.debug("SIP UDP receive: %s", error)
                    continue
                if self.trace is not None:
                    self.trace.message("received from", "udp", source, data, trio.current_time())
                self.deliver(data, source[:2], "udp", None)
            await trio.lowlevel.checkpoint()

    # -- TCP -----------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[:2]
        await self._run_connection(TcpConnection(stream, peer))

    async def _run_connection(self, connection: TcpConnection) -> None:
        self.connections[connection.id] = connection
        self._by_peer[connection.peer] = connection
        framer = StreamFramer(max_message_size=self.max_message_size)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_connection, connection)
                try:
                    async for data in connection.stream:
                        try:
                            messages = framer.feed(data)
                        except SipParseError as error:
                            log.warning("SIP TCP from %s:%s: %s; closing the connection", *connection.peer, error)
                            break
                        for message in messages:
                            if self.trace is not None:
                                self.trace.message("received from", "tcp", connection.peer, message,
                                                   trio.current_time())
                            self.deliver(message, connection.peer, "tcp", connection)
                        for _ in range(framer.take_pings()):
                            self._queue(connection, b"\r\n")  # RFC 5626 §3.5.1 keepalive pong
                    else:
                        if framer.pending:
                            # The peer hung up mid-message: say so, or the loss is invisible.
                            log.warning("SIP TCP from %s:%s: connection closed in the middle of a message "
                                        "(%d bytes discarded)", *connection.peer, framer.pending)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()
        finally:
            self.connections.pop(connection.id, None)
            if self._by_peer.get(connection.peer) is connection:
                del self._by_peer[connection.peer]
            with trio.CancelScope(shield=True):
                await connection.stream.aclose()

    async def _write_connection(self, connection: TcpConnection) -> None:
        try:
            async for data in connection.receive_channel:
                await connection.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("SIP TCP to %s: %s", connection.peer, error)

    def _queue(self, connection: TcpConnection, data: bytes) -> None:
        try:
            connection.send_channel.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("SIP TCP to %s:%s: writer is stuck; message dropped", *connection.peer)

    async def _dial(self, destination: tuple, data: bytes) -> None:
        try:
            stream = await trio.open_tcp_stream(destination[0], destination[1])
        except OSError as error:
            log.warning("SIP TCP connect to %s:%s failed: %s", destination[0], destination[1], error)
            return
        connection = TcpConnection(stream, destination)
        self._queue(connection, data)
        await self._run_connection(connection)

    # -- sending -------------------------------------------------------------------

    def _resolve_then_send(self, data: bytes, destination: tuple, transport: str) -> None:
        if self._nursery is None or self.resolving >= MAX_PENDING_RESOLUTIONS:
            self.resolution_failures += 1
            log.warning("SIP to %s:%s: %d names already being resolved; message dropped", *destination[:2],
                        self.resolving)
            return
        self.resolving += 1
        self._nursery.start_soon(self._resolve_and_send, data, destination, transport)

    async def _resolve_and_send(self, data: bytes, destination: tuple, transport: str) -> None:
        host, port = destination[0], destination[1]
        family = self.udp.family if self.udp is not None else 0
        try:
            with trio.fail_after(RESOLVE_TIMEOUT):
                found = await trio.socket.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except (OSError, trio.TooSlowError) as error:
            self.resolution_failures += 1
            log.warning("SIP to %s:%s: cannot resolve the name (%s); message dropped", host, port,
                        error if str(error) else "timed out")
            return
        finally:
            self.resolving -= 1
        self.send(data, found[0][4][:2], transport, None)

    def send(self, data: bytes, destination: tuple, transport: str, connection: object | None) -> None:
        """Send one message; never blocks, never raises for network trouble.

        A destination given by name (a Contact or Route of the caller's) is resolved
        with trio's resolver in a task of its own (a worker thread, bounded in time
        and in number), never by ``sendto`` on the event loop, where a slow DNS
        server would stop every call's frames.
        """
        if transport != "tcp" and not _is_ip_address(destination[0]):
            self._resolve_then_send(data, tuple(destination), transport)
            return  # traced once resolved, when it comes back here with an address
        if self.trace is not None:
            self.trace.message("sent to", transport, destination, data, trio.current_time())
        if transport == "tcp":
            target = connection if isinstance(connection, TcpConnection) else self._by_peer.get(tuple(destination))
            if target is not None and target.id in self.connections:
                self._queue(target, data)
            elif self._nursery is not None:
                self._nursery.start_soon(self._dial, tuple(destination), data)
            return
        if self.udp is None:
            log.warning("no UDP socket to send to %s", destination)
            return
        try:
            self.udp.sendto(data, tuple(destination))
        except BlockingIOError:
            self.udp_dropped += 1
        except OSError as error:
            if error.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                log.warning("SIP UDP send to %s failed: %s", destination, error)
