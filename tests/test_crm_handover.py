"""Hand-overs through the real embedded CRM: tickets, callbacks and the script outcome.

The real server (serve_crm, in-process) on loopback TCP or a Unix socket in
tmp_path, with a real SQLite file, driven by the real client: round trips and the
rows they leave, idempotency by call_id, the exact answer to every kind of bad
params, and call logs with and without a script outcome.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from eko_rtp.crm.address import parse_crm_address
from eko_rtp.crm.client import CrmClient, CrmClientSettings, open_crm_client
from eko_rtp.crm.errors import CrmRemoteError
from eko_rtp.crm.records import CallbackRequest, CallLog, TicketRequest
from eko_rtp.crm.rpc import RpcConnection
from eko_rtp.crm.server import WRITES_IN_FLIGHT, serve_crm

FAST = CrmClientSettings(backoff_initial=0.01, backoff_max=0.1)
UTC = datetime.timezone.utc
ASKED = datetime.datetime(2026, 3, 6, 14, 5, tzinfo=UTC)
TICKET = TicketRequest(call_id="c1@eko", phone="+33612345678", reason="Plus d'internet depuis hier soir",
                       category="internet", created_at=ASKED)
CALLBACK = CallbackRequest(call_id="c1@eko", phone="+33612345678", reason="La box clignote",
                           not_before=datetime.datetime(2026, 3, 7, 8, 0, tzinfo=UTC), queue="technicians")


@attrs.frozen
class ServedCrm:
    address: str
    db: Path


@asynccontextmanager
async def served_crm(listen: str, db: Path) -> AsyncIterator[ServedCrm]:
    """The embedded CRM in this trio run until the block ends."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_crm, parse_crm_address(listen), db)
        try:
            yield ServedCrm(address=bound[0], db=db)
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def crm_and_client(tmp_path: Path, listen: str = "127.0.0.1:0") -> AsyncIterator[tuple[ServedCrm, CrmClient]]:
    async with served_crm(listen, tmp_path / "crm.sqlite3") as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            with trio.fail_after(5):
                await client.wait_connected()
            yield crm, client


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchall()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_tickets_and_callbacks_round_trip_into_their_tables(tmp_path, transport):
    listen = "127.0.0.1:0" if transport == "tcp" else str(tmp_path / "crm.sock")
    async with crm_and_client(tmp_path, listen) as (crm, client):
        assert await client.create_ticket(TICKET, 2.0) == "eko-t000001"
        anonymous = attrs.evolve(TICKET, call_id="c2@eko", phone=None, reason="", category="other")
        assert await client.create_ticket(anonymous, 2.0) == "eko-t000002"
        assert await client.request_callback(CALLBACK, 2.0) == "eko-c000001"
        soon = attrs.evolve(CALLBACK, call_id="c3@eko", not_before=None, queue="billing")
        assert await client.request_callback(soon, 2.0) == "eko-c000002"
        stats = await client.request("crm.stats", [], timeout=2.0)
        assert (stats["tickets_opened"], stats["callbacks_booked"], stats["repeated_requests"]) == (2, 2, 0)
        assert client.stats.errors == 0
    assert rows(crm.db, "SELECT id, ticket_id, call_id, phone, category, reason, created_at FROM call_tickets") == [
        (1, "eko-t000001", "c1@eko", "+33612345678", "internet", "Plus d'internet depuis hier soir",
         "2026-03-06T14:05:00+00:00"),
        (2, "eko-t000002", "c2@eko", None, "other", "", "2026-03-06T14:05:00+00:00"),
    ]
    assert rows(crm.db, "SELECT id, callback_id, call_id, phone, reason, not_before, queue FROM callbacks") == [
        (1, "eko-c000001", "c1@eko", "+33612345678", "La box clignote", "2026-03-07T08:00:00+00:00", "technicians"),
        (2, "eko-c000002", "c3@eko", "+33612345678", "La box clignote", None, "billing"),
    ]
    received = rows(crm.db, "SELECT received_at FROM call_tickets UNION ALL SELECT received_at FROM callbacks")
    assert all(datetime.datetime.fromisoformat(at).tzinfo == UTC for (at,) in received)


