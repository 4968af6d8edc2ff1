"""Batched datagram I/O: ``sendmmsg(2)`` and ``recvmmsg(2)`` on one UDP socket.

Why: a call's frame is one ``sendmsg`` and its caller's packet one ``recvfrom``, so
1000 full-duplex calls make 100 000 system calls a second, and on this kind of guest
the kernel's entry, exit and per-call socket work is most of a packet's cost. With
every call on one socket (media/shared_port.py), the frames of one clock tick leave
in one ``sendmmsg`` and the datagrams waiting on the socket come in by the batch,
each with its source address and kernel arrival time (``SO_TIMESTAMPNS``).

The calls go through :mod:`ctypes` on the C library (Linux, glibc or musl), with
every buffer allocated once: a batch has ``slots`` message headers, each pointing at
its own data slot, address slot and (receiving) control slot, so a datagram costs a
copy into its slot and two small writes into its header, and nothing is allocated
per packet. :func:`available` says whether this C library has the calls; the server
refuses ``media.rtp_socket = "shared"`` at start when it does not.

The same classes exist compiled (media/_batch.c, built by ``pip install`` when a C
compiler and Python's headers are there, else skipped): the Python around each
datagram (struct writes into the slots, reading sources and times back, the routing
loop) cost as much again as the kernel's share, so :data:`SendBatch` and
:data:`ReceiveBatch` are the compiled ones when they were built and these otherwise
(:data:`IMPLEMENTATION` says which; the server logs it at start).

This module moves bytes and addresses only: which call a datagram belongs to is
media/shared_port.py's business.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct

MSG_DONTWAIT = 0x40  # <bits/socket.h>
SO_TIMESTAMPNS = 35  # <asm-generic/socket.h> (the stdlib does not export it)
_NAME_SIZE = 28  # sizeof(struct sockaddr_in6), the larger of the two families
_CONTROL_SIZE = 32  # CMSG_SPACE(sizeof(struct timespec)) on 64-bit Linux
_CMSG_HEADER = 16  # CMSG_LEN(0): the cmsghdr before the timespec


class BatchUnavailable(Exception):
    """This C library has no sendmmsg/recvmmsg (not Linux): batched I/O cannot be used."""


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("header", _Msghdr), ("length", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_NAMELEN_AT = _Msghdr.namelen.offset
_CONTROLLEN_AT = _Msghdr.controllen.offset
_LENGTH_AT = _Mmsghdr.length.offset
_IOV_LENGTH_AT = _Iovec.length.offset
_UINT32 = struct.Struct("=I")
_SIZE_T = struct.Struct("@N")
_TIMESPEC = struct.Struct("=qq")
_CMSG_LEVEL_TYPE = struct.Struct("=ii")

_libc_functions = None


def _functions():
    """``(sendmmsg, recvmmsg)`` of the C library, loaded once; BatchUnavailable without them."""
    global _libc_functions
    if _libc_functions is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            sendmmsg, recvmmsg = libc.sendmmsg, libc.recvmmsg
        except (OSError, AttributeError, TypeError) as error:
            raise BatchUnavailable(f"the C library ({name or 'not found'}) has no sendmmsg/recvmmsg: {error}") from None
        sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        sendmmsg.restype = ctypes.c_int
        recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        recvmmsg.restype = ctypes.c_int
        _libc_functions = (sendmmsg, recvmmsg)
    return _libc_functions


def available() -> str | None:
    """None when batched I/O works here; else why not (for the config error)."""
    try:
        _functions()
    except BatchUnavailable as error:
        return str(error)
    return None


def socket_address(address: tuple) -> bytes:
    """The ``struct sockaddr_in``/``sockaddr_in6`` of ``(host, port)``, as the kernel writes it
    into a received message's name (so the two compare byte for byte). Numeric hosts only."""
    host, port = address[0], address[1]
    if ":" in host:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(
            socket.AF_INET6, host) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


def address_of(name: bytes) -> tuple:
    """``(host, port)`` back from a socket address (for log lines and handlers)."""
    family = struct.unpack_from("=H", name)[0]
    port = struct.unpack_from("!H", name, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, name[8:24]), port
    return socket.inet_ntoa(name[4:8]), port


