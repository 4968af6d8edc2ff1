"""SIP over UDP, TCP and TLS: bytes in, bytes out, no protocol rules.

The UDP side is one non-blocking stdlib socket: datagrams are read in a loop that
waits with ``trio.lowlevel.wait_readable`` only when the socket is empty, and
responses are written with a synchronous ``sendto`` (a full send buffer drops the
datagram, which SIP over UDP retransmits anyway). The TCP side accepts connections
(trunks switch to TCP for large INVITEs, RFC 3261 §18.1.1), frames messages with the
SIP core's :class:`StreamFramer` (Content-Length required) and writes through a
per-connection task fed by a bounded channel, so a slow peer never blocks the loop.
A connection that sends an unframeable stream is closed; nothing else is affected.

TLS (RFC 3261 §26.2.1, the ``sip.tls_*`` keys) is TCP with a handshake in front: its
listener (``sip.tls_port``, 5061) accepts like the TCP one, under the same caps,
wraps the connection with :meth:`~eko_rtp.server.tls.ServerTls.wrap`, and gives the
handshake ``handshake_timeout``; a connection that fails it or runs out of time is
counted, logged once per ``LOG_INTERVAL`` at most and closed, without ever holding a
place in ``connections``. After the handshake the connection runs the TCP code path
(framer, timeouts, 513, writer task), and its messages reach the server with the
transport ``"tls"``. What we send over TLS goes over the connection it is for, else
any live TLS connection with that peer's address (RFC 5923 §4), else a new one
(:meth:`~eko_rtp.server.tls.ServerTls.connect`, the peer's certificate verified).
Connections are looked up by (transport, address): a message for TLS never goes
out in the clear over a TCP connection to the same address. One dial at a time per
(transport, address): what is sent there meanwhile waits for that connection
(``MAX_QUEUED_BEHIND_DIAL`` messages at most) instead of opening one more. A TLS
connection we close gracefully (idle, 513, shutdown) sends its close_notify first
(``tls.py``); one the peer closes without it ends like any other.
With a ``trace`` (:class:`~eko_rtp.service.logs.SipTrace`), each message in and out
is handed to it as well.

What the limits below turned away or cut short is counted per transport in
``stream_counters`` (:class:`TcpCounters`), which the metrics copy once a second.

A TCP connection holds a descriptor for as long as the peer keeps it open, so none is
held for free (:class:`TcpLimits`, the ``sip.tcp_*`` keys):

- at most ``max_connections`` accepted connections at once, and
  ``max_connections_per_source`` from one IP address, TCP and TLS counted together
  (both cost the same descriptor; a TLS one more memory). Beyond, a connection is
  accepted and closed at once (the peer learns it now, where one left in the listen
  backlog would hang), counted, and logged once per ``LOG_INTERVAL`` at most;
- the framer's deadlines: a connection with no message and no keepalive for
  ``idle_timeout`` is closed, and so is one whose message's headers are not complete
  ``header_timeout`` after its first byte (slowloris);
- a message over ``sip.max_message_size`` is answered 513 when its header block can
  address one, and the connection closed once the answer is out;
- out of descriptors (EMFILE, ENFILE), ``accept`` backs off (doubling up to
  ``ACCEPT_BACKOFF_MAX``) instead of spinning, with one log line per interval and no
  traceback. ``descriptors_exhausted_until`` (trio's clock) and the
  ``on_descriptors_exhausted`` callback tell the rest of the server, so OPTIONS can
  answer 503 meanwhile; UDP needs no new descriptor and carries on.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import itertools
import logging
import math
import os
import resource
import socket
import ssl
import time
from typing import Callable

import attrs
import trio

from eko_rtp.server.tls import ServerTls
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import MessageTooLarge, StreamFramer, StreamTimeout

log = logging.getLogger("eko_rtp.sip.transport")

MAX_DATAGRAM = 65535
UDP_BURST = 64  # datagrams handled before yielding to other tasks...
STEP_BUDGET = 0.0003  # ...or fewer: yield once a step has run this long, so the frame clock is never held up

Deliver = Callable[[bytes, tuple, str, object], None]


RESOLVE_TIMEOUT = 5.0  # s for a name in a Contact or Route to resolve
DIAL_TIMEOUT = 10.0  # s for a TCP connection we open to be accepted (the TLS handshake has its own)
MAX_PENDING_RESOLUTIONS = 64  # names being resolved at once; beyond, messages are dropped

STREAM_TRANSPORTS = ("tcp", "tls")
RECEIVE_SIZE = 65536  # bytes read from a TCP connection at once
LOG_INTERVAL = 10.0  # s between two log lines about refused, slow or failed connections
ACCEPT_BACKOFF_MIN = 0.05  # s to wait after accept found no descriptor, doubling...
ACCEPT_BACKOFF_MAX = 1.0  # ...up to this while it goes on
DESCRIPTORS_EXHAUSTED_HOLD = 5.0  # s descriptors_exhausted_until lies beyond the last failure
CLOSE_LINGER = 2.0  # s at most to get a last answer out before closing a connection (and TLS its close_notify)
MAX_QUEUED_BEHIND_DIAL = 32  # messages waiting for a connection being dialled; beyond, dropped (< the writer's 64)

# accept(2) found no descriptor or memory for the new socket: the whole process is short.
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2) errors about one connection its peer already gave up on (Linux passes
# pending network errors through accept): skip it and accept the next.
_ACCEPT_SKIPPABLE = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))


@attrs.frozen(kw_only=True)
class TcpLimits:
    """What the peers may hold of the server over TCP and TLS (``sip.tcp_*``, ``sip.tls_handshake_timeout``)."""

    idle_timeout: float = attrs.field(validator=attrs.validators.gt(0))
    header_timeout: float = attrs.field(validator=attrs.validators.gt(0))
    max_connections: int = attrs.field(validator=attrs.validators.ge(1))
    max_connections_per_source: int = attrs.field(validator=attrs.validators.ge(1))
    handshake_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))  # TLS: accept to handshake done

    @classmethod
    def from_config(cls, config) -> "TcpLimits":
        return cls(idle_timeout=config["sip.tcp_idle_timeout"], header_timeout=config["sip.tcp_header_timeout"],
                   max_connections=config["sip.tcp_max_connections"],
                   max_connections_per_source=config["sip.tcp_max_connections_per_source"],
                   handshake_timeout=config["sip.tls_handshake_timeout"])


@attrs.define
class TcpCounters:
    """What one stream transport (TCP or TLS) turned away or cut short, since the start (only ever incremented).

    The server's metrics copy them once a second (``service/metrics.py``, ``eko_sip_connections_*``).
    """

    accepted: int = 0
    refused_max_connections: int = 0  # accepted and closed at once: the global cap was reached
    refused_per_source: int = 0  # the same, for the per-source cap
    idle_closed: int = 0
    header_timeouts: int = 0
    too_large: int = 0  # messages over sip.max_message_size (answered 513 when addressable)
    unframeable: int = 0  # other framing faults (no or bad Content-Length, stray CR or LF)
    accept_out_of_descriptors: int = 0  # accept(2) failed with EMFILE, ENFILE, ENOBUFS or ENOMEM
    tls_handshake_failures: int = 0  # refused by either side: version, cipher, certificate, or not TLS at all
    tls_handshake_timeouts: int = 0  # not complete within sip.tls_handshake_timeout (a slowloris of TLS)


class _Throttle:
    """At most one log line per ``interval`` about one recurring trouble; the next line says how many were held back."""

    def __init__(self, interval: float):
        self.interval = interval
        self._next_at = -math.inf
        self._held_back = 0

    def ready(self, now: float) -> str | None:
        """The end of the line to log now (how many were held back), or None: hold this one back."""
        if now < self._next_at:
            self._held_back += 1
            return None
        self._next_at = now + self.interval
        held_back, self._held_back = self._held_back, 0
        return f" ({held_back} more since the last such line)" if held_back else ""


def _handshake_failure(error: trio.BrokenResourceError) -> str:
    """Why a TLS handshake failed, in OpenSSL's words without the source file and line."""
    cause = error.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        why = cause.reason.replace("_", " ").lower()
        verify = getattr(cause, "verify_message", None)
        return f"{why}: {verify}" if verify else why
    return str(cause or error) or "the connection broke"


