"""The receive hub: one epoll set for every media socket, drained in short steps."""

import math
import socket
import time

import trio

from eko_rtp.media.receiver import ReceiveHub


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class TickGate:
    """Stands in for the frame clock: says a tick is due, and lets the hub on when told."""

    def __init__(self) -> None:
        self.next_tick_perf = math.inf
        self.waits = 0
        self.tick = trio.Event()

    async def wait_tick(self) -> None:
        self.waits += 1
        await self.tick.wait()


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


async def test_the_hub_steps_aside_when_a_tick_is_due_and_goes_on_after_it():
    gate = TickGate()
    hub = ReceiveHub(nap=0.001, clock=gate)
    sockets = [_bound() for _ in range(4)]
    got = []
    for sock in sockets:
        hub.register(sock, lambda data, address, now: got.append(data))
    sender = _bound()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            gate.next_tick_perf = time.perf_counter() - 1  # a tick is due from now on
            for sock in sockets:
                sender.sendto(b"x", sock.getsockname())
            with trio.fail_after(5):
                while gate.waits == 0:
                    await trio.sleep(0.001)
            await trio.sleep(0.02)
            assert len(got) == 1  # one datagram, then it waited for the tick
            gate.next_tick_perf = math.inf
            gate.tick.set()  # the tick went by
            with trio.fail_after(5):
                while len(got) < 4:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    finally:
        hub.close()
        for sock in [*sockets, sender]:
            sock.close()
    assert gate.waits == 1


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
