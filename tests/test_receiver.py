"""The receive hub: one epoll set for every media socket, drained in short steps."""

import contextlib
import math
import socket
import time

import pytest
import trio
import trio.testing

from eko_rtp.media.clock import FrameClock
from eko_rtp.media.receiver import MAX_READ_COST, RIDE_BUDGET, UNBOUNDED, DrainPolicy, ReadCost, ReceiveHub


@contextlib.contextmanager
def closing_all(*things):
    """Close the hub, clock and sockets of a test however it ends."""
    try:
        yield
    finally:
        for thing in things:
            thing.close()


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class TickGate:
    """Stands in for the frame clock: says a tick is due, and lets the hub on when told."""

    streams = 0  # no calls up: the hub waits for datagrams, not for ticks

    def __init__(self) -> None:
        self.next_tick = math.inf
        self.waits = 0
        self.tick = trio.Event()

    async def wait_tick(self) -> None:
        self.waits += 1
        await self.tick.wait()


async def serve_until(hub: ReceiveHub, got: list, count: int, send=lambda: None) -> None:
    """Run the hub, call ``send`` once it runs, and stop once ``got`` holds ``count`` items (5 s at most)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        send()
        with trio.fail_after(5):
            while len(got) < count:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()


async def test_every_datagram_reaches_its_handler_with_its_source():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.001))
    sockets = [_bound() for _ in range(3)]
    got = []
    for index, sock in enumerate(sockets):
        hub.register(sock, lambda data, address, now, arrival, index=index: got.append((index, data, address)))
    sender = _bound()
    source = sender.getsockname()
    with closing_all(hub, *sockets, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            for index, sock in enumerate(sockets):
                for n in range(2):
                    sender.sendto(b"%d-%d" % (index, n), sock.getsockname())
            with trio.fail_after(5):
                while len(got) < 6:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert sorted((index, data) for index, data, _ in got) == [
        (i, b"%d-%d" % (i, n)) for i in range(3) for n in range(2)]
    assert {address for _, _, address in got} == {source}
    assert hub.datagrams == 6


async def test_the_hub_steps_aside_when_a_tick_is_due_and_goes_on_after_it():
    gate = TickGate()
    hub = ReceiveHub(policy=DrainPolicy(nap=0.001), clock=gate)
    sockets = [_bound() for _ in range(4)]
    got = []
    for sock in sockets:
        hub.register(sock, lambda data, address, now, arrival: got.append(data))
    sender = _bound()
    with closing_all(hub, *sockets, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            gate.next_tick = trio.current_time() - 1  # a tick is due from now on
            for sock in sockets:
                sender.sendto(b"x", sock.getsockname())
            with trio.fail_after(5):
                while gate.waits == 0:
                    await trio.sleep(0.001)
            await trio.sleep(0.02)
            assert len(got) == 1  # one datagram, then it waited for the tick
            gate.next_tick = math.inf
            gate.tick.set()  # the tick went by
            with trio.fail_after(5):
                while len(got) < 4:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert gate.waits == 1


async def test_a_handler_error_is_counted_and_the_hub_goes_on():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.001))
    bad, good = _bound(), _bound()
    got = []

    def explode(data, address, now, arrival):
        raise RuntimeError("handler bug")

    hub.register(bad, explode)
    hub.register(good, lambda data, address, now, arrival: got.append(data))
    sender = _bound()
    with closing_all(hub, bad, good, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            sender.sendto(b"boom", bad.getsockname())
            sender.sendto(b"fine", good.getsockname())
            with trio.fail_after(5):
                while not got or hub.handler_errors == 0:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert got == [b"fine"] and hub.handler_errors == 1


class TickRecorder:
    """A stream of the frame clock that sends nothing and notes when its slot is served."""

    def __init__(self, first_due: float, frames: int) -> None:
        self.next_due = first_due
        self.frames = frames
        self.ticks: list[float] = []

    def send_due(self, now):
        self.ticks.append(now)
        self.frames -= 1
        return self.next_due + 0.020 if self.frames > 0 else None


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_with_calls_up_the_hub_drains_right_after_clock_ticks_a_nap_apart(autojump_clock):
    frame_clock = FrameClock()
    hub = ReceiveHub(policy=DrainPolicy(nap=0.010), clock=frame_clock)
    stream = TickRecorder(first_due=0.0105, frames=10)  # slots at 11, 31, 51 ... 191 ms
    sock, sender = _bound(), _bound()
    handled: list[tuple[bytes, float]] = []
    hub.register(sock, lambda data, address, now, arrival: handled.append((data, now)))
    with closing_all(hub, frame_clock, sock, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(frame_clock.run)
            frame_clock.schedule(stream)
            await nursery.start(hub.run)
            sender.sendto(b"early", sock.getsockname())
            await trio.sleep_until(0.035)
            sender.sendto(b"between", sock.getsockname())  # waits for the 51 ms tick
            await trio.sleep_until(0.100)
            sender.sendto(b"late", sock.getsockname())
            await trio.sleep_until(0.300)  # the stream has stopped: the hub waits for datagrams
            sender.sendto(b"no clock", sock.getsockname())
            with trio.fail_after(1):
                while len(handled) < 4:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert [round(t, 6) for t in stream.ticks] == [round(0.011 + 0.020 * n, 6) for n in range(10)]
    assert [(data, round(now, 6)) for data, now in handled[:3]] == [
        (b"early", 0.011), (b"between", 0.051), (b"late", 0.111)]
    assert handled[3][0] == b"no clock" and handled[3][1] >= 0.300


async def _drain_tasks(*, streams: int, policy: DrainPolicy, hub_setup=lambda hub: None):
    """Which tasks drained three datagrams sent while ``streams`` calls were up (under the
    calling test's mock clock)."""
    frame_clock = FrameClock()
    hub = ReceiveHub(policy=policy, clock=frame_clock)
    hub_setup(hub)
    sock, sender = _bound(), _bound()
    handled: list[tuple[bytes, str]] = []
    hub.register(sock, lambda data, address, now, arrival: handled.append(
        (data, trio.lowlevel.current_task().name)))
    with closing_all(hub, frame_clock, sock, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(frame_clock.run, name="frame clock")
            for phase in range(streams):
                frame_clock.schedule(TickRecorder(first_due=0.0105 + phase * 0.001, frames=20))
            await nursery.start(hub.run, name="receive hub")
            for n in range(3):
                sender.sendto(b"%d" % n, sock.getsockname())
                await trio.sleep(0.030)
            with trio.fail_after(1):
                while len(handled) < 3:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    return hub, handled


async def test_a_riding_drain_runs_in_the_clock_task_behind_its_tick(autojump_clock):
    _, handled = await _drain_tasks(streams=1, policy=DrainPolicy(nap=0.010))
    assert handled == [(b"0", "frame clock"), (b"1", "frame clock"), (b"2", "frame clock")]


async def test_with_more_calls_than_it_rides_with_the_hub_drains_in_its_own_task(autojump_clock):
    _, handled = await _drain_tasks(streams=2, policy=DrainPolicy(nap=0.010, ride_limit=1))
    assert handled == [(b"0", "receive hub"), (b"1", "receive hub"), (b"2", "receive hub")]


async def test_a_bug_in_a_riding_drain_is_logged_once_and_the_hub_drains_on_its_own(autojump_clock, caplog):
    def break_riding_drain(hub):
        def broken(ready, now):
            raise RuntimeError("drain bug")
        hub._drain_now = broken

    hub, handled = await _drain_tasks(streams=1, policy=DrainPolicy(nap=0.010),
                                      hub_setup=break_riding_drain)
    assert [data for data, _ in handled] == [b"0", b"1", b"2"]  # nothing lost
    assert {task for _, task in handled} == {"receive hub"}
    failures = [record for record in caplog.records if "behind the frame clock failed" in record.getMessage()]
    assert len(failures) == 1 and hub.handler_errors == 1


async def test_a_riding_drain_empties_each_socket_round_robin(autojump_clock):
    frame_clock = FrameClock()
    hub = ReceiveHub(policy=DrainPolicy(nap=0.010), clock=frame_clock)
    stream = TickRecorder(first_due=0.0105, frames=5)
    first, second, sender = _bound(), _bound(), _bound()
    got = []
    hub.register(first, lambda data, address, now, arrival: got.append((data, round(now, 6))))
    hub.register(second, lambda data, address, now, arrival: got.append((data, round(now, 6))))
    with closing_all(hub, frame_clock, first, second, sender):
        for n in range(5):  # a caller sending audio and events side by side, and then some
            sender.sendto(b"a%d" % n, first.getsockname())
        sender.sendto(b"b0", second.getsockname())
        async with trio.open_nursery() as nursery:
            await nursery.start(frame_clock.run)
            frame_clock.schedule(stream)
            await nursery.start(hub.run)
            await trio.sleep_until(0.2)
            nursery.cancel_scope.cancel()
    # All in the first drain, right behind the 11 ms tick; one per socket per round.
    assert [data for data, _ in got] == [b"a0", b"b0", b"a1", b"a2", b"a3", b"a4"]
    assert {now for _, now in got} == {0.011}
    assert hub.backlogs == 0


async def test_without_calls_a_drain_empties_every_socket():
    # A step budget no drain reaches: on a loaded machine reading 40 datagrams can pass
    # the default 150 us, and the drain's stepping aside (another test's subject) would
    # give the later datagrams a later time.
    hub = ReceiveHub(policy=DrainPolicy(nap=0.005), step_budget=1.0)
    sock, sender = _bound(), _bound()
    got = []
    hub.register(sock, lambda data, address, now, arrival: got.append(now))
    with closing_all(hub, sock, sender):
        await serve_until(hub, got, 40, lambda: [sender.sendto(b"%d" % n, sock.getsockname()) for n in range(40)])
    assert len(set(got)) <= 2  # one drain (two if the sends straddled one), not one per nap


async def test_a_socket_still_full_after_every_round_is_counted_as_a_backlog():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.005), max_rounds=4)
    flooded, quiet, sender = _bound(), _bound(), _bound()
    got = []
    backlogs = []
    times = []

    def on_flooded(data, address, now, arrival):
        got.append(data)
        times.append(time.monotonic())

    hub.register(flooded, on_flooded, on_backlog=lambda: backlogs.append(1))
    hub.register(quiet, lambda data, address, now, arrival: got.append(data))
    with closing_all(hub, flooded, quiet, sender):
        for n in range(10):
            sender.sendto(b"f%d" % n, flooded.getsockname())
        sender.sendto(b"q", quiet.getsockname())
        await serve_until(hub, got, 11)
    assert got.index(b"q") < 2  # the flood did not keep the other call waiting
    assert [data for data in got if data != b"q"] == [b"f%d" % n for n in range(10)]  # nothing lost, in order
    assert hub.backlogs == len(backlogs) == 2  # 4 + 4 taken with more waiting, then the last 2
    # A call's own socket that far behind is flooded: the nap bounds what it costs.
    assert times[-1] - times[0] >= 0.009, [round(t - times[0], 4) for t in times]