class _Slots:
    """``count`` message headers, each with a data slot, an address slot and a control slot."""

    def __init__(self, count: int, data_size: int, control_size: int):
        if count < 1:
            raise ValueError(f"a batch needs at least one slot, not {count!r}")
        self.count = count
        self.data_size = data_size
        self.data = ctypes.create_string_buffer(count * data_size)
        self.names = ctypes.create_string_buffer(count * _NAME_SIZE)
        self.control = ctypes.create_string_buffer(max(1, count * control_size)) if control_size else None
        self.iovecs = (_Iovec * count)()
        self.messages = (_Mmsghdr * count)()
        data, names = ctypes.addressof(self.data), ctypes.addressof(self.names)
        for index in range(count):
            iovec = self.iovecs[index]
            iovec.base = data + index * data_size
            iovec.length = data_size
            header = self.messages[index].header
            header.name = names + index * _NAME_SIZE
            header.namelen = _NAME_SIZE
            header.iov = ctypes.addressof(iovec)
            header.iovlen = 1
            if self.control is not None:
                header.control = ctypes.addressof(self.control) + index * control_size
                header.controllen = control_size
        # Views for the per-packet reads and writes (struct and slices beat ctypes attributes).
        self.data_view = memoryview(self.data).cast("B")
        self.name_view = memoryview(self.names).cast("B")
        self.message_view = memoryview(self.messages).cast("B")
        self.iovec_view = memoryview(self.iovecs).cast("B")
        self.control_view = memoryview(self.control).cast("B") if self.control is not None else None
        self.address = ctypes.addressof(self.messages)


class PythonSendBatch:
    """Datagrams queued for one ``sendmmsg`` on ``sock``: :meth:`add` them, then :meth:`flush`.

    A datagram longer than ``slot_size`` is refused by :meth:`add` (ValueError): RTP
    frames here are far below it. A full batch is flushed by :meth:`add` itself.
    """

    def __init__(self, sock: socket.socket, *, slots: int = 256, slot_size: int = 512):
        self._sendmmsg = _functions()[0]
        self._sock = sock
        self._slots = _Slots(slots, slot_size, 0)
        self.pending = 0
        self.sent = 0
        self.dropped = 0  # the socket's buffer was full (EAGAIN): the datagram is lost
        self.errors = 0  # the kernel refused one datagram (e.g. an unreachable destination)
        self.last_error: int | None = None

    def add(self, parts, name: bytes) -> None:
        """Queue the datagram made of the buffers ``parts`` for the socket address ``name``."""
        slots = self._slots
        if self.pending == slots.count:
            self.flush()
        index = self.pending
        size = slots.data_size
        data = slots.data_view
        offset = start = index * size
        for part in parts:
            end = offset + len(part)
            if end > start + size:
                raise ValueError(f"a datagram of more than {size} octets does not fit a batch slot")
            data[offset:end] = part
            offset = end
        _SIZE_T.pack_into(slots.iovec_view, index * ctypes.sizeof(_Iovec) + _IOV_LENGTH_AT, offset - start)
        name_at = index * _NAME_SIZE
        slots.name_view[name_at:name_at + len(name)] = name
        _UINT32.pack_into(slots.message_view, index * _MMSG_SIZE + _NAMELEN_AT, len(name))
        self.pending = index + 1

    def flush(self) -> int:
        """Send every queued datagram (one system call per ``slots``); how many left.

        A full socket buffer drops the rest of the batch (counted in ``dropped``: a
        frame late is worth nothing); a datagram the kernel refuses is skipped and
        counted in ``errors``, and the rest still go.
        """
        count = self.pending
        if not count:
            return 0
        self.pending = 0
        fd = self._sock.fileno()
        base = self._slots.address
        errors_before = self.errors
        done = 0
        for _ in range(count):  # bounded: each pass sends or skips at least one datagram
            if done >= count:
                break
            result = self._sendmmsg(fd, base + done * _MMSG_SIZE, count - done, 0)
            if result > 0:
                done += result
                continue
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in (errno.EAGAIN, errno.ENOBUFS):
                self.dropped += count - done
                break
            self.errors += 1  # the first datagram of the rest was refused: skip it
            self.last_error = code
            done += 1
        sent = done - (self.errors - errors_before)
        self.sent += sent
        return sent


class PythonLegSender:
    """What a MediaStream calls on its RTP socket (``sendmsg``, ``sendto``, ``fileno``),
    queueing into a shared :class:`PythonSendBatch` instead; the destination's socket
    address is built when the address object changes, not per datagram."""

    __slots__ = ("_batch", "_sock", "_address", "_name")

    def __init__(self, batch: PythonSendBatch, sock: socket.socket):
        self._batch = batch
        self._sock = sock
        self._address: tuple | None = None
        self._name = b""

    def _name_of(self, address: tuple) -> bytes:
        if address is not self._address:
            self._name = socket_address(address)
            self._address = address
        return self._name

    def sendmsg(self, buffers, _ancillary, _flags, address) -> None:
        self._batch.add(buffers, self._name_of(address))

    def sendto(self, data, address) -> None:
        self._batch.add((data,), self._name_of(address))

    def fileno(self) -> int:
        return self._sock.fileno()


