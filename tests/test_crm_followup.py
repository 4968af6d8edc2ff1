"""followup.deliver: a hand-over the caller was promised is retried until the call's deadline.

With a scripted fake CRM under the autojump clock: the exact retry schedule, what
is retried and what is not, the deadline, cancellation, and the bounded log. With
the real client and the real embedded CRM: a CRM that comes up late (real time,
bounded), one that never comes up (autojump clock), an answer lost on the way back
(the retry gets the same id, one row), and an invalid-params answer (no retry).
"""

from __future__ import annotations

import datetime
import functools
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from eko_rtp.crm.address import parse_crm_address
from eko_rtp.crm.client import CrmClient, CrmClientSettings, open_crm_client
from eko_rtp.crm.errors import CrmRemoteError, CrmReplyError, CrmTimeout, CrmUnavailable, RpcProtocolError
from eko_rtp.crm.followup import FollowupStats, deliver
from eko_rtp.crm.records import CallbackRequest, TicketRequest
from eko_rtp.crm.server import serve_crm

FAST = CrmClientSettings(backoff_initial=0.01, backoff_max=0.1)
UTC = datetime.timezone.utc
TICKET = TicketRequest(call_id="c1@eko", phone="+33612345678", reason="Plus d'internet", category="internet",
                       created_at=datetime.datetime(2026, 3, 6, 14, 5, tzinfo=UTC))
CALLBACK = CallbackRequest(call_id="c1@eko", phone="+33612345678", reason="", not_before=None, queue="technicians")
TICKET_TEXT = "ticket (internet) for call 'c1@eko' from +*******5678"
STALL = "stall"


