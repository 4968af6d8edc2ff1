"""The embedded CRM as a real `eko-rtp crm serve` subprocess, driven by the real client.

Covers seeding (idempotent), look-ups of every kind of sample caller over TCP and a
Unix socket, multiplexing on one connection (counted by the server), error answers
and garbage, call logs (written in the writer thread, drained at SIGTERM), a CRM
killed mid-run and one stalled with SIGSTOP; and the serving store in-process
(inline reads on a read-only connection, writes in its thread).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from eko_rtp.call.greeting import choose_greeting
from eko_rtp.crm.client import CrmClientSettings, open_crm_client
from eko_rtp.crm.errors import CrmRemoteError, CrmTimeout, CrmUnavailable
from eko_rtp.crm.records import CallLog
from eko_rtp.crm.store import ServingCrmStore

EKO = [sys.executable, "-m", "eko_rtp"]
FAST = CrmClientSettings(backoff_initial=0.01, backoff_max=0.1)

# docs/crm-rpc.md, "Sample customers".
SAMPLES = [
    ("+33612345678", "cli-0001", ("returning_client_pending_internet",)),
    ("+33623456789", "cli-0002", ("returning_client_pending_mobile",)),
    ("+33145678901", "cli-0003", ("returning_client_no_ticket",)),  # only a closed ticket
    ("+33634567890", "cli-0004", ("returning_client_pending_mobile",)),  # newer mobile beats older internet
    ("+33556789012", "cli-0005", ("returning_client_pending_internet",)),
    ("+33698765432", "cli-0006", ("returning_client_no_ticket",)),
    ("+33387654321", "cli-0007", ("returning_client_no_ticket",)),  # billing ticket: no phrase
]
UNKNOWN = "+33600000000"


def seed(db: Path, *extra: str) -> str:
    done = subprocess.run([*EKO, "crm", "seed", "--db", str(db), *extra], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class CrmProcess:
    def __init__(self, db: Path, listen: str, log_path: Path) -> None:
        self.db, self.listen, self.log_path = db, listen, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    async def start(self) -> str:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*EKO, "crm", "serve", "--listen", self.listen, "--db", str(self.db)],
                                        stdout=log, stderr=log)
        log.close()
        for _ in range(200):  # up to 10 s for the interpreter to start
            for line in self.log_path.read_text().splitlines()[::-1]:
                if "CRM listening on " in line:
                    self.address = line.split("CRM listening on ", 1)[1].split(" (database", 1)[0]
                    return self.address
            assert self.process.poll() is None, self.log_path.read_text()
            await trio.sleep(0.05)
        raise AssertionError(f"no 'CRM listening' line: {self.log_path.read_text()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        return self.process.wait(timeout=10)


@asynccontextmanager
async def running_crm(tmp_path: Path, listen: str = "127.0.0.1:0") -> AsyncIterator[CrmProcess]:
    db = tmp_path / "crm.sqlite3"
    seed(db)
    crm = CrmProcess(db, listen, tmp_path / "crm.log")
    await crm.start()
    try:
        yield crm
    finally:
        crm.stop()


def test_seed_twice_does_not_duplicate(tmp_path):
    db = tmp_path / "var" / "crm.sqlite3"
    first = seed(db)
    second = seed(db, "--synthetic", "1000")
    third = seed(db, "--synthetic", "1000")
    assert first.startswith(f"seeded 7 sample and 0 synthetic clients into {db} in ")
    assert first.rstrip().endswith("; now 7 clients, 7 tickets")
    assert second.rstrip().endswith("; now 1007 clients, 207 tickets")
    assert third.rstrip().endswith("; now 1007 clients, 207 tickets")
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*), count(DISTINCT phone) FROM clients").fetchone() == (1007, 1007)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_lookup_every_kind_of_caller(tmp_path, transport):
    listen = "127.0.0.1:0" if transport == "tcp" else str(tmp_path / "crm.sock")
    async with running_crm(tmp_path, listen) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            assert await client.version(timeout=2.0) == "1"
            for phone, client_id, greeting in SAMPLES:
                record = await client.lookup_caller(phone, 2.0)
                assert record is not None and record.client_id == client_id
                assert choose_greeting(record) == greeting
            assert await client.lookup_caller(UNKNOWN, 2.0) is None
            # National spellings are normalised by the embedded CRM too.
            assert (await client.lookup_caller("06 12 34 56 78", 2.0)).name == "Camille Martin"
            thomas = await client.lookup_caller("+33634567890", 2.0)
            assert [(t.id, t.problem_type, t.status) for t in thomas.open_tickets] == [
                ("tck-1003", "internet", "open"), ("tck-1004", "mobile", "open")]
        assert crm.stop() == 0
    if transport == "unix":
        assert not Path(listen).exists()


async def test_concurrent_lookups_are_multiplexed_on_one_connection(tmp_path):
    async with running_crm(tmp_path) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            names: list[str] = []

            async def lookup(phone: str) -> None:
                record = await client.lookup_caller(phone, 5.0)
                names.append(record.client_id if record else "unknown")

            async with trio.open_nursery() as nursery:
                for index in range(200):
                    nursery.start_soon(lookup, SAMPLES[index % len(SAMPLES)][0] if index % 8 else UNKNOWN)
            assert len(names) == 200 and names.count("unknown") == 25
            stats = await client.request("crm.stats", [], timeout=2.0)
            assert stats["connections_accepted"] == 1
            assert stats["requests"] == 201
            assert client.stats.connects == 1


async def test_bad_requests_get_error_answers_and_garbage_closes_only_its_connection(tmp_path):
    async with running_crm(tmp_path) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            with pytest.raises(CrmRemoteError, match=r"^CRM error 2 for crm.lookup_caller: crm.lookup_caller phone must be a string of at most 64 characters$"):
                await client.request("crm.lookup_caller", [612345678], timeout=2.0)
            with pytest.raises(CrmRemoteError, match=r"^CRM error 2 for crm.lookup_caller: crm.lookup_caller takes 1 parameter, got 0$"):
                await client.request("crm.lookup_caller", [], timeout=2.0)
            with pytest.raises(CrmRemoteError, match=r"^CRM error 1 for crm.drop_tables: unknown method 'crm.drop_tables'$") as caught:
                await client.request("crm.drop_tables", [], timeout=2.0)
            assert caught.value.code == 1
            host, port = crm.address.rsplit(":", 1)
            garbage = await trio.open_tcp_stream(host, int(port))
            await garbage.send_all(b"\xc1 this is not msgpack")
            with trio.fail_after(5):
                assert await garbage.receive_some(100) == b""  # the server closed it
            await garbage.aclose()
            assert (await client.lookup_caller("+33612345678", 2.0)).client_id == "cli-0001"
            stats = await client.request("crm.stats", [], timeout=2.0)
            assert (stats["connections_accepted"], stats["connections_open"], stats["protocol_errors"]) == (2, 1, 1)
            assert client.stats.connects == 1
        assert "CRM closing a connection: undecodable msgpack" in crm.log_path.read_text()


DEEP_REQUESTS = [
    b"\x91" * 1000 + b"\xc0",  # 1,001 bytes: a list 1001 deep, whose repr ended the server (issue 17)
    b"\x81\xa1k" * 1000 + b"\xc0",  # maps
    b"\x94\x00\x01\xb1crm.lookup_caller" + b"\x91" * 1000 + b"\xc0",  # a well-formed request, deep params
    b"\x91" * 5000 + b"\xc0",  # deeper than msgpack's own stack
]


async def test_deeply_nested_messages_close_only_their_connection(tmp_path):
    async with running_crm(tmp_path) as crm:
        host, port = crm.address.rsplit(":", 1)
        for data in DEEP_REQUESTS:
            hostile = await trio.open_tcp_stream(host, int(port))
            await hostile.send_all(data)
            with trio.fail_after(5):
                assert await hostile.receive_some(100) == b""  # the server closed it
            await hostile.aclose()
        assert crm.process.poll() is None
        async with open_crm_client(crm.address, settings=FAST) as client:
            assert (await client.lookup_caller("+33612345678", 2.0)).client_id == "cli-0001"
            stats = await client.request("crm.stats", [], timeout=2.0)
        assert (stats["connections_accepted"], stats["protocol_errors"]) == (5, 4)
        assert crm.log_path.read_text().count(
            "CRM closing a connection: message nests deeper than 16 levels") == len(DEEP_REQUESTS)


async def test_log_call_counts_the_call(tmp_path):
    async with running_crm(tmp_path) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            client.log_call(CallLog(call_id="a@b", phone="+33698765432", greeting=("returning_client_no_ticket",),
                                    duration_ms=31_000, outcome="completed"))
            with trio.fail_after(5):
                while (await client.lookup_caller("+33698765432", 2.0)).calls_count != 1:
                    await trio.sleep(0.02)
        with sqlite3.connect(crm.db) as connection:
            assert connection.execute("SELECT call_id, phone, greeting, duration_ms, outcome FROM call_log").fetchall() == [
                ("a@b", "+33698765432", "returning_client_no_ticket", 31000, "completed")]


async def test_killed_crm_fails_pending_requests_at_once_and_client_reconnects(tmp_path):
    async with running_crm(tmp_path) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            assert await client.lookup_caller("+33612345678", 2.0) is not None
            crm.signal(signal.SIGSTOP)  # so the next requests stay pending
            failures: list[str] = []

            async def lookup() -> None:
                try:
                    await client.lookup_caller("+33612345678", 10.0)
                except CrmUnavailable as error:
                    failures.append(str(error))

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(lookup)
                await trio.sleep(0.2)
                began = time.monotonic()
                crm.signal(signal.SIGKILL)
            assert time.monotonic() - began < 2.0  # at once, not at the 10 s deadline
            # The killed process's kernel resets the connection (it had unread requests).
            assert failures == [
                f"connection to CRM at {crm.address} failed: socket connection broken: [Errno 104] Connection reset by peer"
            ] * 3
            crm.process.wait(timeout=10)
            with pytest.raises(CrmUnavailable):
                await client.lookup_caller("+33612345678", 1.0)
            # Back on the same address: the client finds it on its own.
            crm.listen = crm.address
            await crm.start()
            with trio.fail_after(10):
                await client.wait_connected()
            assert (await client.lookup_caller("+33612345678", 2.0)).client_id == "cli-0001"
            assert client.stats.connects == 2


async def test_stalled_crm_honours_deadlines_then_recovers(tmp_path):
    async with running_crm(tmp_path) as crm:
        async with open_crm_client(crm.address, settings=FAST) as client:
            assert await client.lookup_caller("+33612345678", 2.0) is not None
            crm.signal(signal.SIGSTOP)
            try:
                began = time.monotonic()
                with pytest.raises(CrmTimeout):
                    await client.lookup_caller("+33612345678", 0.3)
                assert 0.3 <= time.monotonic() - began < 1.0
            finally:
                crm.signal(signal.SIGCONT)
            assert (await client.lookup_caller("+33623456789", 2.0)).client_id == "cli-0002"
            assert client.stats.timeouts == 1
            assert client.stats.connects == 1  # the same connection survived the stall


async def test_sigterm_stops_the_server(tmp_path):
    async with running_crm(tmp_path) as crm:
        crm.signal(signal.SIGTERM)
        assert crm.process.wait(timeout=10) == 0
        assert "CRM stopping on SIGTERM" in crm.log_path.read_text()


def test_bad_listen_address_is_a_user_error(tmp_path):
    done = subprocess.run([*EKO, "crm", "serve", "--listen", "localhost", "--db", str(tmp_path / "x.db")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "eko-rtp: error: CRM address 'localhost': expected HOST:PORT, [IPv6]:PORT or a socket path containing '/'")
    assert os.listdir(tmp_path) == []


def test_a_taken_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*EKO, "crm", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "x.db")],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"eko-rtp: error: cannot listen on CRM address 127.0.0.1:{port}: Address already in use\n"


async def wait_sent(client, count: int) -> None:
    with trio.fail_after(5):
        while client.stats.notifications_sent < count:
            await trio.sleep(0.01)


async def test_call_logs_queued_at_sigterm_are_written(tmp_path):
    def call(index: int) -> CallLog:
        return CallLog(call_id=f"call-{index}", phone="+33698765432", greeting=("greet", "welcome"),
                       duration_ms=index, outcome="completed")

    async with running_crm(tmp_path) as crm:
        # Hold the database's write lock so the writer thread blocks in its first batch
        # and the later call logs are still queued when SIGTERM arrives.
        blocker = sqlite3.connect(crm.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            async with open_crm_client(crm.address, settings=FAST) as client:
                client.log_call(call(0))
                await wait_sent(client, 1)
                assert (await client.request("crm.stats", [], timeout=2.0))["notifications"] == 1
                await trio.sleep(0.2)  # the writer takes call 0 and waits for the lock
                for index in range(1, 300):
                    client.log_call(call(index))
                await wait_sent(client, 300)
                # Answered after the notifications on the same connection: all are queued.
                stats = await client.request("crm.stats", [], timeout=2.0)
                assert (stats["notifications"], stats["call_logs_written"], stats["call_logs_dropped"]) == (300, 0, 0)
                crm.signal(signal.SIGTERM)
                await trio.sleep(0.3)
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert crm.process.wait(timeout=10) == 0
    with sqlite3.connect(crm.db) as connection:
        assert connection.execute("SELECT count(*), sum(duration_ms) FROM call_log").fetchone() == (300, sum(range(300)))
        assert connection.execute("SELECT calls_count FROM clients WHERE phone = '+33698765432'").fetchone() == (300,)


async def test_serving_store_reads_inline_and_writes_in_its_thread(tmp_path):
    db = tmp_path / "crm.sqlite3"
    seed(db)
    store = ServingCrmStore(db)
    try:
        before = store.lookup("+33634567890")
        assert [(t.id, t.problem_type) for t in before.open_tickets] == [("tck-1003", "internet"), ("tck-1004", "mobile")]
        assert store.lookup("+33145678901").open_tickets == ()  # its only ticket is closed
        assert store.lookup(UNKNOWN) is None
        now = datetime.datetime(2025, 3, 6, 12, 0, tzinfo=datetime.timezone.utc)
        calls = [(CallLog(call_id=f"c{i}", phone="+33634567890", greeting=("greet",), duration_ms=1, outcome="completed"), now)
                 for i in range(3)]
        await store.write(lambda writer: writer.log_calls(calls))
        assert store.lookup("+33634567890").calls_count == before.calls_count + 3
        # The loop's connection is read-only: a write through it is refused.
        with pytest.raises(sqlite3.OperationalError, match="^attempt to write a readonly database$"):
            store._reader._db.execute("DELETE FROM call_log")
    finally:
        store.close()


async def test_an_invalid_row_is_an_internal_error_and_the_server_carries_on(tmp_path):
    async with running_crm(tmp_path) as crm:
        with sqlite3.connect(crm.db) as connection:
            connection.execute("UPDATE tickets SET opened_at = 'last tuesday' WHERE ticket_id = 'tck-1002'")
        async with open_crm_client(crm.address, settings=FAST) as client:
            with pytest.raises(CrmRemoteError, match=r"^CRM error 3 for crm.lookup_caller: the CRM record is invalid$"):
                await client.lookup_caller("+33623456789", 2.0)
            assert (await client.lookup_caller("+33612345678", 2.0)).client_id == "cli-0001"
            assert client.stats.connects == 1
        assert ("CRM record for +*******6789 is invalid: ticket tck-1002 is not an ISO-8601 timestamp: 'last tuesday'"
                in crm.log_path.read_text())