async def test_a_repeat_for_the_same_call_gets_the_same_id_and_adds_no_row(tmp_path):
    async with crm_and_client(tmp_path) as (crm, client):
        first = await client.create_ticket(TICKET, 2.0)
        # A retry after a lost answer; even with other words, the call keeps its first ticket.
        assert await client.create_ticket(attrs.evolve(TICKET, reason="autre chose"), 2.0) == first
        # Concurrent repeats on one connection, and callbacks alike.
        ids: list[str] = []

        async def book() -> None:
            ids.append(await client.request_callback(CALLBACK, 2.0))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(book)
        assert ids == ["eko-c000001"] * 3
        stats = await client.request("crm.stats", [], timeout=2.0)
        assert (stats["tickets_opened"], stats["callbacks_booked"], stats["repeated_requests"]) == (1, 1, 3)
    assert rows(crm.db, "SELECT ticket_id, call_id, reason FROM call_tickets") == [
        ("eko-t000001", "c1@eko", "Plus d'internet depuis hier soir")]
    assert rows(crm.db, "SELECT callback_id, call_id FROM callbacks") == [("eko-c000001", "c1@eko")]
    # The database itself holds to one per call.
    with sqlite3.connect(crm.db) as connection, pytest.raises(
            sqlite3.IntegrityError, match=r"^UNIQUE constraint failed: call_tickets.call_id$"):
        connection.execute("INSERT INTO call_tickets (ticket_id, call_id, category, reason, created_at, received_at) "
                           "VALUES ('x', 'c1@eko', 'tv', '', '', '')")


GOOD_TICKET = TICKET.to_wire()
GOOD_CALLBACK = CALLBACK.to_wire()
WORD = "must be a lowercase word of a-z and _ (32 characters at most), got"


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("crm.create_ticket", [], "crm.create_ticket takes 1 parameter, got 0"),
        ("crm.create_ticket", [GOOD_TICKET, GOOD_TICKET], "crm.create_ticket takes 1 parameter, got 2"),
        ("crm.create_ticket", ["c1@eko"], "bad crm.create_ticket params: ticket must be a map, got str"),
        ("crm.create_ticket", [{**GOOD_TICKET, "reason": "x" * 2001}],
         "bad crm.create_ticket params: reason is longer than 2000 characters"),
        ("crm.create_ticket", [{**GOOD_TICKET, "category": "TV"}], f"bad crm.create_ticket params: category {WORD} 'TV'"),
        ("crm.create_ticket", [{**GOOD_TICKET, "phone": "06 12 34 56 78"}],
         "bad crm.create_ticket params: phone must be an E.164 number (+ and 8 to 15 digits), got '06 12 34 56 78'"),
        ("crm.create_ticket", [{k: v for k, v in GOOD_TICKET.items() if k != "call_id"}],
         "bad crm.create_ticket params: ticket lacks required key 'call_id'"),
        ("crm.create_ticket", [{**GOOD_TICKET, "created_at": None}],
         "bad crm.create_ticket params: created_at must be a string, got NoneType"),
        ("crm.request_callback", [], "crm.request_callback takes 1 parameter, got 0"),
        ("crm.request_callback", [{**GOOD_CALLBACK, "phone": None}],
         "bad crm.request_callback params: phone must be a string, got NoneType"),
        ("crm.request_callback", [{**GOOD_CALLBACK, "not_before": "tomorrow 8am"}],
         "bad crm.request_callback params: not_before is not an ISO-8601 timestamp: 'tomorrow 8am'"),
        ("crm.request_callback", [{**GOOD_CALLBACK, "queue": "x" * 33}],
         f"bad crm.request_callback params: queue {WORD} {'x' * 33!r}"),
        ("crm.request_callback", [{**GOOD_CALLBACK, "call_id": ""}], "bad crm.request_callback params: call_id must not be empty"),
    ],
)
async def test_bad_params_get_an_exact_invalid_params_answer_and_write_nothing(tmp_path, method, params, message):
    async with crm_and_client(tmp_path) as (crm, client):
        with pytest.raises(CrmRemoteError) as caught:
            await client.request(method, params, timeout=2.0)
        assert str(caught.value) == f"CRM error 2 for {method}: {message}"
        assert (caught.value.code, caught.value.method) == (2, method)
        # The connection carries on.
        assert await client.create_ticket(TICKET, 2.0) == "eko-t000001"
        assert client.stats.connects == 1
    assert rows(crm.db, "SELECT count(*) FROM callbacks") == [(0,)]
    assert rows(crm.db, "SELECT call_id FROM call_tickets") == [("c1@eko",)]


