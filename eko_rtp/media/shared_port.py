"""One RTP/RTCP port pair for the calls of a trunk: the media of many calls on two sockets.

Theory of operation (``media.rtp_socket = "shared"``): with a socket pair per call,
each frame is a ``sendmsg`` and each caller packet a ``recvfrom`` of its own, and no
system call can carry two calls' packets. Here the calls whose SDP names an address
in ``media.trusted_networks`` (the trunk's media gateways) all get the same local
port in their SDP answer; the frames of one clock tick leave in one ``sendmmsg``
(:meth:`SharedMediaPort.flush`, after each tick) and the receive hub takes the
caller packets by the batch (``recvmmsg``, media/mmsg.py), each routed to its call
by its source address: the (address, port) the call's SDP signalled, RFC 3264 §5
and RFC 4961 symmetric RTP. Two calls cannot signal the same address (the second
gets a pair of its own), and a datagram from any other source belongs to no call:
it is dropped and counted, so a stray packet can take no call's audio.

What that costs: a caller that sends from another address than its SDP names (a
phone behind a NAT) would never be heard on a shared port, so only signalled
addresses we trust share it (the trunk's gateways, which send from the address
they name); every other call, and every call whose offer came late (in the ACK),
gets its own pair and the per-call socket path with its source latch
(media/latch.py), as without this setting.

A :class:`SharedLeg` is what one call's :class:`~eko_rtp.media.stream.MediaStream`
sees in place of its :class:`~eko_rtp.media.ports.PortPair`: ``rtp.sendmsg`` and
``rtp.sendto`` queue into the batch, ``rtcp.sendto`` sends at once (a report every
few seconds), :meth:`SharedLeg.follow` moves its route when a re-INVITE moves the
caller, and :meth:`SharedLeg.close` takes the route away at the end of the call.
"""

from __future__ import annotations

import logging
import socket

from eko_rtp.media.mmsg import LegSender, ReceiveBatch, SendBatch, address_of, socket_address
from eko_rtp.media.ports import PortPair

log = logging.getLogger(__name__)

# Datagrams per recvmmsg: big enough to make a system call a small share of a packet's
# cost, small enough that the hub's checks between two reads (a tick due, its step
# budget) come often: 32 handlers run in a fraction of a millisecond.
RECEIVE_SLOTS = 32
SEND_SLOTS = 256
# Socket buffers: every call's datagrams queue on one socket between two drains of the
# hub (10-20 ms; at 1000 calls 500-1000 datagrams of about 1 KiB of kernel memory each),
# where the default (rmem_default, 208 KiB here) held a call's. Raised past the
# sysctl caps (net.core.rmem_max) when we may (CAP_NET_ADMIN, as under systemd);
# otherwise a warning names the sysctl.
RECEIVE_BUFFER = 16 << 20
SEND_BUFFER = 4 << 20
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>
SO_RCVBUFFORCE = 33