async def test_a_batch_socket_still_full_after_every_round_is_drained_again_without_a_nap():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.005), max_rounds=2)
    sock, sender = _bound(), _bound()
    times = []

    def reader(now: float, limit: int) -> int:
        taken = 0
        while taken < min(limit, 3):  # 3 a batch: 2 rounds take 6 of the 15
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            taken += 1
            times.append(time.monotonic())
        return taken

    hub.register_batch(sock, reader)
    with closing_all(hub, sock, sender):
        for n in range(15):
            sender.sendto(b"%d" % n, sock.getsockname())
        await serve_until(hub, times, 15)
    assert hub.backlogs == 2  # 6, 6, then the last 3 emptied it
    assert times[-1] - times[0] < 0.004, [round(t - times[0], 4) for t in times]  # no 5 ms naps between


async def test_arrival_is_the_kernel_time_the_datagram_came_not_the_drain_time():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.005))
    sock, sender = _bound(), _bound()
    got = []
    hub.register(sock, lambda data, address, now, arrival: got.append(arrival))
    with closing_all(hub, sock, sender):
        sender.sendto(b"early", sock.getsockname())
        sent_early = time.time()
        await trio.sleep(0.05)  # the datagram waits in the socket before the hub runs
        sender.sendto(b"late", sock.getsockname())
        sent_late = time.time()
        await serve_until(hub, got, 2)
    assert abs(got[0] - sent_early) < 0.005 and abs(got[1] - sent_late) < 0.005
    assert 0.045 < got[1] - got[0] < 0.2


