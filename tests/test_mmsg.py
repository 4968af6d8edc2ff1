"""Batched datagram I/O (eko_rtp/media/mmsg.py) on real loopback sockets: what one
sendmmsg sends arrives whole, in order, at each datagram's own destination; one
recvmmsg reads datagrams with the sender's address (byte for byte as socket_address
builds it) and the kernel's arrival time."""

from __future__ import annotations

import select
import socket
import time

import pytest

from eko_rtp.media.mmsg import ReceiveBatch, SendBatch, address_of, available, socket_address

pytestmark = pytest.mark.skipif(available() is not None, reason="no sendmmsg/recvmmsg in this C library")


def udp(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2.0)[0], "nothing arrived within 2 s"


def receive_all(sock: socket.socket, count: int) -> list[tuple[bytes, tuple]]:
    got = []
    deadline = time.monotonic() + 2.0
    while len(got) < count and time.monotonic() < deadline:
        select.select([sock], [], [], 0.1)
        try:
            data, address = sock.recvfrom(2048)
        except BlockingIOError:
            continue
        got.append((data, address[:2]))
    return got


def test_one_flush_sends_each_datagram_whole_to_its_own_destination_in_order():
    sender = udp()
    receivers = [udp() for _ in range(3)]
    batch = SendBatch(sender, slots=16)
    for index in range(9):
        batch.add((b"header-%d|" % index, b"payload" * index), socket_address(receivers[index % 3].getsockname()))
    assert batch.pending == 9
    assert batch.flush() == 9
    assert (batch.pending, batch.sent, batch.dropped, batch.errors) == (0, 9, 0, 0)
    for offset, receiver in enumerate(receivers):
        got = receive_all(receiver, 3)
        assert got == [(b"header-%d|" % index + b"payload" * index, sender.getsockname())
                       for index in range(offset, 9, 3)]


def test_a_full_batch_is_flushed_by_add_and_nothing_is_lost():
    sender, receiver = udp(), udp()
    batch = SendBatch(sender, slots=4)
    name = socket_address(receiver.getsockname())
    for index in range(10):
        batch.add((bytes([index]) * 3,), name)
    assert batch.pending == 2  # two full batches of 4 already left
    batch.flush()
    assert [data for data, _ in receive_all(receiver, 10)] == [bytes([index]) * 3 for index in range(10)]
    assert batch.sent == 10


def test_a_datagram_larger_than_a_slot_is_refused_and_the_batch_is_unchanged():
    sender, receiver = udp(), udp()
    batch = SendBatch(sender, slots=2, slot_size=64)
    with pytest.raises(ValueError, match="more than 64 octets"):
        batch.add((b"x" * 40, b"y" * 40), socket_address(receiver.getsockname()))
    assert batch.pending == 0
    assert batch.flush() == 0


def test_flush_of_nothing_makes_no_system_call_and_sends_nothing():
    batch = SendBatch(udp(), slots=2)
    assert batch.flush() == 0
    assert batch.sent == 0


def test_receive_gives_data_sources_and_kernel_arrival_times():
    receiver = udp()
    senders = [udp() for _ in range(3)]
    batch = ReceiveBatch(receiver, slots=8)
    before = time.time()
    for index, sender in enumerate(senders):
        sender.sendto(b"datagram %d" % index, receiver.getsockname())
    wait_readable(receiver)
    time.sleep(0.01)  # all three queued
    after = time.time()
    count = batch.receive()
    assert count == 3
    assert [batch.datagram(index) for index in range(count)] == [b"datagram %d" % index for index in range(3)]
    assert [batch.source(index) for index in range(count)] == [socket_address(s.getsockname()) for s in senders]
    assert [address_of(batch.source(index)) for index in range(count)] == [s.getsockname() for s in senders]
    arrivals = [batch.arrival(index) for index in range(count)]
    assert all(before - 0.001 <= arrival <= after + 0.001 for arrival in arrivals), (before, arrivals, after)
    assert arrivals == sorted(arrivals)
    assert batch.receive() == 0  # empty now: no block, no error
    assert batch.errors == 0


def test_receive_takes_at_most_a_batch_and_the_rest_waits_for_the_next():
    receiver, sender = udp(), udp()
    batch = ReceiveBatch(receiver, slots=4)
    for index in range(6):
        sender.sendto(bytes([index]), receiver.getsockname())
    wait_readable(receiver)
    time.sleep(0.01)
    assert batch.receive() == 4
    assert [batch.datagram(index) for index in range(4)] == [bytes([index]) for index in range(4)]
    assert batch.receive() == 2
    assert [batch.datagram(index) for index in range(2)] == [b"\x04", b"\x05"]
    # The names the kernel wrote last time are read again whole: lengths were reset.
    assert [batch.source(index) for index in range(2)] == [socket_address(sender.getsockname())] * 2


def test_a_datagram_longer_than_its_slot_is_cut_to_the_slot():
    receiver, sender = udp(), udp()
    batch = ReceiveBatch(receiver, slots=2, slot_size=16)
    sender.sendto(b"0123456789abcdefTAIL", receiver.getsockname())
    wait_readable(receiver)
    assert batch.receive() == 1
    assert batch.datagram(0) == b"0123456789abcdef"


def test_ipv6_loopback_round_trip():
    try:
        receiver = udp("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    sender = udp("::1")
    batch = SendBatch(sender, slots=4)
    batch.add((b"v6",), socket_address(receiver.getsockname()[:2]))
    assert batch.flush() == 1
    incoming = ReceiveBatch(receiver, slots=4)
    wait_readable(receiver)
    assert incoming.receive() == 1
    assert incoming.datagram(0) == b"v6"
    assert incoming.source(0) == socket_address(sender.getsockname()[:2])
    assert address_of(incoming.source(0)) == sender.getsockname()[:2]


def test_socket_address_matches_what_the_kernel_writes_for_ipv4():
    assert socket_address(("127.0.0.1", 0x1234)) == (socket.AF_INET.to_bytes(2, "little") + b"\x12\x34"
                                                      + bytes([127, 0, 0, 1]) + bytes(8))
    assert address_of(socket_address(("10.1.2.3", 40000))) == ("10.1.2.3", 40000)
