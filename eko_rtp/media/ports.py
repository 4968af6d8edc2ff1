"""RTP/RTCP socket pairs from the configured port range.

RFC 3550 §11: RTP on an even port, RTCP on the next (odd) one. Ports are handed out
round-robin so a port just released is not reused at once (late packets of the old
call would land in the new one). A port another process holds is skipped. Sockets are
plain non-blocking stdlib sockets: the frame clock and the receive hub use them
directly, with no per-packet ``await``.
"""

from __future__ import annotations

import errno
import socket

import attrs


class PortsExhausted(Exception):
    """No free RTP port pair in the range: the call is refused (503)."""


@attrs.define(eq=False)
class PortPair:
    port: int
    rtp: socket.socket
    rtcp: socket.socket

    def follow(self, remote_rtp: tuple | None, remote_rtcp: tuple | None) -> bool:
        """A call's own pair takes media from anyone its latch admits: nothing to move."""
        return True

    def flush(self) -> None:
        """Frames leave a call's own socket as they are sent: nothing waits."""

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class RtpPortPool:
    """Opens bound RTP/RTCP socket pairs on ``host`` within ``[low, high]``."""

    def __init__(self, host: str, low: int, high: int):
        if low % 2:
            low += 1
        self.host = host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._ports = list(range(low, high, 2))  # each even port needs port+1 <= high
        if not self._ports:
            raise ValueError(f"RTP port range {low}-{high} holds no pair")
        self._next = 0
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._ports)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def open_pair(self) -> PortPair:
        """Bind the next free pair; raise :class:`PortsExhausted` when none is left."""
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port in self._in_use:
                continue
            pair = self._try_bind(port)
            if pair is not None:
                self._in_use.add(port)
                return pair
        raise PortsExhausted(f"no free RTP port pair in {self._ports[0]}-{self._ports[-1] + 1} on {self.host}")

    def release(self, pair: PortPair) -> None:
        pair.close()
        self._in_use.discard(pair.port)

    def _try_bind(self, port: int) -> PortPair | None:
        opened = []
        try:
            for offset in (0, 1):
                sock = socket.socket(self.family, socket.SOCK_DGRAM)
                opened.append(sock)
                sock.setblocking(False)
                sock.bind((self.host, port + offset))
        except OSError as error:
            for sock in opened:
                sock.close()
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise
        return PortPair(port=port, rtp=opened[0], rtcp=opened[1])