def test_a_sampling_socket_stamps_one_datagram_in_n_the_first_included():
    hub = ReceiveHub()
    sock, sender = _bound(), _bound()
    got = []
    hub.register(sock, lambda data, address, now, arrival: got.append((data, address, arrival)),
                 timestamp_every=3)
    source = sender.getsockname()
    with closing_all(hub, sock, sender):
        sent = time.time()
        for n in range(7):
            sender.sendto(b"%d" % n, sock.getsockname())
        assert trio.run(_drain_now, hub, sock) == 7
    assert [data for data, _, _ in got] == [b"%d" % n for n in range(7)]
    assert {address for _, address, _ in got} == {source}  # both reads name the source
    stamped = [n for n, (_, _, arrival) in enumerate(got) if arrival is not None]
    assert stamped == [0, 3, 6]
    assert all(abs(got[n][2] - sent) < 0.5 for n in stamped)


def test_a_socket_cannot_be_stamped_less_than_every_datagram():
    hub = ReceiveHub()
    with closing_all(hub), _bound() as sock:
        with pytest.raises(ValueError, match="timestamp_every must be at least 1, not 0"):
            hub.register(sock, lambda *args: None, timestamp_every=0)
    assert hub.sockets == 0


def test_drain_socket_hands_over_what_waits_in_order_now():
    hub = ReceiveHub()
    sock, sender = _bound(), _bound()
    got = []
    hub.register(sock, lambda data, address, now, arrival: got.append(data))
    with closing_all(hub, sock, sender):
        for n in range(3):
            sender.sendto(b"%d" % n, sock.getsockname())
        time.sleep(0.01)  # loopback delivery is synchronous; this only makes it obvious
        assert trio.run(_drain_now, hub, sock) == 3
        with _bound() as stranger:
            assert hub.drain_socket(stranger) == 0  # an unregistered socket: nothing to do
    assert got == [b"0", b"1", b"2"]


