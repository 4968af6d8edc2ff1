"""sd_notify: message tables, and the shell against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest
import trio
import trio.testing

from eko_rtp.service import notify
from eko_rtp.service.notify import Notifier, NotifyError, run_watchdog


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (notify.ready(), b"READY=1"),
        (notify.ready("0 active calls"), b"READY=1\nSTATUS=0 active calls"),
        (notify.status("3 active calls, draining"), b"STATUS=3 active calls, draining"),
        (notify.watchdog(), b"WATCHDOG=1"),
        (notify.reloading(123456789), b"RELOADING=1\nMONOTONIC_USEC=123456789"),
        (notify.stopping(), b"STOPPING=1"),
        (notify.stopping("draining 2 calls"), b"STOPPING=1\nSTATUS=draining 2 calls"),
        (notify.extend_timeout(5_000_000), b"EXTEND_TIMEOUT_USEC=5000000"),
        (notify.status("appel \u00e9tabli"), "STATUS=appel \u00e9tabli".encode()),
    ],
)
def test_message_formats(message, expected):
    assert message == expected


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: notify.status("two\nlines"), "notification value of STATUS contains a newline or NUL: 'two\\nlines'"),
        (lambda: notify.format_message({"ready": "1"}), "notification variable 'ready' is not an upper-case name"),
        (lambda: notify.format_message({"A=B": "1"}), "notification variable 'A=B' is not an upper-case name"),
        (lambda: notify.format_message({}), "a notification needs at least one VARIABLE=value field"),
        (lambda: notify.reloading(-1), "MONOTONIC_USEC must not be negative, got -1"),
        (lambda: notify.extend_timeout(0), "EXTEND_TIMEOUT_USEC must be positive, got 0"),
    ],
)
def test_bad_messages_are_refused(call, error):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@eko/notify", b"\0eko/notify"),
    ],
)
def test_socket_address(value, expected):
    assert notify.socket_address(value) == expected


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_address(value):
    with pytest.raises(NotifyError) as caught:
        notify.socket_address(value)
    assert str(caught.value) == f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an @abstract name"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 10.0),
        # Inherited from a parent: the watchdog is someone else's.
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(environ, expected):
    assert notify.watchdog_interval(environ, 4242) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [("ten", "WATCHDOG_USEC='ten' is not an integer"), ("0", "WATCHDOG_USEC='0' must be positive")],
)
def test_bad_watchdog_interval(value, error):
    with pytest.raises(NotifyError) as caught:
        notify.watchdog_interval({"WATCHDOG_USEC": value}, 1)
    assert str(caught.value) == error


@pytest.fixture
def listener(tmp_path):
    """The test plays systemd: a datagram socket bound to a path."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    yield receiver, str(path)
    receiver.close()


def drain(receiver: socket.socket) -> list[bytes]:
    """Every datagram queued now, without waiting."""
    received = []
    for _ in range(10_000):
        try:
            received.append(receiver.recv(4096))
        except BlockingIOError:
            return received
    raise AssertionError("more than 10000 datagrams queued")


def test_ready_status_stopping_reach_the_socket(listener):
    receiver, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.watchdog_seconds is None
    assert notifier.ready("0 active calls")
    assert notifier.status("2 active calls")
    assert notifier.reloading()
    assert notifier.stopping("draining 2 calls")
    assert notifier.extend_timeout(0.25)
    notifier.close()
    received = drain(receiver)
    assert received[:2] == [b"READY=1\nSTATUS=0 active calls", b"STATUS=2 active calls"]
    reload_line, monotonic_line = received[2].split(b"\n")
    assert reload_line == b"RELOADING=1"
    stamp = int(monotonic_line.removeprefix(b"MONOTONIC_USEC="))
    assert 0 < time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 - stamp < 10_000_000
    assert received[3:] == [b"STOPPING=1\nSTATUS=draining 2 calls", b"EXTEND_TIMEOUT_USEC=250000"]


def test_abstract_socket():
    name = f"eko-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert receiver.recv(4096) == b"READY=1"
        notifier.close()


def test_no_notify_socket_is_a_no_op():
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.dropped == 0


def test_missing_socket_is_logged_not_raised(tmp_path, caplog):
    path = str(tmp_path / "gone")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    with caplog.at_level(logging.WARNING, logger="eko_rtp.service.notify"):
        assert notifier.status("1 active call") is False
    assert notifier.dropped == 1
    assert caplog.messages == [f"sd_notify to {path!r} failed: [Errno 2] No such file or directory"]
    notifier.close()


async def test_no_watchdog_configured_returns_at_once(listener):
    receiver, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
    assert drain(receiver) == []


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def trio_listener(tmp_path):
    path = str(tmp_path / "notify")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        await receiver.bind(path)
        yield receiver, path


async def receive_pings(receiver, count: int, start: float) -> list[float]:
    """Arrival times (relative to ``start``) of the next ``count`` pings."""
    arrivals = []
    for _ in range(count):
        assert await receiver.recv(4096) == b"WATCHDOG=1"
        arrivals.append(trio.current_time() - start)
    return arrivals


async def test_watchdog_pings_at_half_the_interval(trio_listener, mock_clock):
    receiver, path = trio_listener
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    )
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(run_watchdog, notifier)
        arrivals = await receive_pings(receiver, 5, start)
        nursery.cancel_scope.cancel()
    notifier.close()
    assert arrivals == [0.0, 5.0, 10.0, 15.0, 20.0]


async def test_stalled_loop_resumes_with_one_ping_not_a_burst(trio_listener, mock_clock):
    receiver, path = trio_listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(run_watchdog, notifier)
        arrivals = await receive_pings(receiver, 1, start)
        await trio.sleep(0.5)
        # The loop stalls for 7.5 s without running any task (as a blocking call
        # would): time moves, nothing is scheduled.
        mock_clock.jump(7.5)
        arrivals += await receive_pings(receiver, 3, start)
        nursery.cancel_scope.cancel()
    notifier.close()
    # The beat at 0 was on time; the one due at 1 s went when the loop ran again
    # at 8 s, then one every second from there: the missed beats were not replayed.
    assert arrivals == [0.0, 8.0, 9.0, 10.0]


async def test_no_pings_while_the_loop_is_blocked(listener):
    receiver, path = listener
    # 100 ms watchdog: a ping every 50 ms of real time.
    period = 0.05
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    async with trio.open_nursery() as nursery:
        started = time.monotonic()
        await nursery.start(run_watchdog, notifier)
        await trio.sleep(0.3)
        before = drain(receiver)
        # On schedule: at most one ping per period (however late the sleep woke).
        assert 3 <= len(before) <= (time.monotonic() - started) / period + 1
        assert set(before) == {b"WATCHDOG=1"}
        # Block the event loop the way a synchronous call would. Nothing may be
        # sent meanwhile: a ping from any other thread would show up here.
        time.sleep(0.5)
        assert drain(receiver) == []
        resumed = time.monotonic()
        await trio.sleep(0.2)
        after = drain(receiver)
        # Resumed at once, without replaying the 10 beats missed while blocked.
        assert 2 <= len(after) <= (time.monotonic() - resumed) / period + 1
        assert set(after) == {b"WATCHDOG=1"}
        nursery.cancel_scope.cancel()
    notifier.close()