class ScriptedCrm:
    """Answers attempt n with answers[n]: an error to raise, STALL (no answer before the timeout) or an id."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.attempts: list[tuple[float, str, float]] = []  # (when, method, timeout)

    async def create_ticket(self, request: TicketRequest, timeout: float) -> str:
        return await self._answer("crm.create_ticket", timeout)

    async def request_callback(self, request: CallbackRequest, timeout: float) -> str:
        return await self._answer("crm.request_callback", timeout)

    async def _answer(self, method: str, timeout: float) -> str:
        self.attempts.append((trio.current_time(), method, timeout))
        await trio.lowlevel.checkpoint()
        answer = self.answers.pop(0) if self.answers else CrmUnavailable("no connection to CRM at fake")
        if answer == STALL:
            await trio.sleep(timeout)
            raise CrmTimeout(f"CRM at fake gave no answer to {method} within {timeout * 1000:.0f} ms")
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, str)
        return answer


def followup_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records if record.name == "eko_rtp.crm.followup"]


def attempt_times(crm: ScriptedCrm, start: float) -> list[float]:
    return [round(when - start, 9) for when, _, _ in crm.attempts]


async def test_retries_with_a_doubling_backoff_until_the_crm_takes_it(autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    crm = ScriptedCrm(CrmUnavailable("no connection to CRM at fake"), STALL, RpcProtocolError("CRM at fake broke the protocol"),
                      CrmRemoteError("CRM error 3 for crm.create_ticket: the CRM store failed", code=3), "T-1")
    stats = FollowupStats()
    start = trio.current_time()
    assert await deliver(crm, TICKET, deadline=start + 60, stats=stats) == "T-1"
    # 0.2 s, (a 2 s stall), 0.4 s, 0.8 s, 1.6 s.
    assert attempt_times(crm, start) == [0.0, 0.2, 2.6, 3.4, 5.0]
    assert [timeout for _, _, timeout in crm.attempts] == [2.0] * 5
    assert stats == FollowupStats(requests=1, attempts=5, failures=4, delivered=1)
    assert followup_lines(caplog) == [
        ("WARNING", f"CRM did not take the {TICKET_TEXT} (attempt 1): no connection to CRM at fake; retrying in 0.2 s"),
        ("WARNING", f"CRM did not take the {TICKET_TEXT} (attempt 2): CRM at fake gave no answer to crm.create_ticket "
                    "within 2000 ms; retrying in 0.4 s"),
        ("WARNING", f"CRM did not take the {TICKET_TEXT} (attempt 4): CRM error 3 for crm.create_ticket: the CRM store "
                    "failed; retrying in 1.6 s"),
        ("INFO", f"CRM took the {TICKET_TEXT} at attempt 5"),
    ]


@pytest.mark.parametrize(
    "error",
    [
        CrmRemoteError("CRM error 2 for crm.request_callback: bad crm.request_callback params: x", code=2),
        CrmRemoteError("CRM error 1 for crm.request_callback: unknown method 'crm.request_callback'", code=1),
        CrmRemoteError("CRM error for crm.request_callback: no", code=None),
        CrmReplyError("bad crm.request_callback reply: callback_id must not be empty"),
    ],
    ids=["invalid_params", "unknown_method", "bare_string", "bad_reply"],
)
async def test_an_answer_that_asking_again_would_repeat_is_not_retried(autojump_clock, caplog, error):
    crm = ScriptedCrm(error, "C-1")
    stats = FollowupStats()
    start = trio.current_time()
    assert await deliver(crm, CALLBACK, deadline=start + 60, stats=stats) is None
    assert trio.current_time() == start
    assert [method for _, method, _ in crm.attempts] == ["crm.request_callback"]
    assert stats == FollowupStats(requests=1, attempts=1, failures=1, refused=1)
    assert followup_lines(caplog) == [
        ("ERROR", "CRM refused the callback (queue technicians, when the service opens) for call 'c1@eko' to "
                  f"+*******5678; it is lost: {error}"),
    ]


async def test_gives_up_when_the_next_attempt_would_start_past_the_deadline(autojump_clock, caplog):
    crm = ScriptedCrm()  # never there
    stats = FollowupStats()
    start = trio.current_time()
    assert await deliver(crm, TICKET, deadline=start + 3.5, stats=stats) is None
    # 0, 0.2, 0.6, 1.4, 3.0; the next would be at 5.0.
    assert attempt_times(crm, start) == [0.0, 0.2, 0.6, 1.4, 3.0]
    assert round(trio.current_time() - start, 9) == 3.0
    assert stats == FollowupStats(requests=1, attempts=5, failures=5, gave_up=1)
    assert [level for level, _ in followup_lines(caplog)] == ["WARNING"] * 3 + ["ERROR"]  # attempts 1, 2, 4
    assert followup_lines(caplog)[-1] == (
        "ERROR", f"CRM gave up on the {TICKET_TEXT} after 5 attempts; it is lost: no connection to CRM at fake")


async def test_a_stalled_crm_gets_only_what_is_left_of_the_deadline(autojump_clock):
    crm = ScriptedCrm(STALL, STALL)
    stats = FollowupStats()
    start = trio.current_time()
    assert await deliver(crm, TICKET, deadline=start + 2.5, stats=stats) is None
    assert [(round(when - start, 9), round(timeout, 9)) for when, _, timeout in crm.attempts] == [(0.0, 2.0), (2.2, 0.3)]
    assert round(trio.current_time() - start, 9) == 2.5
    assert stats == FollowupStats(requests=1, attempts=2, failures=2, gave_up=1)


async def test_a_deadline_already_past_is_one_error_line(autojump_clock, caplog):
    stats = FollowupStats()
    assert await deliver(ScriptedCrm("T-1"), TICKET, deadline=trio.current_time(), stats=stats) is None
    assert stats == FollowupStats(requests=1, gave_up=1)
    assert followup_lines(caplog) == [
        ("ERROR", f"CRM gave up on the {TICKET_TEXT} after 0 attempts; it is lost: the deadline had passed")]


async def test_the_log_stays_bounded_over_a_long_outage(autojump_clock, caplog):
    stats = FollowupStats()
    start = trio.current_time()
    assert await deliver(ScriptedCrm(), TICKET, deadline=start + 600, stats=stats) is None
    assert stats.attempts == 303  # 0.2 + 0.4 + 0.8 + 1.6, then every 2 s
    warnings = [message for level, message in followup_lines(caplog) if level == "WARNING"]
    assert [message.split("(attempt ", 1)[1].split(")")[0] for message in warnings] == [
        "1", "2", "4", "8", "16", "32", "64", "128", "256"]


async def test_a_call_that_ends_first_is_logged_and_counted(autojump_clock, caplog):
    crm = ScriptedCrm()
    stats = FollowupStats()
    start = trio.current_time()
    with trio.move_on_after(1.0) as scope:
        await deliver(crm, TICKET, deadline=start + 60, stats=stats)
    assert scope.cancelled_caught
    assert attempt_times(crm, start) == [0.0, 0.2, 0.6]
    assert stats == FollowupStats(requests=1, attempts=3, failures=3, cancelled=1)
    assert followup_lines(caplog)[-1] == (
        "ERROR", f"CRM {TICKET_TEXT} not confirmed before the call ended after 3 attempts; it may be lost")


def test_bad_backoff_is_refused():
    with pytest.raises(ValueError, match=r"^backoff must satisfy 0 < backoff_initial <= backoff_max, got 3, 2$"):
        trio.run(lambda: deliver(ScriptedCrm(), TICKET, deadline=1, stats=FollowupStats(), backoff_initial=3,
                                 backoff_max=2))


# The real client and the real embedded CRM.


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchall()


@pytest.mark.parametrize(("request_", "table", "expected"), [
    (TICKET, "call_tickets", "eko-t000001"),
    (CALLBACK, "callbacks", "eko-c000001"),
], ids=["ticket", "callback"])
async def test_a_crm_that_comes_up_later_gets_the_request_once(tmp_path, request_, table, expected):
    socket_path = str(tmp_path / "crm.sock")
    db = tmp_path / "crm.sqlite3"
    stats = FollowupStats()
    async with open_crm_client(socket_path, settings=FAST) as client:
        assert not client.connected
        async with trio.open_nursery() as nursery:
            async def start_crm_later() -> None:
                await trio.sleep(0.3)
                await nursery.start(serve_crm, parse_crm_address(socket_path), db)

            nursery.start_soon(start_crm_later)
            began = trio.current_time()
            created = await deliver(client, request_, deadline=began + 10, stats=stats,
                                    backoff_initial=0.05, backoff_max=0.2)
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert created == expected
    assert 0.3 <= took < 3.0
    assert stats.failures >= 2 and stats.attempts == stats.failures + 1
    assert attrs.evolve(stats, attempts=0, failures=0) == FollowupStats(requests=1, delivered=1)
    assert rows(db, f"SELECT call_id FROM {table}") == [("c1@eko",)]


async def test_a_crm_that_never_comes_up_loses_the_request_loudly(tmp_path, autojump_clock, caplog):
    socket_path = str(tmp_path / "crm.sock")  # nothing ever listens here
    stats = FollowupStats()
    async with open_crm_client(socket_path, settings=FAST) as client:
        start = trio.current_time()
        assert await deliver(client, TICKET, deadline=start + 3.5, stats=stats) is None
        assert round(trio.current_time() - start, 9) == 3.0
    assert stats == FollowupStats(requests=1, attempts=5, failures=5, gave_up=1)
    assert client.stats.errors == 5
    assert followup_lines(caplog)[-1] == (
        "ERROR", f"CRM gave up on the {TICKET_TEXT} after 5 attempts; it is lost: no connection to CRM at {socket_path}")
    # The client leaves the failures of a retried request to deliver: no warning per attempt.
    assert [r.getMessage() for r in caplog.records if r.name == "eko_rtp.crm.client" and r.levelno >= logging.WARNING] == [
        f"CRM at {socket_path} unreachable ([Errno 2] No such file or directory); retrying with backoff"]


class LosingProxy:
    """Forwards to the CRM, but on its first connection drops the CRM's first answer and hangs up."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.connections = 0

    async def handle(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        lose_an_answer = self.connections == 1
        async with downstream, await trio.open_tcp_stream(self.host, self.port) as upstream:
            async with trio.open_nursery() as nursery:
                async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, downstream, upstream)
                if lose_an_answer:
                    assert await upstream.receive_some(65536)  # the CRM acted and answered: lost
                    nursery.cancel_scope.cancel()
                else:
                    await pump(upstream, downstream)