async def _drain_now(hub, sock):
    return hub.drain_socket(sock)


@pytest.mark.parametrize(
    ("streams", "rides"),
    [(0, False), (1, True), (64, True), (65, False), (1000, False)],
)
def test_the_hub_rides_the_clock_only_with_a_few_calls_up(streams, rides):
    assert DrainPolicy().rides(streams) is rides


def test_a_ride_starts_a_nap_after_the_last_drain():
    assert DrainPolicy(nap=0.010).next_ride(1.000) == pytest.approx(1.010)
    assert DrainPolicy(ride_limit=0).rides(1) is False  # riding off


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"nap": 0}, "nap must be within (0, 0.020] s (a frame), not 0"),
     ({"nap": 0.05}, "nap must be within (0, 0.020] s (a frame), not 0.05"),
     ({"ride_limit": -1}, "ride_limit must not be negative, not -1")],
)
def test_bad_policies_are_refused(fields, message):
    with pytest.raises(ValueError) as caught:
        DrainPolicy(**fields)
    assert str(caught.value) == message


async def test_a_socket_that_becomes_ready_during_a_drain_waits_for_the_next_one():
    hub = ReceiveHub(policy=DrainPolicy(nap=0.005))
    busy, late, sender = _bound(), _bound(), _bound()
    got = []

    def on_busy(data, address, now, arrival):
        got.append((data, now))
        if data == b"b0":
            sender.sendto(b"late", late.getsockname())  # arrives while this drain goes on

    hub.register(busy, on_busy)
    hub.register(late, lambda data, address, now, arrival: got.append((data, now)))
    with closing_all(hub, busy, late, sender):
        for n in range(3):
            sender.sendto(b"b%d" % n, busy.getsockname())
        await serve_until(hub, got, 4)
    assert [data for data, _ in got] == [b"b0", b"b1", b"b2", b"late"]  # the busy socket emptied first
    assert got[3][1] >= got[2][1] + 0.005  # a nap after the drain that emptied the busy socket


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock()  # still unless the test moves it


async def test_a_batch_read_that_would_overrun_the_tick_waits_for_it(mock_clock):
    # Each batch read "takes" 0.4 ms of the mock clock and the tick is due 1 ms on:
    # two reads fit before it; a third would end 0.2 ms into it, so the hub waits.
    gate = TickGate()
    hub = ReceiveHub(policy=DrainPolicy(nap=0.001), clock=gate)
    sock = _bound()
    sender = _bound()
    reads = []

    def reader(now: float, limit: int) -> int:
        assert limit >= 1
        try:
            sock.recv(2048)
        except BlockingIOError:
            return 0
        started = trio.current_time()
        mock_clock.jump(0.0004)
        reads.append((started, trio.current_time()))
        return 1

    hub.register_batch(sock, reader)
    with closing_all(hub, sock, sender):
        for n in range(5):
            sender.sendto(b"%d" % n, sock.getsockname())
        gate.next_tick = trio.current_time() + 0.001
        tick = gate.next_tick
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waits == 1
            assert len(reads) == 2
            assert all(ended <= tick for _, ended in reads)  # no read made the tick wait
            gate.next_tick = math.inf
            gate.tick.set()  # the tick went by
            await trio.testing.wait_all_tasks_blocked()
            assert len(reads) == 5
            nursery.cancel_scope.cancel()
    assert hub.datagrams == 5


