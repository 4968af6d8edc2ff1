"""The receive hub: one epoll set for every media socket, drained in short steps."""

import functools
import socket
import time

import trio

from eko_rtp.media.receiver import ReceiveHub


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class BusyClock:
    """Stands in for the frame clock: has streams (so it drains) until told it has none."""

    def __init__(self) -> None:
        self.streams = 1
        self.idle = trio.Event()

    async def wait_idle(self) -> None:
        await self.idle.wait()


async def test_every_datagram_reaches_its_handler_with_its_source():
    hub = ReceiveHub(nap=0.001)
    sockets = [_bound() for _ in range(3)]
    got = []
    for index, sock in enumerate(sockets):
        hub.register(sock, lambda data, address, now, index=index: got.append((index, data, address)))
    sender = _bound()
    source = sender.getsockname()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            for index, sock in enumerate(sockets):
                for n in range(2):
                    sender.sendto(b"%d-%d" % (index, n), sock.getsockname())
            with trio.fail_after(5):
                while len(got) < 6:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    finally:
        hub.close()
        for sock in [*sockets, sender]:
            sock.close()
    assert sorted((index, data) for index, data, _ in got) == [
        (i, b"%d-%d" % (i, n)) for i in range(3) for n in range(2)]
    assert {address for _, _, address in got} == {source}
    assert hub.datagrams == 6


async def test_a_drain_stops_at_its_deadline_after_its_minimum_and_says_more_is_waiting():
    hub = ReceiveHub(minimum=3)
    sockets = [_bound() for _ in range(5)]
    got = []
    for sock in sockets:
        hub.register(sock, lambda data, address, now: got.append(data))
    sender = _bound()
    try:
        for sock in sockets:
            sender.sendto(b"x", sock.getsockname())
        time.sleep(0.05)  # let loopback deliver all five
        assert hub.drain(time.perf_counter() - 1) is True  # deadline already past
        assert len(got) == 3
        assert hub.drain(time.perf_counter() + 1) is False
        assert len(got) == 5 and hub.datagrams == 5
        assert hub.drain(time.perf_counter() + 1) is False  # nothing left, nothing read
    finally:
        hub.close()
        for sock in [*sockets, sender]:
            sock.close()


async def test_the_hub_task_leaves_draining_to_a_busy_clock_and_takes_over_when_it_idles():
    clock = BusyClock()
    hub = ReceiveHub(nap=0.001)
    sock = _bound()
    got = []
    hub.register(sock, lambda data, address, now: got.append(data))
    sender = _bound()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(hub.run, clock=clock))
            sender.sendto(b"one", sock.getsockname())
            await trio.sleep(0.05)
            assert got == []  # the clock drains while it has streams
            clock.streams = 0
            clock.idle.set()
            with trio.fail_after(5):
                while got != [b"one"]:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    finally:
        hub.close()
        sock.close()
        sender.close()


async def test_a_handler_error_is_counted_and_the_hub_goes_on():
    hub = ReceiveHub(nap=0.001)
    bad, good = _bound(), _bound()
    got = []

    def explode(data, address, now):
        raise RuntimeError("handler bug")

    hub.register(bad, explode)
    hub.register(good, lambda data, address, now: got.append(data))
    sender = _bound()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            sender.sendto(b"boom", bad.getsockname())
            sender.sendto(b"fine", good.getsockname())
            with trio.fail_after(5):
                while not got or hub.handler_errors == 0:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    finally:
        hub.close()
        for sock in (bad, good, sender):
            sock.close()
    assert got == [b"fine"] and hub.handler_errors == 1
