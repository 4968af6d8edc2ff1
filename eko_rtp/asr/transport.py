"""The byte stream under a recognizer's websocket: a TCP socket, TLS or not, written without a task switch.

Theory of operation: :func:`open_transport` connects with trio (name resolution off
the event loop, happy eyeballs) and then takes the socket over from trio's stream,
so that a write is a plain non-blocking ``send`` from the calling task:
:meth:`Transport.write` hands the kernel what it takes at once and keeps the rest
in a backlog, which :meth:`Transport.drain` writes out as the socket becomes
writable. A stream of 100 ms audio messages therefore costs one ``send`` system call
a message and no scheduling round trip, where trio's ``SocketStream.send_all`` (a
conflict detector, a checkpoint after every send) and a websocket library's lock
and event objects on top cost several times the framing itself. The caller bounds
how long a backlog may wait (a stalled peer) and how large it may grow.

TLS (``wss``) is the standard library's :class:`ssl.SSLObject` over two memory
BIOs, fed from and to the same socket: the handshake by :meth:`Transport.start_tls`,
then every write encrypted in the caller's task, every read decrypted as it comes.

:meth:`Transport.receive` waits for the socket to be readable and returns what
arrived (``b""`` at the end of the stream: TCP FIN, or the peer's TLS close_notify).
One task may receive while others write; :meth:`drain` is for one task at a time
(the caller holds a lock).
"""

from __future__ import annotations

import socket
import ssl

import trio

__all__ = ["RECEIVE_SIZE", "Transport", "open_transport"]

RECEIVE_SIZE = 65536


class Transport:
    """A connected non-blocking socket, with TLS over it once :meth:`start_tls` is done."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock
        self._backlog = bytearray()
        self._tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None  # what the peer sent, for the TLS object to decrypt
        self._tls_out: ssl.MemoryBIO | None = None  # what the TLS object wrote, for the socket
        self._ended = False  # the peer's end of stream was read
        self.closed = False

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return len(self._backlog)

    def write(self, data: bytes) -> None:
        """Send ``data`` now as far as the kernel takes it; keep the rest for :meth:`drain`.

        Raises :class:`OSError` if the connection is gone (reset, closed).
        """
        if self._tls is not None:
            self._tls.write(data)
            data = self._tls_out.read()
        self.write_raw(data)

    async def drain(self) -> None:
        """Wait until the backlog is written out."""
        while self._backlog:
            await trio.lowlevel.wait_writable(self._socket)
            try:
                sent = self._socket.send(self._backlog)
            except BlockingIOError:
                continue
            del self._backlog[:sent]

    async def _receive_raw(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._socket)
            try:
                return self._socket.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue  # a spurious wake-up

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` once its stream has ended."""
        if self._tls is None:
            return await self._receive_raw()
        while True:
            try:
                data = self._tls.read(RECEIVE_SIZE)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # close_notify
                return b""
            else:
                self._flush_tls()  # a read may owe the peer an answer (a TLS 1.3 key update)
                if data:
                    return data
            if self._ended:
                return b""
            raw = await self._receive_raw()
            if raw:
                self._tls_in.write(raw)
            else:
                self._ended = True
                self._tls_in.write_eof()

    def _flush_tls(self) -> None:
        pending = self._tls_out.read()
        if pending:
            self.write_raw(pending)

    def write_raw(self, data: bytes) -> None:
        """``data`` on the socket as is, below TLS."""
        if self._backlog:
            self._backlog += data
            return
        try:
            sent = self._socket.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._backlog += memoryview(data)[sent:]

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """The TLS handshake; :class:`ssl.SSLError` or :class:`OSError` if it fails."""
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_side=False,
                                     server_hostname=server_hostname)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                await self.drain()
                raw = await self._receive_raw()
                if raw:
                    self._tls_in.write(raw)
                else:
                    self._tls_in.write_eof()
        self._flush_tls()
        await self.drain()

    def close(self) -> None:
        """Close the socket at once (no TLS close_notify: the websocket's close said goodbye)."""
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self._socket)
            self._socket.close()


async def open_transport(host: str, port: int) -> Transport:
    """A TCP connection to ``host``:``port`` as a :class:`Transport`; :class:`OSError` if none."""
    stream = await trio.open_tcp_stream(host, port)  # sets TCP_NODELAY
    trio_socket = stream.socket
    return Transport(socket.socket(trio_socket.family, trio_socket.type, trio_socket.proto,
                                   fileno=trio_socket.detach()))