def _unannounced_end(error: Exception) -> bool:
    """Whether a TLS stream broke only because the peer closed TCP without a close_notify."""
    # ssl (Python 3.10 on) raises SSLEOFError for OpenSSL's UNEXPECTED_EOF_WHILE_READING.
    return isinstance(error.__cause__, ssl.SSLEOFError)


@functools.lru_cache(maxsize=1024)  # every send asks; ipaddress parses in Python
def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TcpConnection:
    """One accepted (or dialled) TCP or TLS connection (TLS: after its handshake) and its writer channel."""

    _ids = itertools.count(1)

    def __init__(self, stream: trio.SocketStream | trio.SSLStream, peer: tuple, transport: str = "tcp"):
        self.id = next(self._ids)
        self.stream = stream
        self.peer = peer
        self.transport = transport  # "tcp" or "tls"
        self.label = transport.upper()  # for the log: "SIP TLS from ..."
        # Each message with the event to set once it is written (or lost), for whoever waits on it.
        self.send_channel, self.receive_channel = trio.open_memory_channel[tuple[bytes, "trio.Event | None"]](64)
        self.writer_done = trio.Event()  # the writer task has ended (its channel closed and drained, or broken)

    def __repr__(self) -> str:
        return f"<{self.transport}#{self.id} {self.peer[0]}:{self.peer[1]}>"


