"""The server's UDP receive queues, seen from outside as an operator sees them with ``ss -uanm``.

Theory of operation: the kernel lists every UDP socket of the network namespace in
``/proc/net/udp`` and ``/proc/net/udp6`` (proc(5); the line is printed by
``udp4_format_sock`` in net/ipv4/udp.c), one line per socket after a header:

    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1786: 0100007F:8DC2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 16258 2 00000000abeb0cf1 0

Fields are separated by runs of spaces. ``local_address`` is the address in hex
(8 digits, 32 for IPv6), a colon, and the port in hex (8DC2 is 36290); the header's
``tx_queue rx_queue`` is one field of two hex numbers joined by a colon. rx_queue is
what ``ss`` prints as Recv-Q: the bytes of memory the socket's waiting datagrams are
charged for, each datagram's whole kernel buffer rather than its payload, so a small
RTP packet counts several times its size. ``drops`` (decimal, the last field) counts
datagrams the socket discarded because its buffer was full, over its whole life.

A queue that stays non-empty from one look to the next, or grows, is a reader that
does not keep up; a drop is a datagram lost to it. The bench looks at the sockets in
the server's RTP port range; when it knows the server's pid, only at the sockets
the server holds (its ``/proc/<pid>/fd`` links read ``socket:[inode]``), because
other processes may bind ports in the same range.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

import attrs

PATHS = ("/proc/net/udp", "/proc/net/udp6")  # udp6 is absent when IPv6 is disabled
_SOCKET_LINK_PREFIX = "socket:["


@attrs.frozen(kw_only=True)
class UdpSocket:
    """One line of /proc/net/udp: a socket's local port, queued bytes, drops and inode."""

    local_port: int
    rx_queue: int
    drops: int
    inode: int


@attrs.frozen(kw_only=True)
class QueueSample:
    """The receive queues of a set of sockets at one look: how many sockets, how many held
    anything, the bytes queued in all and in the fullest one, the drops so far."""

    sockets: int
    non_empty: int
    total_bytes: int
    largest_bytes: int
    drops: int

    def larger(self, other: QueueSample) -> QueueSample:
        """Each figure the larger of the two (the worst seen over several looks)."""
        return QueueSample(sockets=max(self.sockets, other.sockets), non_empty=max(self.non_empty, other.non_empty),
                           total_bytes=max(self.total_bytes, other.total_bytes),
                           largest_bytes=max(self.largest_bytes, other.largest_bytes),
                           drops=max(self.drops, other.drops))


def parse_proc_net_udp(text: str) -> list[UdpSocket]:
    """Every socket listed in the text of /proc/net/udp or /proc/net/udp6.

    Raises ValueError naming the line when one is not in the kernel's format.
    """
    sockets = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue  # the header, or a blank line
        try:
            if len(fields) < 10 or not fields[0].endswith(":"):
                raise ValueError("too few fields")
            _address, port_colon, port = fields[1].rpartition(":")
            _tx_queue, queue_colon, rx_queue = fields[4].partition(":")
            if not port_colon or not queue_colon:
                raise ValueError("no colon in the address or the queues")
            sockets.append(UdpSocket(local_port=int(port, 16), rx_queue=int(rx_queue, 16), inode=int(fields[9]),
                                     drops=int(fields[12]) if len(fields) > 12 else 0))  # drops: Linux 2.6.27 on
        except ValueError as error:
            raise ValueError(f"unrecognised /proc/net/udp line ({error}): {line.strip()[:120]!r}") from None
    return sockets


def summarise(sockets: Iterable[UdpSocket], *, ports: range, inodes: Collection[int] | None = None,
              exclude_ports: Collection[int] = ()) -> QueueSample:
    """The queues of the sockets bound to ``ports`` (less ``exclude_ports``), and held by the
    process whose socket ``inodes`` are given, if they are."""
    count = non_empty = total = largest = drops = 0
    for found in sockets:
        if found.local_port not in ports or found.local_port in exclude_ports:
            continue
        if inodes is not None and found.inode not in inodes:
            continue
        count += 1
        non_empty += found.rx_queue > 0
        total += found.rx_queue
        largest = max(largest, found.rx_queue)
        drops += found.drops
    return QueueSample(sockets=count, non_empty=non_empty, total_bytes=total, largest_bytes=largest, drops=drops)


def socket_inodes(pid: int) -> frozenset[int] | None:
    """Inodes of the sockets ``pid`` holds open; None when the process has gone.

    Raises PermissionError when its descriptors are not ours to read (another user's process).
    """
    inodes = set()
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for entry in entries:
                try:
                    link = os.readlink(entry.path)
                except FileNotFoundError:
                    continue  # closed between the listing and the look
                if link.startswith(_SOCKET_LINK_PREFIX) and link.endswith("]"):
                    inodes.add(int(link[len(_SOCKET_LINK_PREFIX):-1]))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return frozenset(inodes)


def sample(ports: range, *, inodes: Collection[int] | None = None, exclude_ports: Collection[int] = (),
           paths: Iterable[str] = PATHS) -> QueueSample:
    """Look now at the receive queues of the sockets bound to ``ports`` (and among ``inodes``,
    a process's sockets from :func:`socket_inodes`, when given)."""
    sockets: list[UdpSocket] = []
    for path in paths:
        try:
            with open(path) as table:
                sockets += parse_proc_net_udp(table.read())
        except FileNotFoundError:
            continue
    return summarise(sockets, ports=ports, inodes=inodes, exclude_ports=exclude_ports)
