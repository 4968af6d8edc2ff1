"""The trunk's SIP transport and client transactions: a thin trio shell over ``uac.py``.

One UDP socket, or one TLS connection (``--tls``: a trunk keeps one or a few
connections for all its calls, not one per call), carries every call's signalling. A
receive task parses each message and hands a response to the transaction waiting for
it (keyed by Call-ID and CSeq); requests from the far end (a BYE when the bot hangs
up, an OPTIONS) are answered here. Over UDP response arrival times are the kernel's
(``SO_TIMESTAMPNS``), on the same clock as the RTP engine's, so INVITE→200→first
packet latencies subtract cleanly. Over TLS the TCP socket has ``SO_TIMESTAMPNS`` too
(Linux stamps a TCP read with its last segment's arrival): a message's arrival is the
kernel's stamp of the read that completed it, on the same clock, so a 200 OK over TLS
is not made late by its decryption and the wait for this task to run. That stamp is
the read's *last* segment's: a read that completes one call's 200 and also holds a
later message of another call carries the later time, so over TLS a 200's arrival
can be late by up to the spacing of the calls' messages (200->first RTP can then dip
below zero by a fraction of a millisecond; the wire order itself is checked in
tests/test_sip_tls.py).

Over TLS the stream is cut into messages by ``eko_rtp.sip.framing.StreamFramer``
(Content-Length framing, RFC 3261 §18.3); a stream that cannot be framed, or a
connection the server closes, ends the run with a :class:`UserError` saying so.

Retransmission (RFC 3261 §17.1.1.2 and §17.1.2.2): over UDP an INVITE is resent at
T1, 2·T1, 4·T1 ... until any response, a BYE or OPTIONS at T1 doubling up to T2
until a final response; either gives up after 64·T1 and counts as 408. Over TLS
(reliable) nothing is resent, and Timers B and F still give up after 64·T1.
"""

from __future__ import annotations

import logging
import math
import socket as stdlib_socket
import ssl
import struct
import time

import attrs
import trio

from eko_bench import uac
from eko_bench.rtp_engine import SO_TIMESTAMPNS
from eko_rtp.errors import UserError
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer

log = logging.getLogger(__name__)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = stdlib_socket.CMSG_SPACE(_TIMESPEC.size)
TIMEOUT_STATUS = 408  # RFC 3261 §8.1.3.1: a transaction timeout is treated as a 408
TLS_CONNECT_TIMEOUT = 10.0  # s for the TCP connect and the TLS handshake
_READ_SIZE = 65536


class _UdpTransport:
    """Every message a datagram, to and from the target's SIP port."""

    reliable = False

    def __init__(self, sock: trio.socket.SocketType, target: tuple[str, int]):
        self._socket = sock
        self._target = target

    async def send(self, data: bytes) -> None:
        await self._socket.sendto(data, self._target)

    async def reply(self, data: bytes, source) -> None:
        await self._socket.sendto(data, source)

    async def receive(self) -> tuple[bytes, int, object]:
        """One datagram: (bytes, arrival ns on the kernel's CLOCK_REALTIME stamp, source)."""
        data, ancillary, _flags, source = await self._socket.recvmsg(_READ_SIZE, _ANCILLARY_SIZE)
        return data, _arrival_ns(ancillary), source

    def close(self) -> None:
        self._socket.close()


def _arrival_ns(ancillary) -> int:
    """The kernel's receive stamp (SO_TIMESTAMPNS, CLOCK_REALTIME ns), or now where it gave none."""
    if ancillary:
        seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
        return seconds * 1_000_000_000 + nanoseconds
    return time.time_ns()