class SipTransport:
    """Owns the SIP sockets; hands complete messages to ``deliver``."""

    def __init__(self, *, host: str, port: int, transports: list[str], max_message_size: int, deliver: Deliver,
                 trace=None, tcp_limits: TcpLimits | None = None,
                 on_descriptors_exhausted: Callable[[OSError], None] | None = None,
                 tls: ServerTls | None = None, tls_port: int = 5061):
        """``tls``: the certificate and policy, needed when ``transports`` has ``"tls"``, whose
        listener binds ``tls_port`` (0: any free port; ``bound["tls"]`` says which)."""
        if "tls" in transports and tls is None:
            raise ValueError("SIP over TLS needs the server's certificate (tls=ServerTls(...))")
        if tcp_limits is None:  # the configuration's defaults: never a transport without limits
            from eko_rtp.config import build_config

            tcp_limits = TcpLimits.from_config(build_config({}, source=None))
        self.host = host
        self.port = port
        self.transports = transports
        self.tls = tls
        self.tls_port = tls_port
        self.max_message_size = max_message_size
        self.deliver = deliver
        self.trace = trace  # a SipTrace, or None (the default: no per-message work)
        self.udp: socket.socket | None = None
        self.connections: dict[int, TcpConnection] = {}
        self._by_peer: dict[tuple, TcpConnection] = {}  # by (transport, peer address)
        # Connections being dialled, by (transport, address): the messages that wait for each, in order.
        self._dialing: dict[tuple, list[tuple[bytes, trio.Event]]] = {}
        self._nursery: trio.Nursery | None = None
        self.bound: dict[str, tuple] = {}
        self.udp_dropped = 0
        self.resolving = 0  # names being resolved now
        self.resolution_failures = 0
        self.tcp_limits = tcp_limits
        self.stream_counters = {transport: TcpCounters() for transport in STREAM_TRANSPORTS}  # by transport
        # Until when (trio's clock) the process counts as out of descriptors: the last
        # failed accept plus DESCRIPTORS_EXHAUSTED_HOLD; -inf once one succeeds again.
        self.descriptors_exhausted_until = -math.inf
        # Called with the OSError of each accept that found no descriptor (the server's health).
        self.on_descriptors_exhausted = on_descriptors_exhausted
        self._accepted_open = 0  # accepted connections open (dialled ones are not capped)
        self._per_source: dict[str, int] = {}  # accepted connections open, by source IP address
        self._accept_failures = 0  # failed accepts in a row (out of descriptors)
        self._refusal_logs = {"all": _Throttle(LOG_INTERVAL), "source": _Throttle(LOG_INTERVAL)}  # by cap
        self._slow_log = _Throttle(LOG_INTERVAL)
        self._descriptor_log = _Throttle(LOG_INTERVAL)
        self._handshake_log = _Throttle(LOG_INTERVAL)

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
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, "tcp")
            if "tls" in self.transports:
                listeners = await trio.open_tcp_listeners(self.tls_port, host=self.host)
                self.bound["tls"] = listeners[0].socket.getsockname()[:2]
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, "tls")
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

    # -- TCP and TLS ---------------------------------------------------------------

    def open_connections(self, transport: str) -> int:
        """Connections of ``transport`` (``"tcp"`` or ``"tls"``) up now, accepted and dialled (TLS: handshake done)."""
        return sum(1 for connection in self.connections.values() if connection.transport == transport)

    def descriptors_exhausted(self, now: float) -> bool:
        """Whether the process counts as out of descriptors at ``now`` (a recent accept failed for want of one)."""
        return now < self.descriptors_exhausted_until

    async def _accept_loop(self, listener: trio.SocketListener, transport: str) -> None:
        # Not trio.serve_listeners: it logs a traceback every 100 ms while descriptors
        # are short, and has no say over which connections to keep.
        sock = listener.socket
        backoff = ACCEPT_BACKOFF_MIN
        try:
            while True:
                try:
                    client, address = await sock.accept()
                except OSError as error:
                    if error.errno in _OUT_OF_DESCRIPTORS:
                        self._out_of_descriptors(error, backoff, transport)
                        await trio.sleep(backoff)  # the pending connection waits in the backlog
                        backoff = min(2 * backoff, ACCEPT_BACKOFF_MAX)
                    elif error.errno not in _ACCEPT_SKIPPABLE:
                        raise
                    continue
                backoff = ACCEPT_BACKOFF_MIN
                if self._accept_failures:
                    log.info("SIP TCP: accepting connections again, after %d attempts failed for want of a "
                             "descriptor", self._accept_failures)
                    self._accept_failures = 0
                    self.descriptors_exhausted_until = -math.inf
                self._admit(client, address[:2], transport)
        finally:
            sock.close()

    def _out_of_descriptors(self, error: OSError, backoff: float, transport: str) -> None:
        now = trio.current_time()
        self.stream_counters[transport].accept_out_of_descriptors += 1
        self._accept_failures += 1
        self.descriptors_exhausted_until = now + DESCRIPTORS_EXHAUSTED_HOLD
        if self.on_descriptors_exhausted is not None:
            try:
                self.on_descriptors_exhausted(error)
            except Exception:
                # The server's health bookkeeping must not stop the accept loop for good.
                log.exception("internal error reporting that descriptors ran out")
        more = self._descriptor_log.ready(now)
        if more is not None:
            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            log.warning("SIP TCP: cannot accept a connection: %s (%s; %d SIP TCP connections open, RLIMIT_NOFILE "
                        "%s); retrying in %g s%s", os.strerror(error.errno), errno.errorcode.get(error.errno, "?"),
                        len(self.connections), soft_limit, backoff, more)

    def _admit(self, client: trio.socket.SocketType, peer: tuple, transport: str) -> None:
        """Serve an accepted connection, or close it at once when a cap is reached.

        Synchronous from the accept on: the count cannot change under the check.
        """
        limits, source, counters = self.tcp_limits, peer[0], self.stream_counters[transport]
        if self._accepted_open >= limits.max_connections:
            counters.refused_max_connections += 1
            cap, why = "all", f"{self._accepted_open} connections open (sip.tcp_max_connections)"
        elif self._per_source.get(source, 0) >= limits.max_connections_per_source:
            counters.refused_per_source += 1
            cap, why = "source", (f"{self._per_source[source]} connections open from {source} "
                                  "(sip.tcp_max_connections_per_source)")
        else:
            counters.accepted += 1
            self._accepted_open += 1
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self._nursery.start_soon(self._serve_accepted, client, peer, transport)
            return
        client.close()
        more = self._refusal_logs[cap].ready(trio.current_time())
        if more is not None:
            log.warning("SIP %s from %s:%s: connection closed at once: %s%s", transport.upper(), *peer, why, more)

    async def _serve_accepted(self, client: trio.socket.SocketType, peer: tuple, transport: str) -> None:
        released = False

        def release() -> None:
            """Give the connection's places under the caps back, once: as its close begins.

            Not after the close: a peer that sees our FIN may connect again before this
            task runs on, and must not find its old connection still counted.
            """
            nonlocal released
            if not released:
                released = True
                self._accepted_open -= 1
                left = self._per_source[peer[0]] - 1
                if left:
                    self._per_source[peer[0]] = left
                else:
                    del self._per_source[peer[0]]

        try:
            stream = trio.SocketStream(client)
            if transport == "tls":
                stream = self.tls.wrap(stream)  # the context of the moment: a reload changes the next ones
                if not await self._secure(stream, peer, "from", closing=release):
                    return
            await self._run_connection(TcpConnection(stream, peer, transport), closing=release)
        finally:
            release()

    async def _secure(self, stream: trio.SSLStream, peer: tuple, direction: str,
                      closing: Callable[[], None] | None = None) -> bool:
        """The TLS handshake, within ``handshake_timeout``; False once it failed (counted, logged, closed).

        Before it completes a connection is nobody's: no message, no place in
        ``connections``. One warning per LOG_INTERVAL at most (the others at DEBUG),
        and no traceback: a scanner or an old client fails handshakes all day.
        """
        timeout = self.tcp_limits.handshake_timeout
        why = None
        with trio.move_on_after(timeout):
            try:
                await stream.do_handshake()
                return True
            except trio.BrokenResourceError as error:
                self.stream_counters["tls"].tls_handshake_failures += 1
                why = f"TLS handshake failed: {_handshake_failure(error)}"
        if why is None:
            self.stream_counters["tls"].tls_handshake_timeouts += 1
            why = f"TLS handshake not complete within {timeout:g} s (sip.tls_handshake_timeout)"
        more = self._handshake_log.ready(trio.current_time())
        if more is not None:
            log.warning("SIP TLS %s %s:%s: %s; closing the connection%s", direction, *peer[:2], why, more)
        else:  # held back from the warnings: still there for whoever debugs one client
            log.debug("SIP TLS %s %s:%s: %s; closing the connection", direction, *peer[:2], why)
        if closing is not None:
            closing()
        await trio.aclose_forcefully(stream)
        return False

    async def _run_connection(self, connection: TcpConnection, closing: Callable[[], None] | None = None) -> None:
        """Read and write the connection until it ends, then close it; ``closing()`` runs as the close begins."""
        self.connections[connection.id] = connection
        self._by_peer[connection.transport, connection.peer] = connection
        limits = self.tcp_limits
        framer = StreamFramer(max_message_size=self.max_message_size, idle_timeout=limits.idle_timeout,
                              header_timeout=limits.header_timeout, now=trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_connection, connection)
                if await self._read_connection(connection, framer):
                    await self._close_after_answer(connection)
                nursery.cancel_scope.cancel()
        finally:
            self.connections.pop(connection.id, None)
            if self._by_peer.get((connection.transport, connection.peer)) is connection:
                del self._by_peer[connection.transport, connection.peer]
            if closing is not None:
                closing()
            # A TLS stream sends its close_notify first (tls.py): bounded, for a peer that
            # reads nothing could hold it for ever; past the bound it is closed forcefully.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_LINGER):
                await connection.stream.aclose()

    async def _read_connection(self, connection: TcpConnection, framer: StreamFramer) -> bool:
        """Deliver the connection's messages until it ends; True when an answer must go out before the close."""
        stream, peer, label = connection.stream, connection.peer, connection.label
        while True:
            data = None
            with trio.move_on_at(framer.deadline):
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    if not _unannounced_end(error):
                        log.debug("SIP %s from %s:%s: %s", label, *peer, error)
                        return False
                    # Many SIP peers close TLS without a close_notify: an ordinary end here
                    # (a truncated message is incomplete by its Content-Length, so it cannot
                    # pass for a whole one; RFC 3261 §18.3).
                    data = b""
            now = trio.current_time()
            if data is None:
                timeout = framer.expired(now)
                if timeout is not None:
                    self._timed_out(connection, framer, timeout, now)
                    return False
                continue
            if not data:
                if framer.pending:
                    # The peer hung up mid-message: say so, or the loss is invisible.
                    log.warning("SIP %s from %s:%s: connection closed in the middle of a message "
                                "(%d bytes discarded)", label, *peer, framer.pending)
                return False
            framer.receive_data(data, now)
            try:
                while (message := framer.next_message()) is not None:
                    self._deliver_tcp(message, connection)
            except MessageTooLarge as error:
                self.stream_counters[connection.transport].too_large += 1
                if error.head is None:
                    log.warning("SIP %s from %s:%s: %s; closing the connection", label, *peer, error)
                    return False
                # The header block fits: the SIP core answers 513 from it (its Content-Length
                # is over the limit there too), addressed like any error (RFC 3261 §8.2.6.2),
                # and logs the refusal. The rest of the message is never read.
                log.debug("SIP %s from %s:%s: %s; closing the connection once the answer is out", label, *peer,
                          error)
                self._deliver_tcp(error.head, connection)
                return True
            except SipParseError as error:
                self.stream_counters[connection.transport].unframeable += 1
                log.warning("SIP %s from %s:%s: %s; closing the connection", label, *peer, error)
                return False
            for _ in range(framer.take_pings()):
                self._queue(connection, b"\r\n")  # RFC 5626 §3.5.1 keepalive pong

    def _deliver_tcp(self, message: bytes, connection: TcpConnection) -> None:
        if self.trace is not None:
            self.trace.message("received from", connection.transport, connection.peer, message, trio.current_time())
        self.deliver(message, connection.peer, connection.transport, connection)

    def _timed_out(self, connection: TcpConnection, framer: StreamFramer, timeout: StreamTimeout, now: float) -> None:
        peer, pending, counters = connection.peer, framer.pending, self.stream_counters[connection.transport]
        if timeout is StreamTimeout.HEADERS:
            counters.header_timeouts += 1
            why = (f"headers not complete {self.tcp_limits.header_timeout:g} s after the message began "
                   "(sip.tcp_header_timeout)")
        else:
            counters.idle_closed += 1
            why = f"no message for {self.tcp_limits.idle_timeout:g} s (sip.tcp_idle_timeout)"
            if not pending:
                log.debug("SIP %s from %s:%s: %s; closing the connection", connection.label, *peer, why)
                return
        more = self._slow_log.ready(now)
        if more is not None:
            log.warning("SIP %s from %s:%s: %s, %d bytes discarded; closing the connection%s", connection.label, *peer,
                        why, pending, more)

    async def _close_after_answer(self, connection: TcpConnection) -> None:
        """Get the queued answer out, then close gently, within CLOSE_LINGER.

        A socket closed with unread bytes sends a reset (RFC 1122 §4.2.2.13), which can
        destroy our answer in the peer's receive buffer before it is read: so the write
        side is shut first, and what the peer still sends is read and dropped.
        """
        connection.send_channel.close()
        with trio.move_on_after(CLOSE_LINGER):
            await connection.writer_done.wait()
            try:
                if isinstance(connection.stream, trio.abc.HalfCloseableStream):  # TLS has no half-close
                    await connection.stream.send_eof()
                while await connection.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                log.debug("SIP %s from %s:%s: %s", connection.label, *connection.peer, error)

    async def _write_connection(self, connection: TcpConnection) -> None:
        try:
            async for data, written in connection.receive_channel:
                try:
                    await connection.stream.send_all(data)
                finally:
                    if written is not None:
                        written.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("SIP %s to %s: %s", connection.label, connection.peer, error)
        finally:
            connection.writer_done.set()
            # Nobody waits for what will never be written.
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                while True:
                    _, written = connection.receive_channel.receive_nowait()
                    if written is not None:
                        written.set()

    def _queue(self, connection: TcpConnection, data: bytes, written: trio.Event | None = None) -> None:
        try:
            connection.send_channel.send_nowait((data, written))
            return
        except trio.ClosedResourceError:
            log.debug("SIP %s to %s:%s: the connection is closing; message dropped", connection.label,
                      *connection.peer)
        except (trio.WouldBlock, trio.BrokenResourceError):
            log.warning("SIP %s to %s:%s: writer is stuck; message dropped", connection.label, *connection.peer)
        if written is not None:
            written.set()

    async def _dial(self, destination: tuple, transport: str) -> None:
        """A new connection to ``destination`` (a name is resolved by trio, off the event loop), for the
        messages waiting in ``_dialing`` (those sent meanwhile join them), written in order once it is up.

        Over TLS the peer's certificate must name ``destination``'s host as we
        were given it: a Contact's host name, or its address.
        """
        connection = None
        try:
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    stream = await trio.open_tcp_stream(destination[0], destination[1])
            except (OSError, trio.TooSlowError) as error:
                log.warning("SIP %s connect to %s:%s failed: %s", transport.upper(), destination[0], destination[1],
                            error if str(error) else f"no connection within {DIAL_TIMEOUT:g} s")
                return
            if transport == "tls":
                stream = self.tls.connect(stream, destination[0])
                if not await self._secure(stream, destination, "to"):
                    return
            connection = TcpConnection(stream, destination, transport)
        finally:
            waiting = self._dialing.pop((transport, destination))
            for data, written in waiting:
                if connection is not None:
                    self._queue(connection, data, written)  # the writer sets the event now
                else:
                    written.set()  # lost: nobody waits for it
            if connection is None and len(waiting) > 1:
                log.warning("SIP %s to %s:%s: %d messages dropped with the connection", transport.upper(),
                            *destination[:2], len(waiting))
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

    def _send_stream(self, data: bytes, destination: tuple, transport: str, connection: object | None) -> trio.Event:
        """The connection the message is for, else a live one with the peer's address (RFC 5923 §4), else the one
        being dialled there (the message waits for it, MAX_QUEUED_BEHIND_DIAL at most), else a new one."""
        written = trio.Event()
        target = connection if isinstance(connection, TcpConnection) else None
        if target is None or target.id not in self.connections or target.transport != transport:
            target = self._by_peer.get((transport, destination))
        if target is not None and target.id in self.connections:
            self._queue(target, data, written)
        elif transport == "tls" and self.tls is None:
            log.warning("SIP TLS to %s:%s: TLS is not configured (sip.transports); message dropped", *destination[:2])
            written.set()
        elif (waiting := self._dialing.get((transport, destination))) is not None:
            # A dial to there is under way: one connection will do for both (RFC 5923 §4 reuses it).
            if len(waiting) < MAX_QUEUED_BEHIND_DIAL:
                waiting.append((data, written))
            else:
                log.warning("SIP %s to %s:%s: %d messages already wait for the connection; message dropped",
                            transport.upper(), *destination[:2], len(waiting))
                written.set()
        elif self._nursery is not None:
            self._dialing[transport, destination] = [(data, written)]
            self._nursery.start_soon(self._dial, destination, transport)
        else:
            written.set()
        return written

    def send(self, data: bytes, destination: tuple, transport: str, connection: object | None) -> trio.Event | None:
        """Send one message; never blocks, never raises for network trouble.

        Over UDP the message is with the kernel on return (None). Over TCP and TLS
        it is queued for the connection's writer: the event returned is set once it
        has been written (or lost), for a caller whose next step must follow it on
        the wire (the 200 OK before the first RTP packet).

        A destination given by name (a Contact or Route of the caller's) is resolved
        with trio's resolver in a task of its own (a worker thread, bounded in time
        and in number), never by ``sendto`` on the event loop, where a slow DNS
        server would stop every call's frames.
        """
        if transport == "udp" and not _is_ip_address(destination[0]):
            self._resolve_then_send(data, tuple(destination), transport)
            return  # traced once resolved, when it comes back here with an address
        if self.trace is not None:
            self.trace.message("sent to", transport, destination, data, trio.current_time())
        if transport in STREAM_TRANSPORTS:
            return self._send_stream(data, tuple(destination), transport, connection)
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
