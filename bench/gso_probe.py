"""What UDP GSO would save where every frame of a tick goes to one destination.

    python bench/gso_probe.py batched|gso [FRAMES] [TICKS]

Sends FRAMES datagrams of 172 octets every 20 ms for TICKS ticks from one socket to
ONE receiving socket, drained by a child process on another CPU: either one
``sendmmsg`` per tick (``SendBatch``, eko_rtp/media/mmsg.py), or UDP generic
segmentation offload: one ``sendmsg`` of up to 64 KiB per call carrying a
``UDP_SEGMENT`` control message of 172, which the kernel cuts into datagrams of 172
(Linux 4.18+). Prints the CPU (user + system) of the sending process per datagram,
and how many datagrams the child received. Pin it (taskset -c 0) and alternate the
modes; the figures are in docs/BENCHMARKS.md.

GSO needs every segment to go to the same address and port. A call's frames are 20 ms
apart, so one tick has one frame per destination: GSO could only help a media
gateway that takes every call's RTP on one port, which RTP with a port pair per
call (what trunks and our SDP answers do) never is. This measures the ceiling.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time

from eko_rtp.media.mmsg import SendBatch, socket_address

FRAME = 172
SOL_UDP = 17
UDP_SEGMENT = 103  # <linux/udp.h>
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS: one GSO send carries at most 64 datagrams here


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drain(sock: socket.socket, seconds: float, report) -> None:
    sock.settimeout(0.5)
    received = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.recv(4096)
        except TimeoutError:
            continue
        received += 1
    report.write(f"{received}\n".encode())
    report.close()


def main() -> None:
    mode = sys.argv[1]
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    ticks = int(sys.argv[3]) if len(sys.argv) > 3 else 250
    if mode not in ("batched", "gso"):
        raise SystemExit("usage: gso_probe.py batched|gso [FRAMES] [TICKS]")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.sched_setaffinity(0, {1})
        drain(receiver, ticks * 0.02 + 1.5, os.fdopen(write_end, "wb"))
        os._exit(0)
    os.close(write_end)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    destination = receiver.getsockname()
    batch = SendBatch(sender, slots=256)
    name = socket_address(destination)
    payload = bytes(range(256)) * (FRAME * MAX_SEGMENTS // 256 + 1)
    segment = [(SOL_UDP, UDP_SEGMENT, FRAME.to_bytes(2, sys.byteorder))]
    sent = 0
    started = cpu_seconds()
    next_tick = time.monotonic()
    for _ in range(ticks):
        if mode == "batched":
            for _ in range(frames):
                batch.add((payload[:FRAME],), name)  # a full batch of 256 leaves by itself
            batch.flush()
            sent = batch.sent
        else:
            left = frames
            while left:
                count = min(left, MAX_SEGMENTS)
                sender.sendmsg([payload[:FRAME * count]], segment, 0, destination)
                sent += count
                left -= count
        next_tick += 0.02
        time.sleep(max(0.0, next_tick - time.monotonic()))
    used = cpu_seconds() - started
    received = int(os.fdopen(read_end, "rb").read() or 0)
    os.waitpid(child, 0)
    print(f"{mode}: {frames} frames a tick to one destination, {ticks} ticks: {used / sent * 1e6:.2f} us of CPU"
          f" a datagram sent; {received} of {sent} received")


if __name__ == "__main__":
    main()