class PythonReceiveBatch:
    """Up to ``slots`` datagrams from ``sock`` in one ``recvmmsg``, with sources and arrival times.

    After :meth:`receive` returned ``n``, :meth:`datagram`, :meth:`source` and
    :meth:`arrival` read entry ``0 <= i < n`` until the next :meth:`receive`.
    """

    def __init__(self, sock: socket.socket, *, slots: int = 64, slot_size: int = 2048):
        self._recvmmsg = _functions()[1]
        self._sock = sock
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._slots = _Slots(slots, slot_size, _CONTROL_SIZE)
        self.errors = 0
        self.last_error: int | None = None
        self._filled = 0  # entries the kernel wrote lengths into last time
        self._dispatching = False

    def receive(self, limit: int | None = None) -> int:
        """Take what waits on the socket, up to ``limit`` datagrams and a batch, without
        blocking; how many came."""
        if limit is not None and limit < 0:
            raise ValueError(f"a limit of {limit} datagrams")
        if self._dispatching:
            raise RuntimeError("a handler may not read the batch it is dispatched from")
        slots = self._slots
        view = slots.message_view
        for index in range(self._filled):  # the kernel wrote the actual lengths: room again
            at = index * _MMSG_SIZE
            _UINT32.pack_into(view, at + _NAMELEN_AT, _NAME_SIZE)
            _SIZE_T.pack_into(view, at + _CONTROLLEN_AT, _CONTROL_SIZE)
        self._filled = 0
        wanted = slots.count if limit is None else min(limit, slots.count)
        if not wanted:
            return 0
        result = self._recvmmsg(self._sock.fileno(), slots.address, wanted, MSG_DONTWAIT, None)
        if result < 0:
            code = ctypes.get_errno()
            if code not in (errno.EAGAIN, errno.EINTR):
                # e.g. ECONNREFUSED: an ICMP error for an earlier send, reported once.
                self.errors += 1
                self.last_error = code
            return 0
        self._filled = result
        return result

    def dispatch(self, routes: dict, now: float, stray, failed, limit: int | None = None) -> int:
        """Receive a batch (at most ``limit`` datagrams) and hand each datagram to its route:
        ``routes[source]`` is ``(handler, address)`` and ``handler(data, address, now, arrival)``
        runs; a source with no route goes to ``stray(source)``, and an ``Exception`` from a
        handler to ``failed(address, error)`` before the next datagram. How many came."""
        count = self.receive(limit)
        self._dispatching = True
        try:
            for index in range(count):
                source = self.source(index)
                route = routes.get(source)
                if route is None:
                    stray(source)
                    continue
                handler, address = route
                try:
                    handler(self.datagram(index), address, now, self.arrival(index))
                except Exception as error:
                    failed(address, error)
        finally:
            self._dispatching = False
        return count

    def _check(self, index: int) -> None:
        if not 0 <= index < self._filled:
            raise IndexError(f"entry {index} of a batch that holds {self._filled}")

    def datagram(self, index: int) -> bytes:
        self._check(index)
        slots = self._slots
        length = _UINT32.unpack_from(slots.message_view, index * _MMSG_SIZE + _LENGTH_AT)[0]
        start = index * slots.data_size
        return bytes(slots.data_view[start:start + min(length, slots.data_size)])

    def source(self, index: int) -> bytes:
        """The sender's socket address, byte for byte as :func:`socket_address` builds it."""
        self._check(index)
        slots = self._slots
        at = index * _MMSG_SIZE + _NAMELEN_AT
        length = min(_UINT32.unpack_from(slots.message_view, at)[0], _NAME_SIZE)
        start = index * _NAME_SIZE
        return bytes(slots.name_view[start:start + length])

    def arrival(self, index: int) -> float | None:
        """When the datagram reached the socket (wall clock, ``SO_TIMESTAMPNS``), or None."""
        self._check(index)
        slots = self._slots
        at = index * _MMSG_SIZE + _CONTROLLEN_AT
        length = _SIZE_T.unpack_from(slots.message_view, at)[0]
        if length < _CMSG_HEADER + _TIMESPEC.size:
            return None
        start = index * _CONTROL_SIZE
        level, kind = _CMSG_LEVEL_TYPE.unpack_from(slots.control_view, start + 8)
        if level != socket.SOL_SOCKET or kind != SO_TIMESTAMPNS:
            return None
        seconds, nanoseconds = _TIMESPEC.unpack_from(slots.control_view, start + _CMSG_HEADER)
        return seconds + nanoseconds * 1e-9


# The compiled twin (media/_batch.c) when it was built, else the classes above; both
# pass tests/test_mmsg.py. EKO_RTP_PURE_PYTHON=1 takes the Python ones (to compare).
SendBatch: type = PythonSendBatch
ReceiveBatch: type = PythonReceiveBatch
LegSender: type = PythonLegSender
IMPLEMENTATION = "python"
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.media._batch import LegSender, ReceiveBatch, SendBatch  # noqa: F811
    except ImportError:
        pass
    else:
        IMPLEMENTATION = "compiled"
