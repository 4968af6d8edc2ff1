"""Batched datagram I/O (eko_rtp/media/mmsg.py) on real loopback sockets: what one
sendmmsg sends arrives whole, in order, at each datagram's own destination; one
recvmmsg reads datagrams with the sender's address (byte for byte as socket_address
builds it) and the kernel's arrival time. Every test runs against both twins: the
Python classes and the compiled ones (media/_batch.c), which must behave alike."""

from __future__ import annotations

import select
import socket
import time

import pytest

from eko_rtp.media import mmsg
from eko_rtp.media.mmsg import (PythonLegSender, PythonReceiveBatch, PythonSendBatch, address_of, available,
                                socket_address)

pytestmark = pytest.mark.skipif(available() is not None, reason="no sendmmsg/recvmmsg in this C library")

try:
    from eko_rtp.media import _batch as compiled
except ImportError:  # not built here (no C compiler or no Python headers at install)
    compiled = None


class Twin:
    def __init__(self, send, receive, leg):
        self.SendBatch = send
        self.ReceiveBatch = receive
        self.LegSender = leg


@pytest.fixture(params=["python", "compiled"])
def twin(request) -> Twin:
    if request.param == "python":
        return Twin(PythonSendBatch, PythonReceiveBatch, PythonLegSender)
    if compiled is None:
        pytest.skip("the compiled batch module was not built (pip install needs a C compiler and Python.h)")
    return Twin(compiled.SendBatch, compiled.ReceiveBatch, compiled.LegSender)