async def test_a_batch_read_is_sized_to_the_time_left_before_the_tick(mock_clock):
    # Each datagram "takes" 0.1 ms: with 0.95 ms to the tick (1 ms less the margin) the
    # first read is unbounded (nothing measured yet) but finds 4; then 5 fit, then 1,
    # then none: the hub waits for the tick.
    gate = TickGate()
    hub = ReceiveHub(policy=DrainPolicy(nap=0.001), clock=gate)
    sock, sender = _bound(), _bound()
    reads = []

    def reader(now: float, limit: int) -> int:
        taken = 0
        while taken < min(limit, 4):
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            taken += 1
        if taken:
            mock_clock.jump(0.0001 * taken)
            reads.append((limit, taken, trio.current_time()))
        return taken

    hub.register_batch(sock, reader)
    with closing_all(hub, sock, sender):
        for n in range(20):
            sender.sendto(b"%d" % n, sock.getsockname())
        gate.next_tick = tick = trio.current_time() + 0.001
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waits == 1
            assert [(limit, taken) for limit, taken, _ in reads] == [(UNBOUNDED, 4), (5, 4), (1, 1)]
            assert all(ended <= tick - hub.tick_margin + 1e-9 for *_, ended in reads)
            gate.next_tick = math.inf
            gate.tick.set()
            await trio.testing.wait_all_tasks_blocked()
            assert sum(taken for _, taken, _ in reads) == 20
            nursery.cancel_scope.cancel()
    assert hub.datagrams == 20


def test_a_read_cost_is_per_datagram_rises_at_once_and_falls_slowly_within_a_cap():
    cost = ReadCost()
    assert cost.fits(0.001) == UNBOUNDED  # nothing measured yet
    assert ReadCost().fits(math.inf) == UNBOUNDED
    cost.add(0.0004, 4)
    assert cost.seconds == pytest.approx(0.0001)
    assert cost.fits(0.00095) == 9 and cost.fits(0.0) == 0 and cost.fits(-1.0) == 0
    cost.add(0.0002, 4)
    assert cost.seconds == pytest.approx(0.0001 - 0.00005 / 16)
    cost.add(0.0005, 2)
    assert cost.seconds == pytest.approx(0.00025)
    cost.add(1.0, 1)  # one read slowed down by the host
    assert cost.seconds == MAX_READ_COST
    assert cost.fits(math.inf) == UNBOUNDED  # no tick due


async def test_a_flood_while_riding_never_holds_the_clock_task_past_its_budget():
    # A batch socket that is never empty (a hostile source flooding the shared port)
    # with one call up: the drain in the clock's task stops once its time is up, the
    # hub's own task (which steps aside for ticks) takes over, and the call's frames
    # stay on time.
    frame_clock = FrameClock(precise=True)
    hub = ReceiveHub(policy=DrainPolicy(nap=0.010), clock=frame_clock)
    flooded, sender = _bound(), _bound()
    sender.sendto(b"x", flooded.getsockname())  # never read: the socket stays ready
    reads: list[tuple[str, float]] = []

    def slow_reader(now, limit):
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        reads.append((trio.lowlevel.current_task().name, now))
        return 1

    hub.register_batch(flooded, slow_reader)
    late: list[float] = []

    class Stream:
        def __init__(self, first_due):
            self.next_due = first_due
            self.frames = 25

        def send_due(self, now):
            late.append(now - self.next_due)
            self.frames -= 1
            return self.next_due + 0.020 if self.frames else None

    with closing_all(hub, frame_clock, flooded, sender):
        async with trio.open_nursery() as nursery:
            await nursery.start(frame_clock.run, name="frame clock")
            frame_clock.schedule(Stream((int(trio.current_time() * 1000) + 5) / 1000))
            await nursery.start(hub.run, name="receive hub")
            with trio.fail_after(5):
                while len(late) < 25:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    in_clock = [now for task, now in reads if task == "frame clock"]
    assert in_clock and any(task == "receive hub" for task, _ in reads)
    # Reads in the clock's task after one tick share its ``now``: at most a slot's worth.
    per_tick = max(in_clock.count(now) for now in set(in_clock))
    assert per_tick <= 1 + RIDE_BUDGET / 0.0002, per_tick
    late.sort()
    assert late[len(late) // 2] < 0.002, [round(t * 1000, 2) for t in late]