class _StampedTcpStream(trio.abc.HalfCloseableStream):
    """A TCP stream that keeps the kernel's stamp of its latest read (``last_arrival_ns``).

    Sends and closes go to trio's ``SocketStream`` (which cannot be subclassed); reads
    use ``recvmsg`` for the stamp. Their one reader is the SSLStream above, so
    trio's guard against two concurrent readers is not needed here.
    """

    def __init__(self, stream: trio.SocketStream):
        self._stream = stream
        self.socket = stream.socket
        self.socket.setsockopt(trio.socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.last_arrival_ns = 0

    async def send_all(self, data) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data, ancillary, _flags, _source = await self.socket.recvmsg(max_bytes or _READ_SIZE, _ANCILLARY_SIZE)
        except OSError as error:
            if self.socket.fileno() == -1:
                raise trio.ClosedResourceError("the SIP-over-TLS socket was closed") from None
            raise trio.BrokenResourceError from error
        self.last_arrival_ns = _arrival_ns(ancillary)
        return data


class _TlsTransport:
    """One TLS connection to the target's SIP-over-TLS port, framed by Content-Length."""

    reliable = True

    def __init__(self, stream: trio.SSLStream, *, where: str):
        self._stream = stream
        self._tcp: _StampedTcpStream = stream.transport_stream
        self._where = where
        self._framer = StreamFramer(max_message_size=uac.MAX_MESSAGE)
        self._arrival = 0
        # trio lets one task send on a stream at a time; calls send concurrently.
        self._sending = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._sending:
            try:
                await self._stream.send_all(data)
            except trio.BrokenResourceError as error:
                raise UserError(f"the SIP-over-TLS connection to {self._where} broke: {error.__cause__ or error}") from None

    async def reply(self, data: bytes, source) -> None:
        await self.send(data)  # RFC 3261 §18.2.2: a response goes back on the request's connection

    async def receive(self) -> tuple[bytes, int, object]:
        """The next whole message: (bytes, the kernel's stamp of the TCP read that completed it, None)."""
        while True:
            try:
                message = self._framer.next_message()
            except SipParseError as error:
                raise UserError(f"the SIP stream over TLS from {self._where} cannot be framed: {error}") from None
            if message is not None:
                return message, self._arrival, None
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except trio.BrokenResourceError as error:
                raise UserError(f"the SIP-over-TLS connection to {self._where} broke: {error.__cause__ or error}") from None
            if not data:
                raise UserError(f"{self._where} closed the SIP-over-TLS connection")
            self._arrival = self._tcp.last_arrival_ns
            self._framer.receive_data(data)

    def close(self) -> None:
        # Abrupt on purpose (no close_notify): the bench's calls have all ended, and a
        # synchronous close must not wait on the peer; the server sees end of stream.
        self._tcp.socket.close()


@attrs.frozen(kw_only=True)
class InviteOutcome:
    """How an INVITE transaction ended, with kernel-clock times (ns, CLOCK_REALTIME)."""

    status: int
    sent_ns: int
    provisional_ns: int | None
    final_ns: int | None
    response: uac.Message | None


class SipClient:
    """Client transactions for many dialogs over one UDP socket or one TLS connection."""

    def __init__(self, transport: _UdpTransport | _TlsTransport, endpoint: uac.Endpoint):
        self._transport = transport
        self.endpoint = endpoint
        self._waiting: dict[tuple[str, int, str], trio.MemorySendChannel] = {}
        self._acks: dict[str, bytes] = {}  # Call-ID -> ACK, resent on a retransmitted 2xx (§13.2.2.4)
        self.remote_hangups: dict[str, trio.Event] = {}
        self.malformed = 0
        self.retransmissions = 0

    @classmethod
    async def open(cls, *, local_host: str, target_host: str, target_port: int,
                   tls: ssl.SSLContext | None = None) -> "SipClient":
        """A client on a new UDP socket; with ``tls``, on a TLS connection to ``target_port`` instead.

        Over TLS the server's certificate must chain to ``tls``'s trust and name
        ``target_host`` (an IP address: the certificate's IP SAN). A connection refused
        or a failed handshake raises ``OSError`` or ``trio.BrokenResourceError``.
        """
        if tls is not None:
            return await cls._open_tls(local_host=local_host, target_host=target_host, target_port=target_port,
                                       context=tls)
        family = trio.socket.AF_INET6 if ":" in local_host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1 << 21)
        await sock.bind((local_host, 0))
        endpoint = uac.Endpoint(local_host=local_host, local_port=sock.getsockname()[1],
                                target_host=target_host, target_port=target_port)
        return cls(_UdpTransport(sock, (target_host, target_port)), endpoint)

    @classmethod
    async def _open_tls(cls, *, local_host: str, target_host: str, target_port: int,
                        context: ssl.SSLContext) -> "SipClient":
        with trio.fail_after(TLS_CONNECT_TIMEOUT):
            tcp = _StampedTcpStream(await trio.open_tcp_stream(target_host, target_port, local_address=local_host))
            # https_compatible: a server may close without close_notify; messages are
            # framed by Content-Length, so no truncation passes for a whole message.
            stream = trio.SSLStream(tcp, context, server_hostname=target_host, https_compatible=True)
            try:
                await stream.do_handshake()
            except BaseException:
                tcp.socket.close()
                raise
        endpoint = uac.Endpoint(local_host=local_host, local_port=tcp.socket.getsockname()[1],
                                target_host=target_host, target_port=target_port, transport="tls")
        return cls(_TlsTransport(stream, where=f"{target_host}:{target_port}"), endpoint)

    def close(self) -> None:
        self._transport.close()

    async def receive_loop(self) -> None:
        """Dispatch everything that arrives until cancelled."""
        while True:
            data, arrival, source = await self._transport.receive()
            try:
                message = uac.parse_message_untrusted(data)
                if message.is_response:
                    await self._on_response(message, arrival)
                else:
                    await self._on_request(message, source)
            except uac.BenchProtocolError as error:
                self.malformed += 1
                log.warning("unreadable SIP from %s: %s", source, error)

    async def _on_response(self, message: uac.Message, arrival: int) -> None:
        number, method = message.cseq
        channel = self._waiting.get((message.call_id, number, method))
        if channel is not None:
            try:
                channel.send_nowait((message, arrival))
            except trio.WouldBlock:
                pass
        elif method == "INVITE" and 200 <= message.status < 300 and message.call_id in self._acks:
            await self._send(self._acks[message.call_id])

    async def _on_request(self, message: uac.Message, source) -> None:
        if message.method == "BYE":
            await self._transport.reply(uac.response_to(message, 200, "OK"), source)
            event = self.remote_hangups.get(message.call_id)
            if event is not None:
                event.set()
        elif message.method in ("OPTIONS", "ACK"):
            if message.method == "OPTIONS":
                await self._transport.reply(uac.response_to(message, 200, "OK"), source)
        else:
            await self._transport.reply(uac.response_to(message, 501, "Not Implemented"), source)

    async def _send(self, data: bytes) -> None:
        await self._transport.send(data)

    @property
    def _first_resend(self) -> float:
        """Timer A / E's first interval: T1, or never over a reliable transport (§17.1.1.2)."""
        return math.inf if self._transport.reliable else uac.T1

    async def invite(self, dialog: uac.Dialog, sdp: bytes) -> tuple[InviteOutcome, uac.Dialog]:
        """Run an INVITE client transaction to its final response and ACK it."""
        branch = uac.new_branch()
        request = dialog.invite(branch=branch, sdp=sdp)
        key = (dialog.call_id, 1, "INVITE")
        send_channel, receive_channel = trio.open_memory_channel(16)
        self._waiting[key] = send_channel
        self.remote_hangups[dialog.call_id] = trio.Event()
        provisional = None
        try:
            sent_ns = time.time_ns()
            await self._send(request)
            interval = self._first_resend
            deadline = trio.current_time() + uac.TRANSACTION_TIMEOUT
            next_resend = trio.current_time() + interval
            while True:
                with trio.move_on_at(min(next_resend, deadline) if provisional is None else deadline):
                    response, arrival = await receive_channel.receive()
                    if response.status < 200:
                        provisional = provisional or arrival
                        continue
                    if response.status < 300:
                        dialog = dialog.confirmed(response)
                        ack = dialog.ack()
                        self._acks[dialog.call_id] = ack
                        await self._send(ack)
                    else:
                        await self._send(dialog.ack_failure(response, branch=branch))
                    return InviteOutcome(status=response.status, sent_ns=sent_ns, provisional_ns=provisional,
                                         final_ns=arrival, response=response), dialog
                if trio.current_time() >= deadline:
                    return InviteOutcome(status=TIMEOUT_STATUS, sent_ns=sent_ns, provisional_ns=provisional,
                                         final_ns=None, response=None), dialog
                await self._send(request)
                self.retransmissions += 1
                interval *= 2
                next_resend = trio.current_time() + interval
        finally:
            del self._waiting[key]

    async def bye(self, dialog: uac.Dialog) -> int:
        """Hang up; returns the final status (408 if none came)."""
        key = (dialog.call_id, 2, "BYE")
        send_channel, receive_channel = trio.open_memory_channel(16)
        self._waiting[key] = send_channel
        request = dialog.bye(branch=uac.new_branch())
        try:
            return await self._non_invite(request, receive_channel)
        finally:
            del self._waiting[key]
            self._acks.pop(dialog.call_id, None)
            self.remote_hangups.pop(dialog.call_id, None)

    async def options(self, *, timeout: float) -> int:
        """Send one OPTIONS transaction; its final status, or 408."""
        call_id = uac.new_tag() + "@eko-bench"
        key = (call_id, 1, "OPTIONS")
        send_channel, receive_channel = trio.open_memory_channel(16)
        self._waiting[key] = send_channel
        try:
            with trio.move_on_after(timeout):
                return await self._non_invite(uac.options(self.endpoint, call_id=call_id, branch=uac.new_branch()), receive_channel)
            return TIMEOUT_STATUS
        finally:
            del self._waiting[key]

    async def _non_invite(self, request: bytes, receive_channel: trio.MemoryReceiveChannel) -> int:
        await self._send(request)
        interval = self._first_resend
        deadline = trio.current_time() + uac.TRANSACTION_TIMEOUT
        while trio.current_time() < deadline:
            with trio.move_on_at(min(trio.current_time() + interval, deadline)):
                while True:
                    response, _arrival = await receive_channel.receive()
                    if response.status >= 200:
                        return response.status
                    interval = min(interval, uac.T2)  # §17.1.2.2: after a provisional, resend every T2
            if trio.current_time() >= deadline:
                break
            await self._send(request)
            self.retransmissions += 1
            interval = min(interval * 2, uac.T2)
        return TIMEOUT_STATUS