def _size_buffer(sock: socket.socket, option: int, forced: int, size: int, sysctl: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:  # not allowed: as far as the sysctl lets us
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    got = sock.getsockopt(socket.SOL_SOCKET, option) // 2  # Linux reports twice what it accounts
    if got < size // 2:
        log.warning("the shared media socket's buffer is %d KiB, not %d: raise net.core.%s (sysctl) or give"
                    " the server CAP_NET_ADMIN, or datagrams will be dropped under load", got >> 10, size >> 10,
                    sysctl)


class _LegRtcp:
    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def sendto(self, data, address) -> None:
        self._sock.sendto(data, address)


class SharedLeg:
    """One call's place on the shared port: its routes in, and its sending out."""

    __slots__ = ("port", "rtp", "rtcp", "_shared", "_names", "_handlers", "closed")

    def __init__(self, shared: "SharedMediaPort"):
        self._shared = shared
        self.port = shared.port
        self.rtp = LegSender(shared.send_batch, shared.pair.rtp)
        self.rtcp = _LegRtcp(shared.pair.rtcp)
        self._names: tuple[bytes, bytes] | None = None  # the routed (RTP, RTCP) source addresses
        self._handlers = None
        self.closed = False

    def route(self, on_rtp, on_rtcp) -> None:
        """Hand the call's datagrams to ``on_rtp(data, source, now, arrival)`` and ``on_rtcp``."""
        self._handlers = (on_rtp, on_rtcp)
        if self._names is not None:
            self._shared._route(self._names, self._handlers)

    def follow(self, remote_rtp: tuple | None, remote_rtcp: tuple | None) -> bool:
        """Route the caller's new signalled addresses to this call (a re-INVITE moved it).

        False, and the old route kept, when another call holds the new address or
        there is none (a re-INVITE without an address keeps where media comes from).
        """
        if self.closed or remote_rtp is None:
            return False
        names = (socket_address(remote_rtp), socket_address(remote_rtcp or remote_rtp))
        if names == self._names:
            return True
        shared = self._shared
        if not shared._free_for(names, self):
            return False
        if self._names is not None:
            shared._release(self._names, self)
        self._names = names
        shared._claim(names, self)
        if self._handlers is not None:
            shared._route(names, self._handlers)
        return True

    def flush(self) -> None:
        """Send the frames queued so far now (frame 0 leaves with the 200 OK, not a tick later)."""
        self._shared.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._names is not None:
                self._shared._release(self._names, self)
            self._handlers = None


class SharedMediaPort:
    """The shared pair's sockets, its send batch, and the routes from source address to call."""

    def __init__(self, pair: PortPair, *, counters):
        self.pair = pair
        self.port = pair.port
        self.counters = counters  # MediaCounters: strays and send drops, as on per-call pairs
        _size_buffer(pair.rtp, socket.SO_RCVBUF, SO_RCVBUFFORCE, RECEIVE_BUFFER, "rmem_max")
        _size_buffer(pair.rtp, socket.SO_SNDBUF, SO_SNDBUFFORCE, SEND_BUFFER, "wmem_max")
        self.send_batch = SendBatch(pair.rtp, slots=SEND_SLOTS)
        self._rtp_in = ReceiveBatch(pair.rtp, slots=RECEIVE_SLOTS)
        self._rtcp_in = ReceiveBatch(pair.rtcp, slots=8)
        # source socket address -> (handler, (host, port)): the tuple the handler gets is
        # made once per route, not once per packet.
        self._rtp_routes: dict[bytes, tuple] = {}
        self._rtcp_routes: dict[bytes, tuple] = {}
        self._claims: dict[bytes, SharedLeg] = {}  # RTP or RTCP source -> the leg that signalled it
        self.strays = 0
        self.handler_errors = 0
        self._drops_counted = 0

    @property
    def legs(self) -> int:
        return len(set(self._claims.values()))

    def attach(self, remote_rtp: tuple | None, remote_rtcp: tuple | None) -> SharedLeg | None:
        """A leg for a call whose SDP signalled ``remote_rtp``, or None when it cannot share
        (no address yet, or another call already signalled that one)."""
        leg = SharedLeg(self)
        if not leg.follow(remote_rtp, remote_rtcp):
            return None
        return leg

    def _free_for(self, names: tuple[bytes, bytes], leg: SharedLeg) -> bool:
        """Whether no other call holds either address (an RTP and an RTCP address alike:
        two calls never share a source, whatever they use it for)."""
        return all(self._claims.get(name, leg) is leg for name in names)

    def _claim(self, names: tuple[bytes, bytes], leg: SharedLeg) -> None:
        for name in names:
            self._claims[name] = leg

    def _route(self, names: tuple[bytes, bytes], handlers) -> None:
        rtp_name, rtcp_name = names
        self._rtp_routes[rtp_name] = (handlers[0], address_of(rtp_name))
        if rtcp_name != rtp_name:
            self._rtcp_routes[rtcp_name] = (handlers[1], address_of(rtcp_name))

    def _release(self, names: tuple[bytes, bytes], leg: SharedLeg) -> None:
        """Take back what ``leg`` holds of ``names``: its claims and its routes."""
        rtp_name, rtcp_name = names
        if self._claims.get(rtp_name) is leg:
            del self._claims[rtp_name]
            self._rtp_routes.pop(rtp_name, None)
        if self._claims.get(rtcp_name) is leg:
            del self._claims[rtcp_name]
            self._rtcp_routes.pop(rtcp_name, None)

    def flush(self) -> None:
        """Send the batch of frames queued since the last flush (after each clock tick)."""
        batch = self.send_batch
        if batch.pending:
            batch.flush()
            if batch.dropped != self._drops_counted:
                self.counters.send_drops += batch.dropped - self._drops_counted
                self._drops_counted = batch.dropped

    def receive_rtp(self, now: float, limit: int | None = None) -> int:
        """The receive hub's read of the RTP socket: one batch (at most ``limit`` datagrams),
        each datagram to its call."""
        return self._rtp_in.dispatch(self._rtp_routes, now, self._stray, self._failed, limit)

    def receive_rtcp(self, now: float, limit: int | None = None) -> int:
        return self._rtcp_in.dispatch(self._rtcp_routes, now, self._stray, self._failed, limit)

    def _failed(self, address: tuple, error: Exception) -> None:
        self.handler_errors += 1
        log.error("media handler failed for a datagram from %s:%d", address[0], address[1], exc_info=error)

    def _stray(self, source: bytes) -> None:
        self.strays += 1
        self.counters.packets_stray += 1
        if self.strays == 1:  # the first says from where; the rest are only counted
            try:
                host, port = address_of(source)
            except (OSError, ValueError, IndexError):
                host, port = "?", 0
            log.debug("media datagram from %s:%d dropped on the shared port %d: no call signalled that address",
                      host, port, self.port)

    def on_backlog(self) -> None:
        """The hub left datagrams on a shared socket after a drain: callers outpace us."""
        self.counters.receive_backlogs += 1

    def close(self) -> None:
        self.pair.close()