async def test_a_retry_after_a_lost_answer_gets_the_same_ticket(tmp_path):
    db = tmp_path / "crm.sqlite3"
    stats = FollowupStats()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_crm, parse_crm_address("127.0.0.1:0"), db)
        proxy = LosingProxy(bound[0])
        listeners = await nursery.start(functools.partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
        through_proxy = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with open_crm_client(through_proxy, settings=FAST) as client:
            with trio.fail_after(5):
                await client.wait_connected()
            created = await deliver(client, TICKET, deadline=trio.current_time() + 10, stats=stats,
                                    backoff_initial=0.05, backoff_max=0.2)
            crm_stats = await client.request("crm.stats", [], timeout=2.0)
        nursery.cancel_scope.cancel()
    assert created == "eko-t000001"
    assert stats.failures >= 1 and stats.delivered == 1
    assert proxy.connections == 2
    assert (crm_stats["tickets_opened"], crm_stats["repeated_requests"]) == (1, 1)
    assert rows(db, "SELECT ticket_id, call_id FROM call_tickets") == [("eko-t000001", "c1@eko")]


class SkewedCrm:
    """The real client, sending a category this CRM refuses (what a version skew looks like)."""

    def __init__(self, client: CrmClient, skew: Callable[[dict], dict]) -> None:
        self.client = client
        self.skew = skew

    async def create_ticket(self, request: TicketRequest, timeout: float) -> str:
        result = await self.client.request("crm.create_ticket", [self.skew(request.to_wire())], timeout=timeout)
        return result["ticket_id"]

    async def request_callback(self, request: CallbackRequest, timeout: float) -> str:
        raise AssertionError("not used")


async def test_an_invalid_params_answer_from_the_real_crm_is_not_retried(tmp_path, caplog):
    db = tmp_path / "crm.sqlite3"
    stats = FollowupStats()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_crm, parse_crm_address("127.0.0.1:0"), db)
        async with open_crm_client(bound[0], settings=FAST) as client:
            with trio.fail_after(5):
                await client.wait_connected()
            skewed = SkewedCrm(client, lambda wire: {**wire, "category": "Internet"})
            assert await deliver(skewed, TICKET, deadline=trio.current_time() + 10, stats=stats) is None
            crm_stats = await client.request("crm.stats", [], timeout=2.0)
        nursery.cancel_scope.cancel()
    assert stats == FollowupStats(requests=1, attempts=1, failures=1, refused=1)
    assert crm_stats["requests"] == 2  # the one attempt, and crm.stats
    assert rows(db, "SELECT count(*) FROM call_tickets") == [(0,)]
    assert followup_lines(caplog) == [
        ("ERROR", f"CRM refused the {TICKET_TEXT}; it is lost: CRM error 2 for crm.create_ticket: bad crm.create_ticket "
                  "params: category must be a lowercase word of a-z and _ (32 characters at most), got 'Internet'")]
