"""`eko-rtp crm bench` against a real seeded `eko-rtp crm serve`, and against fake CRMs
on loopback that never answer or answer only errors.

No timing assertions: the figures depend on the machine. The tests check what is
counted (sent, hits, misses, errors, timeouts), the JSON fields and the exit code.
"""

from __future__ import annotations

import json
import random
import sys

import msgpack
import pytest
import trio

from eko_rtp.crm.bench import BenchReport, percentile, run_lookup_bench
from eko_rtp.errors import UserError
from test_crm_server import CrmProcess, seed

EKO = [sys.executable, "-m", "eko_rtp"]
SEEDED = 1000

SUMMARY_KEYS = {
    "target", "mode", "rate", "duration", "sent", "answered", "hits", "misses", "errors", "timeouts",
    "achieved_rate", "latency_ms", "schedule_lag_ms",
}


@pytest.fixture
async def crm(tmp_path):
    db = tmp_path / "crm.sqlite3"
    seed(db, "--synthetic", str(SEEDED))
    process = CrmProcess(db, "127.0.0.1:0", tmp_path / "crm.log")
    await process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0


def expected_hits(sent: int, phones: int, seed: int = 1) -> int:
    """How many of the bench's numbers fall among the seeded clients (same chooser)."""
    chooser = random.Random(seed)
    return sum(1 for _ in range(sent) if chooser.randint(1, phones) <= SEEDED)