async def test_a_store_failure_is_an_internal_error_and_the_server_carries_on(tmp_path):
    async with crm_and_client(tmp_path) as (crm, client):
        with sqlite3.connect(crm.db) as connection:
            connection.execute("DROP TABLE callbacks")
        with pytest.raises(CrmRemoteError) as caught:
            await client.request_callback(CALLBACK, 2.0)
        assert str(caught.value) == "CRM error 3 for crm.request_callback: the CRM store failed"
        assert await client.create_ticket(TICKET, 2.0) == "eko-t000001"


async def test_the_script_outcome_is_stored_and_a_log_without_one_is_accepted(tmp_path):
    async with crm_and_client(tmp_path) as (crm, client):
        client.log_call(CallLog(call_id="new@eko", phone=None, greeting=("greet", "welcome"), duration_ms=42_000,
                                outcome="remote_bye", script_outcome="callback_offered"))
        # A client from before the script outcome (and the quality figures): raw bytes.
        old = {"call_id": "old@eko", "phone": None, "greeting": "greet", "duration_ms": 1000, "outcome": "local_bye"}
        host, port = crm.address.rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(RpcConnection().send_notification("crm.log_call", [old]))
            with trio.fail_after(5):
                while (await client.request("crm.stats", [], timeout=2.0))["call_logs_written"] < 2:
                    await trio.sleep(0.01)
    assert rows(crm.db, "SELECT call_id, outcome, script_outcome, loss_ratio FROM call_log ORDER BY call_id") == [
        ("new@eko", "remote_bye", "callback_offered", None),
        ("old@eko", "local_bye", None, None),
    ]


async def test_a_write_waiting_for_the_database_does_not_hold_up_lookups_behind_it(tmp_path):
    async with crm_and_client(tmp_path) as (crm, client):
        # Another writer (a seed, say) holds SQLite's write lock: the ticket must wait.
        blocker = sqlite3.connect(crm.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        created: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                async def open_ticket() -> None:
                    created.append(await client.create_ticket(TICKET, 10.0))

                nursery.start_soon(open_ticket)
                await trio.sleep(0.1)
                # On the same connection, behind the waiting write: answered at once.
                for _ in range(20):
                    with trio.fail_after(0.5):
                        assert await client.lookup_caller("+33600000000", 0.5) is None
                assert created == []
                blocker.execute("COMMIT")
        finally:
            blocker.close()
        assert created == ["eko-t000001"]
        assert client.stats.connects == 1


async def test_waiting_writes_are_bounded_and_finished_after_the_client_leaves(tmp_path):
    async with served_crm("127.0.0.1:0", tmp_path / "crm.sqlite3") as crm:
        blocker = sqlite3.connect(crm.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every write waits
        try:
            async with open_crm_client(crm.address, settings=FAST) as observer:
                polls = 0

                async def requests_read() -> int:
                    nonlocal polls
                    polls += 1  # crm.stats counts itself
                    return (await observer.request("crm.stats", [], timeout=2.0))["requests"] - polls

                host, port = crm.address.rsplit(":", 1)
                rpc = RpcConnection()
                async with await trio.open_tcp_stream(host, int(port)) as stream:
                    # In one write, so the server reads them all before its first answer:
                    # requests still unread when a peer that left resets the connection are lost.
                    await stream.send_all(b"".join(
                        rpc.send_request("crm.create_ticket", [{**TICKET.to_wire(), "call_id": f"c{index}@eko"}])[1]
                        for index in range(20)))
                    with trio.fail_after(5):
                        await observer.wait_connected()
                        while await requests_read() < WRITES_IN_FLIGHT + 1:
                            await trio.sleep(0.01)
                    await trio.sleep(0.1)
                    # 16 writes wait; the 17th waits for room, and the connection's reading with it.
                    assert await requests_read() == WRITES_IN_FLIGHT + 1
                # The client left without its answers; the writes it started are still made.
                blocker.execute("COMMIT")
                with trio.fail_after(5):
                    while (await observer.request("crm.stats", [], timeout=2.0))["tickets_opened"] < 20:
                        await trio.sleep(0.01)
        finally:
            blocker.close()
    assert rows(crm.db, "SELECT count(*), count(DISTINCT call_id) FROM call_tickets") == [(20, 20)]
