"""The trunk's SIP transport and client transactions: a thin trio shell over ``uac.py``.

One UDP socket carries every call's signalling. A receive task parses each datagram
and hands a response to the transaction waiting for it (keyed by Call-ID and CSeq);
requests from the far end (a BYE when the bot hangs up, an OPTIONS) are answered
here. Response arrival times are the kernel's (``SO_TIMESTAMPNS``), on the same
clock as the RTP engine's, so INVITE→200→first packet latencies subtract cleanly.

Retransmission (RFC 3261 §17.1.1.2 and §17.1.2.2): an INVITE is resent at T1, 2·T1,
4·T1 ... until any response, a BYE or OPTIONS at T1 doubling up to T2 until a final
response; either gives up after 64·T1 and counts as 408.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
import struct
import time

import attrs
import trio

from eko_bench import uac
from eko_bench.rtp_engine import SO_TIMESTAMPNS

log = logging.getLogger(__name__)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = stdlib_socket.CMSG_SPACE(_TIMESPEC.size)
TIMEOUT_STATUS = 408  # RFC 3261 §8.1.3.1: a transaction timeout is treated as a 408


@attrs.frozen(kw_only=True)
class InviteOutcome:
    """How an INVITE transaction ended, with kernel-clock times (ns, CLOCK_REALTIME)."""

    status: int
    sent_ns: int
    provisional_ns: int | None
    final_ns: int | None
    response: uac.Message | None


class SipClient:
    """Client transactions for many dialogs over one UDP socket."""

    def __init__(self, sock: trio.socket.SocketType, endpoint: uac.Endpoint):
        self._socket = sock
        self.endpoint = endpoint
        self._target = (endpoint.target_host, endpoint.target_port)
        self._waiting: dict[tuple[str, int, str], trio.MemorySendChannel] = {}
        self._acks: dict[str, bytes] = {}  # Call-ID -> ACK, resent on a retransmitted 2xx (§13.2.2.4)
        self.remote_hangups: dict[str, trio.Event] = {}
        self.malformed = 0
        self.retransmissions = 0

    @classmethod
    async def open(cls, *, local_host: str, target_host: str, target_port: int) -> "SipClient":
        family = trio.socket.AF_INET6 if ":" in local_host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1 << 21)
        await sock.bind((local_host, 0))
        endpoint = uac.Endpoint(local_host=local_host, local_port=sock.getsockname()[1],
                                target_host=target_host, target_port=target_port)
        return cls(sock, endpoint)

    def close(self) -> None:
        self._socket.close()

    async def receive_loop(self) -> None:
        """Dispatch everything that arrives until cancelled."""
        while True:
            data, ancillary, _flags, source = await self._socket.recvmsg(65536, _ANCILLARY_SIZE)
            if ancillary:
                seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
                arrival = seconds * 1_000_000_000 + nanoseconds
            else:
                arrival = time.time_ns()
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
            await self._socket.sendto(uac.response_to(message, 200, "OK"), source)
            event = self.remote_hangups.get(message.call_id)
            if event is not None:
                event.set()
        elif message.method in ("OPTIONS", "ACK"):
            if message.method == "OPTIONS":
                await self._socket.sendto(uac.response_to(message, 200, "OK"), source)
        else:
            await self._socket.sendto(uac.response_to(message, 501, "Not Implemented"), source)

    async def _send(self, data: bytes) -> None:
        await self._socket.sendto(data, self._target)

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
            interval = uac.T1
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
        interval = uac.T1
        deadline = trio.current_time() + uac.TRANSACTION_TIMEOUT
        while trio.current_time() < deadline:
            with trio.move_on_at(min(trio.current_time() + interval, deadline)):
                while True:
                    response, _arrival = await receive_channel.receive()
                    if response.status >= 200:
                        return response.status
                    interval = uac.T2  # §17.1.2.2: after a provisional, resend every T2
            await self._send(request)
            self.retransmissions += 1
            interval = min(interval * 2, uac.T2)
        return TIMEOUT_STATUS