@pytest.mark.parametrize("mode", ["wire", "client", "version"])
async def test_bench_cli_prints_json_and_counts_every_answer(crm, mode):
    done = await trio.run_process(
        [*EKO, "crm", "bench", "--target", crm.address, "--rate", "500", "--duration", "2",
         "--phones", str(SEEDED), "--mode", mode, "--json"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert (summary["target"], summary["mode"], summary["rate"], summary["duration"]) == (crm.address, mode, 500.0, 2.0)
    assert (summary["sent"], summary["answered"], summary["hits"], summary["misses"]) == (1000, 1000, 1000, 0)
    assert (summary["errors"], summary["timeouts"]) == (0, 0)
    latency, lag = summary["latency_ms"], summary["schedule_lag_ms"]
    assert set(latency) == {"p50", "p90", "p99", "p999", "max"}
    assert set(lag) == {"p50", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert summary["achieved_rate"] > 0


async def test_bench_text_output_and_misses(crm):
    phones = 4 * SEEDED
    done = await trio.run_process(
        [*EKO, "crm", "bench", "--target", crm.address, "--rate", "400", "--duration", "1", "--phones", str(phones)],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    hits = expected_hits(400, phones)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 4
    assert lines[0] == f"CRM lookup bench (wire mode): target {crm.address}, 400 lookups/s for 1 s over one connection"
    assert lines[1].startswith(f"sent 400, answered 400 (hits {hits}, misses {400 - hits}), errors 0, timeouts 0, achieved ")
    assert lines[2].startswith("latency ms (written -> parsed): p50 ")
    assert lines[3].startswith("schedule lag ms (bench lateness, not in latency): p50 ")
    assert 0 < hits < 400


async def serve_fake_crm(answer, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A CRM on loopback that answers ``crm.version`` and replies to look-ups with ``answer(msgid)`` (None: silence)."""

    async def handle(stream: trio.SocketStream) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        async with stream:
            while data := await stream.receive_some(65536):
                unpacker.feed(data)
                replies = [
                    msgpack.packb([1, message[1], None, "1"]) if message[2] == "crm.version" else answer(message[1])
                    for message in unpacker
                ]
                await stream.send_all(b"".join(reply for reply in replies if reply is not None))

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(f"127.0.0.1:{port}")


@pytest.mark.parametrize("mode", ["wire", "client"])
async def test_silent_crm_counts_timeouts(mode):
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_fake_crm, lambda msgid: None)
        report = await run_lookup_bench(address, rate=100, duration=0.2, phone_count=10, timeout=0.2, mode=mode)
        nursery.cancel_scope.cancel()
    assert (report.sent, report.hits, report.misses, report.errors, report.timeouts) == (20, 0, 0, 0, 20)
    assert report.latencies == ()
    assert len(report.lags) == 20


async def test_error_answers_are_counted_as_errors():
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_fake_crm, lambda msgid: msgpack.packb([1, msgid, [3, "the CRM store failed"], None]))
        report = await run_lookup_bench(address, rate=100, duration=0.2, phone_count=10, timeout=0.5)
        nursery.cancel_scope.cancel()
    assert (report.sent, report.hits, report.misses, report.errors, report.timeouts) == (20, 0, 0, 20, 0)


async def test_malformed_records_are_errors_and_nil_is_a_miss():
    def answer(msgid: int) -> bytes:
        # Even msgids: a record without its required client_id; odd: nil (unknown caller).
        return msgpack.packb([1, msgid, None, {"name": "x"} if msgid % 2 == 0 else None])

    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_fake_crm, answer)
        report = await run_lookup_bench(address, rate=100, duration=0.2, phone_count=10, timeout=0.5)
        nursery.cancel_scope.cancel()
    assert (report.sent, report.hits, report.misses, report.errors, report.timeouts) == (20, 0, 10, 10, 0)
    assert len(report.latencies) == 10


async def test_a_crm_that_hangs_up_is_a_user_error():
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hang_up, listeners)
        with pytest.raises(UserError, match=rf"^the CRM at 127.0.0.1:{port} closed the connection \(\d+ look-ups unanswered\)$"):
            await run_lookup_bench(f"127.0.0.1:{port}", rate=100, duration=0.5, phone_count=10)
        nursery.cancel_scope.cancel()


async def test_refused_connection_is_a_user_error():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    with pytest.raises(UserError, match=rf"^cannot connect to the CRM at 127.0.0.1:{port}: "):
        await run_lookup_bench(f"127.0.0.1:{port}", rate=10, duration=0.1, phone_count=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0, "duration": 1, "phone_count": 1}, "bench needs rate > 0, duration > 0, phones >= 1 and timeout > 0 (got 0, 1, 1, 1.0)"),
        ({"rate": 1, "duration": 1, "phone_count": 0}, "bench needs rate > 0, duration > 0, phones >= 1 and timeout > 0 (got 1, 1, 0, 1.0)"),
        ({"rate": 1, "duration": 1, "phone_count": 1, "mode": "udp"}, "bench mode must be one of wire, client, version, got 'udp'"),
    ],
)
async def test_bad_arguments(kwargs, message):
    with pytest.raises(UserError) as caught:
        await run_lookup_bench("127.0.0.1:9", **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, 0.0),
        ([1.0], 0.99, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.76, 4.0),
        ([float(i) for i in range(1, 1001)], 0.99, 990.0),
        ([float(i) for i in range(1, 1001)], 0.999, 999.0),
    ],
)
def test_percentile_is_nearest_rank(values, fraction, expected):
    assert percentile(values, fraction) == expected


def test_summary_in_milliseconds():
    report = BenchReport(
        target="127.0.0.1:7071", mode="wire", rate=2.0, duration=2.0, sent=4, hits=2, misses=1, errors=0, timeouts=1,
        elapsed=2.0, latencies=(0.0001, 0.0002, 0.0004), lags=(0.0, 0.001, 0.002, 0.003),
    )
    assert report.summary() == {
        "target": "127.0.0.1:7071", "mode": "wire", "rate": 2.0, "duration": 2.0, "sent": 4, "answered": 3,
        "hits": 2, "misses": 1, "errors": 0, "timeouts": 1, "achieved_rate": 2.0,
        "latency_ms": {"p50": 0.2, "p90": 0.4, "p99": 0.4, "p999": 0.4, "max": 0.4},
        "schedule_lag_ms": {"p50": 1.0, "p99": 3.0, "max": 3.0},
    }
