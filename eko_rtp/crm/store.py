"""The embedded CRM's data: clients, tickets and the call log in one SQLite file.

Theory of operation: :class:`CrmStore` is plain synchronous sqlite3, one connection,
used from one thread. The database is in WAL mode so look-ups (readers) never wait
for a ``log_call`` write, and ``synchronous=NORMAL`` (safe with WAL: a power cut
may lose the last transactions, never corrupt the file). Clients are found by
their E.164 phone number through a unique index.

:class:`ThreadedCrmStore` is the trio side: every query runs in a worker thread
through ``trio.to_thread.run_sync`` under a small capacity limiter, each worker
thread with its own connection, so the event loop never waits on the disk.

Seeding is idempotent: rows are upserted by their ids, so seeding twice leaves one
copy of everything.
"""

from __future__ import annotations

import datetime
import itertools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from eko_rtp.crm.records import CallerRecord, CallLog, Ticket, parse_timestamp
from eko_rtp.errors import UserError

DEFAULT_DB_PATH = "var/crm.sqlite3"

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id   TEXT PRIMARY KEY,
    phone       TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    calls_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id    TEXT PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES clients(client_id),
    problem_type TEXT NOT NULL,
    status       TEXT NOT NULL,
    opened_at    TEXT NOT NULL,
    closed_at    TEXT
);
CREATE INDEX IF NOT EXISTS tickets_open_by_client ON tickets(client_id) WHERE closed_at IS NULL;
CREATE TABLE IF NOT EXISTS call_log (
    id          INTEGER PRIMARY KEY,
    call_id     TEXT NOT NULL,
    phone       TEXT,
    greeting    TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    logged_at   TEXT NOT NULL
);
"""

_UPSERT_CLIENT = (
    "INSERT INTO clients (client_id, phone, name) VALUES (?, ?, ?) "
    "ON CONFLICT(client_id) DO UPDATE SET phone = excluded.phone, name = excluded.name"
)
_UPSERT_TICKET = (
    "INSERT INTO tickets (ticket_id, client_id, problem_type, status, opened_at, closed_at) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(ticket_id) DO UPDATE SET client_id = excluded.client_id, problem_type = excluded.problem_type, "
    "status = excluded.status, opened_at = excluded.opened_at, closed_at = excluded.closed_at"
)


@attrs.frozen(kw_only=True)
class SeedTicket:
    ticket_id: str
    problem_type: str
    status: str
    opened_at: str
    closed_at: str | None = None


@attrs.frozen(kw_only=True)
class SeedClient:
    client_id: str
    phone: str
    name: str
    tickets: tuple[SeedTicket, ...] = ()


# Invented customers; their numbers are listed in docs/crm-rpc.md for tests and demos.
SAMPLE_CLIENTS: tuple[SeedClient, ...] = (
    SeedClient(client_id="cli-0001", phone="+33612345678", name="Camille Martin", tickets=(
        SeedTicket(ticket_id="tck-1001", problem_type="internet", status="open", opened_at="2025-03-02T09:15:00+00:00"),
    )),
    SeedClient(client_id="cli-0002", phone="+33623456789", name="Julien Bernard", tickets=(
        SeedTicket(ticket_id="tck-1002", problem_type="mobile", status="in_progress", opened_at="2025-03-04T17:40:00+00:00"),
    )),
    SeedClient(client_id="cli-0003", phone="+33145678901", name="Sophie Lefèvre", tickets=(
        SeedTicket(ticket_id="tck-0907", problem_type="internet", status="resolved",
                   opened_at="2024-11-20T08:00:00+00:00", closed_at="2024-11-22T10:30:00+00:00"),
    )),
    SeedClient(client_id="cli-0004", phone="+33634567890", name="Thomas Moreau", tickets=(
        SeedTicket(ticket_id="tck-1003", problem_type="internet", status="open", opened_at="2025-02-10T11:00:00+00:00"),
        SeedTicket(ticket_id="tck-1004", problem_type="mobile", status="open", opened_at="2025-03-01T14:20:00+00:00"),
    )),
    SeedClient(client_id="cli-0005", phone="+33556789012", name="Léa Garnier", tickets=(
        SeedTicket(ticket_id="tck-1005", problem_type="internet", status="waiting_customer", opened_at="2025-03-05T07:55:00+00:00"),
    )),
    SeedClient(client_id="cli-0006", phone="+33698765432", name="Nicolas Petit"),
    SeedClient(client_id="cli-0007", phone="+33387654321", name="Manon Rousseau", tickets=(
        SeedTicket(ticket_id="tck-1006", problem_type="billing", status="open", opened_at="2025-03-03T16:05:00+00:00"),
    )),
)

SYNTHETIC_PHONE_PREFIX = "+337"  # French 07 mobiles; no sample client uses this range
SYNTHETIC_EPOCH = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def synthetic_phone(index: int) -> str:
    """The phone number of synthetic client ``index`` (1-based)."""
    return f"{SYNTHETIC_PHONE_PREFIX}{index:08d}"


def synthetic_clients(count: int) -> Iterator[SeedClient]:
    """Clients 1..count: every tenth has an open internet ticket, every tenth plus three a mobile one."""
    for index in range(1, count + 1):
        tickets: tuple[SeedTicket, ...] = ()
        kind = {0: "internet", 3: "mobile"}.get(index % 10)
        if kind is not None:
            opened = (SYNTHETIC_EPOCH + datetime.timedelta(minutes=index)).isoformat()
            tickets = (SeedTicket(ticket_id=f"syn-t{index:08d}", problem_type=kind, status="open", opened_at=opened),)
        yield SeedClient(client_id=f"syn-{index:08d}", phone=synthetic_phone(index), name=f"Client {index}", tickets=tickets)


class CrmStore:
    """Synchronous access to the CRM database; use one instance from one thread at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False only so the owner can close it from another
            # thread at shutdown; queries stay on the creating thread.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise UserError(f"cannot open CRM database: {error}", path=str(path)) from None

    def close(self) -> None:
        self._db.close()

    def lookup(self, phone: str) -> CallerRecord | None:
        """The record for an E.164 number, with its open tickets oldest first."""
        row = self._db.execute(
            "SELECT client_id, name, calls_count FROM clients WHERE phone = ?", (phone,)
        ).fetchone()
        if row is None:
            return None
        tickets = self._db.execute(
            "SELECT ticket_id, problem_type, status, opened_at FROM tickets "
            "WHERE client_id = ? AND closed_at IS NULL ORDER BY opened_at",
            (row[0],),
        ).fetchall()
        return CallerRecord(
            client_id=row[0],
            name=row[1],
            calls_count=row[2],
            open_tickets=tuple(
                Ticket(id=t[0], problem_type=t[1], status=t[2], opened_at=parse_timestamp(t[3], f"ticket {t[0]}"))
                for t in tickets
            ),
        )

    def log_call(self, call_log: CallLog, now: datetime.datetime) -> None:
        """Record a finished call and count it against the client with that number."""
        wire = call_log.to_wire()
        with self._transaction():
            self._db.execute(
                "INSERT INTO call_log (call_id, phone, greeting, duration_ms, outcome, logged_at) VALUES (?, ?, ?, ?, ?, ?)",
                (wire["call_id"], wire["phone"], wire["greeting"], wire["duration_ms"], wire["outcome"], now.isoformat()),
            )
            if call_log.phone is not None:
                self._db.execute("UPDATE clients SET calls_count = calls_count + 1 WHERE phone = ?", (call_log.phone,))

    def upsert(self, clients: Iterable[SeedClient], *, batch: int = 50_000) -> int:
        """Insert or update clients and their tickets in batches; returns how many clients."""
        total = 0
        iterator = iter(clients)
        while chunk := list(itertools.islice(iterator, batch)):
            with self._transaction():
                self._db.executemany(_UPSERT_CLIENT, ((c.client_id, c.phone, c.name) for c in chunk))
                self._db.executemany(
                    _UPSERT_TICKET,
                    (
                        (t.ticket_id, c.client_id, t.problem_type, t.status, t.opened_at, t.closed_at)
                        for c in chunk
                        for t in c.tickets
                    ),
                )
            total += len(chunk)
        return total

    def counts(self) -> dict[str, int]:
        """Row counts per table (for the seed report and tests)."""
        return {
            table: self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("clients", "tickets", "call_log")
        }

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


class ThreadedCrmStore:
    """:class:`CrmStore` for trio code: queries in worker threads, one connection per thread."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 2) -> None:
        self.path = Path(path)
        self._limiter = trio.CapacityLimiter(threads)
        self._local = threading.local()
        self._all: list[CrmStore] = []
        self._all_lock = threading.Lock()
        # Open once here so a bad path is reported before the server listens.
        CrmStore(self.path).close()

    def _store(self) -> CrmStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = CrmStore(self.path)
            with self._all_lock:
                self._all.append(store)
        return store

    async def run(self, work: Callable[[CrmStore], T]) -> T:
        """Run ``work(store)`` in a worker thread with that thread's connection.

        Callers batch several queries into one ``work`` so that a burst of requests
        costs one thread hand-off, not one each.
        """
        return await trio.to_thread.run_sync(lambda: work(self._store()), limiter=self._limiter)

    def close(self) -> None:
        with self._all_lock:
            for store in self._all:
                store.close()
            self._all.clear()