def udp(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def ipv6_pair() -> tuple[socket.socket, socket.socket]:
    try:
        return udp("::1"), udp("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")


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


def test_one_flush_sends_each_datagram_whole_to_its_own_destination_in_order(twin):
    sender = udp()
    receivers = [udp() for _ in range(3)]
    batch = twin.SendBatch(sender, slots=16)
    for index in range(9):
        batch.add((b"header-%d|" % index, b"payload" * index), socket_address(receivers[index % 3].getsockname()))
    assert batch.pending == 9
    assert batch.flush() == 9
    assert (batch.pending, batch.sent, batch.dropped, batch.errors) == (0, 9, 0, 0)
    for offset, receiver in enumerate(receivers):
        got = receive_all(receiver, 3)
        assert got == [(b"header-%d|" % index + b"payload" * index, sender.getsockname())
                       for index in range(offset, 9, 3)]


def test_a_full_batch_is_flushed_by_add_and_nothing_is_lost(twin):
    sender, receiver = udp(), udp()
    batch = twin.SendBatch(sender, slots=4)
    name = socket_address(receiver.getsockname())
    for index in range(10):
        batch.add((bytes([index]) * 3,), name)
    assert batch.pending == 2  # two full batches of 4 already left
    batch.flush()
    assert [data for data, _ in receive_all(receiver, 10)] == [bytes([index]) * 3 for index in range(10)]
    assert batch.sent == 10


def test_a_datagram_larger_than_a_slot_is_refused_and_the_batch_is_unchanged(twin):
    sender, receiver = udp(), udp()
    batch = twin.SendBatch(sender, slots=2, slot_size=64)
    with pytest.raises(ValueError, match="more than 64 octets"):
        batch.add((b"x" * 40, b"y" * 40), socket_address(receiver.getsockname()))
    assert batch.pending == 0
    assert batch.flush() == 0


def test_flush_of_nothing_makes_no_system_call_and_sends_nothing(twin):
    batch = twin.SendBatch(udp(), slots=2)
    assert batch.flush() == 0
    assert batch.sent == 0


def test_receive_gives_data_sources_and_kernel_arrival_times(twin):
    receiver = udp()
    senders = [udp() for _ in range(3)]
    batch = twin.ReceiveBatch(receiver, slots=8)
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


def test_receive_takes_at_most_a_batch_and_the_rest_waits_for_the_next(twin):
    receiver, sender = udp(), udp()
    batch = twin.ReceiveBatch(receiver, slots=4)
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


def test_a_datagram_longer_than_its_slot_is_cut_to_the_slot(twin):
    receiver, sender = udp(), udp()
    batch = twin.ReceiveBatch(receiver, slots=2, slot_size=16)
    sender.sendto(b"0123456789abcdefTAIL", receiver.getsockname())
    wait_readable(receiver)
    assert batch.receive() == 1
    assert batch.datagram(0) == b"0123456789abcdef"


def test_ipv6_loopback_round_trip(twin):
    receiver, sender = ipv6_pair()
    batch = twin.SendBatch(sender, slots=4)
    batch.add((b"v6",), socket_address(receiver.getsockname()[:2]))
    assert batch.flush() == 1
    incoming = twin.ReceiveBatch(receiver, slots=4)
    wait_readable(receiver)
    assert incoming.receive() == 1
    assert incoming.datagram(0) == b"v6"
    assert incoming.source(0) == socket_address(sender.getsockname()[:2])
    assert address_of(incoming.source(0)) == sender.getsockname()[:2]


def test_socket_address_matches_what_the_kernel_writes_for_ipv4():
    assert socket_address(("127.0.0.1", 0x1234)) == (socket.AF_INET.to_bytes(2, "little") + b"\x12\x34"
                                                      + bytes([127, 0, 0, 1]) + bytes(8))
    assert address_of(socket_address(("10.1.2.3", 40000))) == ("10.1.2.3", 40000)


def queued(receiver: socket.socket, senders: list[socket.socket], payloads: list[bytes]) -> None:
    """Send payloads[i] from senders[i] to receiver and wait until all of them wait there."""
    for sender, payload in zip(senders, payloads):
        sender.sendto(payload, receiver.getsockname())
    wait_readable(receiver)
    time.sleep(0.01)


def test_dispatch_hands_each_datagram_to_its_route_and_strangers_to_stray(twin):
    receiver = udp()
    known, other, stranger = udp(), udp(), udp()
    got = []
    routes = {
        socket_address(known.getsockname()): (lambda *entry: got.append(("known",) + entry), ("known", 1)),
        socket_address(other.getsockname()): (lambda *entry: got.append(("other",) + entry), ("other", 2)),
    }
    strays = []
    batch = twin.ReceiveBatch(receiver, slots=8)
    before = time.time()
    queued(receiver, [known, stranger, other, known], [b"a", b"b", b"c", b"d"])
    count = batch.dispatch(routes, 123.5, strays.append, lambda *failure: pytest.fail(f"failed: {failure}"))
    assert count == 4
    assert [(name, data, address, now) for name, data, address, now, _ in got] == [
        ("known", b"a", ("known", 1), 123.5), ("other", b"c", ("other", 2), 123.5),
        ("known", b"d", ("known", 1), 123.5)]
    assert all(before - 0.001 <= arrival <= time.time() for *_, arrival in got)
    assert strays == [socket_address(stranger.getsockname())]
    assert batch.dispatch(routes, 124.0, strays.append, None) == 0  # nothing waits: no call, no error


def test_a_failing_handler_is_reported_and_the_batch_goes_on(twin):
    receiver, sender = udp(), udp()
    seen, failures = [], []

    def handler(data, address, now, arrival):
        if data == b"bad":
            raise ValueError("this one is broken")
        seen.append(data)

    routes = {socket_address(sender.getsockname()): (handler, ("caller", 9))}
    batch = twin.ReceiveBatch(receiver, slots=8)
    queued(receiver, [sender] * 3, [b"one", b"bad", b"three"])
    assert batch.dispatch(routes, 0.0, None, lambda address, error: failures.append((address, error))) == 3
    assert seen == [b"one", b"three"]
    [(address, error)] = failures
    assert address == ("caller", 9)
    assert isinstance(error, ValueError) and str(error) == "this one is broken"
    assert error.__traceback__ is not None  # the log line can show where it broke


def test_a_base_exception_from_a_handler_goes_up_and_the_batch_can_be_used_again(twin):
    receiver, sender = udp(), udp()

    class Stop(BaseException):
        pass

    def handler(data, address, now, arrival):
        raise Stop()

    routes = {socket_address(sender.getsockname()): (handler, ("caller", 9))}
    batch = twin.ReceiveBatch(receiver, slots=8)
    queued(receiver, [sender], [b"x"])
    with pytest.raises(Stop):
        batch.dispatch(routes, 0.0, None, lambda *failure: pytest.fail("a BaseException is not a failure"))
    queued(receiver, [sender], [b"y"])
    assert batch.receive() == 1  # not left 'dispatching'
    assert batch.datagram(0) == b"y"


def test_a_handler_may_drop_its_own_route_but_not_read_the_batch(twin):
    receiver, first, second = udp(), udp(), udp()
    batch = twin.ReceiveBatch(receiver, slots=8)
    routes = {}
    seen, failures, strays = [], [], []

    def leave(data, address, now, arrival):
        seen.append(data)
        routes.clear()  # the call ended while its datagram was handled

    def nosy(data, address, now, arrival):
        batch.receive()

    routes[socket_address(first.getsockname())] = (leave, ("first", 1))
    queued(receiver, [first, first], [b"1", b"2"])
    assert batch.dispatch(routes, 0.0, strays.append, lambda *failure: failures.append(failure)) == 2
    assert seen == [b"1"] and strays == [socket_address(first.getsockname())] and failures == []
    routes[socket_address(second.getsockname())] = (nosy, ("second", 2))
    queued(receiver, [second], [b"3"])
    batch.dispatch(routes, 0.0, strays.append, lambda address, error: failures.append(error))
    [error] = failures
    assert isinstance(error, RuntimeError) and "may not read the batch" in str(error)


def test_entries_past_what_the_last_receive_took_are_refused(twin):
    receiver, sender = udp(), udp()
    batch = twin.ReceiveBatch(receiver, slots=4)
    queued(receiver, [sender], [b"only"])
    assert batch.receive() == 1
    for read in (batch.datagram, batch.source, batch.arrival):
        with pytest.raises(IndexError):
            read(1)
        with pytest.raises(IndexError):
            read(-1)


def test_a_closed_socket_is_an_error_counted_not_a_crash(twin):
    sender, receiver = udp(), udp()
    batch = twin.SendBatch(sender, slots=4)
    batch.add((b"late",), socket_address(receiver.getsockname()))
    sender.close()
    assert batch.flush() == 0
    assert batch.errors == 1 and batch.last_error == 9  # EBADF
    incoming = twin.ReceiveBatch(receiver, slots=4)
    receiver.close()
    assert incoming.receive() == 0
    assert incoming.errors == 1


def test_the_server_uses_the_compiled_twin_when_it_was_built():
    if compiled is None:
        pytest.skip("the compiled batch module was not built")
    assert mmsg.IMPLEMENTATION == "compiled"
    assert mmsg.SendBatch is compiled.SendBatch and mmsg.ReceiveBatch is compiled.ReceiveBatch


def test_a_limit_takes_at_most_that_many_and_leaves_the_rest_waiting(twin):
    receiver, sender = udp(), udp()
    batch = twin.ReceiveBatch(receiver, slots=8)
    got = []
    routes = {socket_address(sender.getsockname()): (lambda data, *rest: got.append(data), ("caller", 1))}
    queued(receiver, [sender] * 5, [b"%d" % n for n in range(5)])
    assert batch.dispatch(routes, 0.0, None, None, 2) == 2
    assert batch.receive(0) == 0
    assert batch.dispatch(routes, 0.0, None, None, None) == 3
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(ValueError):
        batch.receive(-1)


def test_a_leg_queues_what_a_stream_sends_into_the_shared_batch(twin):
    sender, first, second = udp(), udp(), udp()
    batch = twin.SendBatch(sender, slots=8)
    leg = twin.LegSender(batch, sender)
    assert leg.fileno() == sender.fileno()
    leg.sendmsg((b"head|", memoryview(b"payload")), (), 0, first.getsockname())
    leg.sendto(b"report", first.getsockname())
    leg.sendmsg((b"moved",), (), 0, ("127.0.0.1", second.getsockname()[1]))  # a new address object
    assert batch.pending == 3
    assert batch.flush() == 3
    assert receive_all(first, 2) == [(b"head|payload", sender.getsockname()), (b"report", sender.getsockname())]
    assert receive_all(second, 1) == [(b"moved", sender.getsockname())]


def test_a_leg_sends_to_ipv6_and_refuses_a_host_name(twin):
    receiver, sender = ipv6_pair()
    batch = twin.SendBatch(sender, slots=4)
    leg = twin.LegSender(batch, sender)
    leg.sendto(b"v6", receiver.getsockname()[:2])
    with pytest.raises(OSError):
        leg.sendto(b"x", ("gateway.example", 4000))  # resolved at config time, never per packet
    assert batch.pending == 1 and batch.flush() == 1
    assert receive_all(receiver, 1)[0][0] == b"v6"
