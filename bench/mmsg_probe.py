"""What a batched system call saves per RTP packet on this machine, without the server.

    python bench/mmsg_probe.py send|receive per-call|batched [CALLS] [TICKS]

send: CALLS frames of 172 octets every 20 ms for TICKS ticks, to CALLS receiving
sockets drained by a child process on another CPU; either one ``sendmsg`` per frame
from CALLS sockets (per-call) or one ``SendBatch.flush`` per tick from one socket
(batched, eko_rtp/media/mmsg.py). receive: a child sends the same load; we read it
with epoll and one ``recvmsg`` (kernel timestamp) per datagram from CALLS sockets, or
with ``ReceiveBatch`` from one. Prints the CPU (user + system, getrusage) per packet
of the measuring process. Pin it (taskset -c 0) and alternate the modes: the figures
are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import struct
import sys
import time

from eko_rtp.media.mmsg import ReceiveBatch, SendBatch, socket_address

FRAME = 172
HEADER = struct.Struct("!BBHII")


def sockets(count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        opened.append(sock)
    return opened


def paced(ticks: int, tick) -> None:
    due = time.perf_counter()
    for _ in range(ticks):
        tick()
        due += 0.020
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    others = [cpu for cpu in cpus if cpu not in os.sched_getaffinity(0)] or cpus
    os.sched_setaffinity(0, {others[-1]})


def probe_send(mode: str, calls: int, ticks: int) -> float:
    receivers = sockets(calls)
    child = os.fork()
    if child == 0:  # drain every receiver until the load has passed
        other_cpu()
        poller = select.epoll()
        by_fd = {sock.fileno(): sock for sock in receivers}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        end = time.monotonic() + ticks * 0.020 + 2.0
        while time.monotonic() < end:
            for fd, _ in poller.poll(0.05):
                try:
                    while True:
                        by_fd[fd].recv(2048)
                except BlockingIOError:
                    pass
        os._exit(0)
    header = bytearray(12)
    payload = b"\xff" * (FRAME - 12)
    if mode == "per-call":
        pairs = [(sock.sendmsg, receiver.getsockname()) for sock, receiver in zip(sockets(calls), receivers)]

        def tick():
            for send, address in pairs:
                HEADER.pack_into(header, 0, 0x80, 0, 1, 2, 3)
                send((header, payload), (), 0, address)
    else:
        sender = sockets(1)[0]
        batch = SendBatch(sender, slots=256)
        names = [socket_address(receiver.getsockname()) for receiver in receivers]

        def tick():
            for name in names:
                HEADER.pack_into(header, 0, 0x80, 0, 1, 2, 3)
                batch.add((header, payload), name)
            batch.flush()
    time.sleep(0.2)
    before = cpu_seconds()
    paced(ticks, tick)
    used = cpu_seconds() - before
    os.waitpid(child, 0)
    return used / (calls * ticks)


def probe_receive(mode: str, calls: int, ticks: int) -> float:
    targets = sockets(calls if mode == "per-call" else 1)
    child = os.fork()
    if child == 0:
        other_cpu()
        senders = sockets(calls)
        addresses = [targets[index % len(targets)].getsockname() for index in range(calls)]
        packet = b"\x80" + bytes(FRAME - 1)
        time.sleep(0.3)
        paced(ticks, lambda: [sock.sendto(packet, address) for sock, address in zip(senders, addresses)])
        os._exit(0)
    received = 0
    end = time.monotonic() + ticks * 0.020 + 1.0
    before = cpu_seconds()
    if mode == "per-call":
        poller = select.epoll()
        by_fd = {}
        for sock in targets:
            sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS, as the hub reads it
            poller.register(sock.fileno(), select.EPOLLIN)
            by_fd[sock.fileno()] = sock
        while time.monotonic() < end:
            for fd, _ in poller.poll(0.05):
                try:
                    by_fd[fd].recvmsg(2048, 64)
                    received += 1
                except BlockingIOError:
                    pass
            time.sleep(0.010)
    else:
        target = targets[0]
        target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        batch = ReceiveBatch(target, slots=32)
        while time.monotonic() < end:
            select.select([target], [], [], 0.05)
            while True:
                count = batch.receive()
                if not count:
                    break
                for index in range(count):
                    batch.datagram(index), batch.source(index), batch.arrival(index)
                received += count
            time.sleep(0.010)
    used = cpu_seconds() - before
    os.waitpid(child, 0)
    return used / max(1, received)


def main() -> None:
    what, mode = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    ticks = int(sys.argv[4]) if len(sys.argv) > 4 else 250
    probe = probe_send if what == "send" else probe_receive
    print(f"{what} {mode} {calls} calls: {probe(mode, calls, ticks) * 1e6:.2f} us of CPU a packet")


if __name__ == "__main__":
    main()
