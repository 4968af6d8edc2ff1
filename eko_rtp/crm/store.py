"""The embedded CRM's data: clients, tickets and the call log in one SQLite file.

Theory of operation: :class:`CrmStore` is plain synchronous sqlite3, one connection,
used from one thread at a time. The database is in WAL mode so look-ups (readers)
never wait for a ``log_call`` write, and ``synchronous=NORMAL`` (safe with WAL: a
power cut may lose the last transactions, never corrupt the file). Clients are
found by their E.164 phone number through a unique index; a look-up is one indexed
SELECT (the client joined with its open tickets), and the file is memory-mapped
(``mmap_size``) so reading a page is a memory access, not a ``pread`` call.

:class:`ServingCrmStore` is the trio side, and splits the work by cost. A look-up
runs inline on the event loop: one indexed SELECT costs less than handing it to a
thread and back would cost in wake-ups and context switches (docs/crm-rpc.md has
the figures, on a million clients). Writes (the call log) take a lock and may wait on the disk (fsync at a
checkpoint), so they never run on the loop: they go to one writer thread with its
own connection, one transaction per batch.

Seeding is idempotent: rows are upserted by their ids, so seeding twice leaves one
copy of everything. So are the hand-overs a call asks for (``crm.create_ticket``,
``crm.request_callback``): each table has UNIQUE(call_id), and a second request for
a call (a retry after a lost answer) gets the first one's id and adds no row.
"""

from __future__ import annotations

import datetime
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from eko_rtp.crm.records import (
    QUALITY_KEYS,
    CallbackRequest,
    CallerRecord,
    CallLog,
    Ticket,
    TicketRequest,
    parse_timestamp,
)
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
    logged_at   TEXT NOT NULL,
    loss_ratio  REAL,
    jitter_ms   REAL,
    rtt_ms      REAL,
    script_outcome TEXT
);
-- Tickets a call opened (crm.create_ticket), apart from the CRM's own tickets: the
-- caller may be anonymous, so there may be no client to hang them on.
CREATE TABLE IF NOT EXISTS call_tickets (
    id          INTEGER PRIMARY KEY,
    ticket_id   TEXT NOT NULL UNIQUE,
    call_id     TEXT NOT NULL UNIQUE,
    phone       TEXT,
    category    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS callbacks (
    id          INTEGER PRIMARY KEY,
    callback_id TEXT NOT NULL UNIQUE,
    call_id     TEXT NOT NULL UNIQUE,
    phone       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    not_before  TEXT,
    queue       TEXT NOT NULL,
    received_at TEXT NOT NULL
);
"""

# Columns call_log gained after the first release: an older database gets them at
# open, NULL for the calls it already holds.
LATER_CALL_LOG_COLUMNS = (*((name, "REAL") for name in QUALITY_KEYS), ("script_outcome", "TEXT"))

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


# One statement per look-up: the client by the phone index, its open tickets by the
# partial index tickets_open_by_client. A client without open tickets is one row
# with NULL ticket columns (LEFT JOIN): faster than two statements (docs/crm-rpc.md).
_LOOKUP = (
    "SELECT c.client_id, c.name, c.calls_count, t.ticket_id, t.problem_type, t.status, t.opened_at "
    "FROM clients AS c LEFT JOIN tickets AS t ON t.client_id = c.client_id AND t.closed_at IS NULL "
    "WHERE c.phone = ? ORDER BY t.opened_at"
)
_INSERT_CALL = (
    "INSERT INTO call_log (call_id, phone, greeting, duration_ms, outcome, logged_at, loss_ratio, jitter_ms, rtt_ms, "
    "script_outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FIND_TICKET = "SELECT ticket_id FROM call_tickets WHERE call_id = ?"
_NEXT_TICKET = "SELECT coalesce(max(id), 0) + 1 FROM call_tickets"
_INSERT_TICKET = (
    "INSERT INTO call_tickets (id, ticket_id, call_id, phone, category, reason, created_at, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_FIND_CALLBACK = "SELECT callback_id FROM callbacks WHERE call_id = ?"
_NEXT_CALLBACK = "SELECT coalesce(max(id), 0) + 1 FROM callbacks"
_INSERT_CALLBACK = (
    "INSERT INTO callbacks (id, callback_id, call_id, phone, reason, not_before, queue, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNT_CALL = "UPDATE clients SET calls_count = calls_count + 1 WHERE phone = ?"

# Map up to 1 GiB of the file (1 million clients take 120 MB): pages are then read
# by memory access instead of a pread() per page. It is address space, not memory;
# the page cache holds the data either way.
MMAP_BYTES = 1 << 30
# SQLite's own page cache per connection, in KiB (negative PRAGMA value): 64 MiB
# keeps the upper levels of both indexes and the hot rows.
CACHE_KIB = 64 * 1024


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

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
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
            self._db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._db.executescript(SCHEMA)
            if not read_only:
                self._add_later_columns()
            if read_only:
                # A reader on the event loop must never wait for a lock: WAL readers
                # only wait in rare recovery cases, and then 50 ms is the most we
                # accept before answering "internal error" instead.
                self._db.execute("PRAGMA query_only=ON")
                self._db.execute("PRAGMA busy_timeout=50")
        except (OSError, sqlite3.Error) as error:
            raise UserError(f"cannot open CRM database: {error}", path=str(path)) from None

    def close(self) -> None:
        self._db.close()

    def lookup(self, phone: str) -> CallerRecord | None:
        """The record for an E.164 number, with its open tickets oldest first."""
        rows = self._db.execute(_LOOKUP, (phone,)).fetchall()
        if not rows:
            return None
        client_id, name, calls_count = rows[0][:3]
        return CallerRecord(
            client_id=client_id,
            name=name,
            calls_count=calls_count,
            open_tickets=tuple(
                Ticket(id=row[3], problem_type=row[4], status=row[5], opened_at=parse_timestamp(row[6], f"ticket {row[3]}"))
                for row in rows
                if row[3] is not None
            ),
        )

    def _add_later_columns(self) -> None:
        """A database made before a call_log column existed gets it (NULL for old calls)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(call_log)")}
        for column, kind in LATER_CALL_LOG_COLUMNS:
            if column not in present:
                self._db.execute(f"ALTER TABLE call_log ADD COLUMN {column} {kind}")

    def log_calls(self, entries: Sequence[tuple[CallLog, datetime.datetime]]) -> None:
        """Record finished calls (each with when it was logged) in one transaction.

        Each call counts against the client with its number, if any.
        """
        with self._transaction():
            for call_log, logged_at in entries:
                wire = call_log.to_wire()
                self._db.execute(
                    _INSERT_CALL,
                    (wire["call_id"], wire["phone"], wire["greeting"], wire["duration_ms"], wire["outcome"],
                     logged_at.isoformat(), wire["loss_ratio"], wire["jitter_ms"], wire["rtt_ms"],
                     wire["script_outcome"]),
                )
                if call_log.phone is not None:
                    self._db.execute(_COUNT_CALL, (call_log.phone,))

    def create_ticket(self, request: TicketRequest, received_at: datetime.datetime) -> tuple[str, bool]:
        """The ticket for ``request.call_id``, opened now unless the call has one.

        Returns ``(ticket_id, opened)``: ``opened`` is False when an earlier request of
        the same call made it (that request's fields are kept).
        """
        with self._transaction():
            found = self._db.execute(_FIND_TICKET, (request.call_id,)).fetchone()
            if found is not None:
                return found[0], False
            # The writer's transaction is IMMEDIATE: nobody else can take this number.
            number = self._db.execute(_NEXT_TICKET).fetchone()[0]
            ticket_id = f"eko-t{number:06d}"
            wire = request.to_wire()
            self._db.execute(
                _INSERT_TICKET,
                (number, ticket_id, request.call_id, request.phone, request.category, request.reason,
                 wire["created_at"], received_at.isoformat()),
            )
            return ticket_id, True

    def request_callback(self, request: CallbackRequest, received_at: datetime.datetime) -> tuple[str, bool]:
        """The callback for ``request.call_id``, booked now unless the call has one.

        Returns ``(callback_id, booked)``: ``booked`` is False when an earlier request
        of the same call made it (that request's fields are kept).
        """
        with self._transaction():
            found = self._db.execute(_FIND_CALLBACK, (request.call_id,)).fetchone()
            if found is not None:
                return found[0], False
            number = self._db.execute(_NEXT_CALLBACK).fetchone()[0]
            callback_id = f"eko-c{number:06d}"
            wire = request.to_wire()
            self._db.execute(
                _INSERT_CALLBACK,
                (number, callback_id, request.call_id, request.phone, request.reason, wire["not_before"],
                 request.queue, received_at.isoformat()),
            )
            return callback_id, True

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
            for table in ("clients", "tickets", "call_log", "call_tickets", "callbacks")
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


class ServingCrmStore:
    """:class:`CrmStore` for the trio server: reads inline on the loop, writes in one thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Opened here, so a bad path is reported before the server listens, and the
        # schema exists before the read-only connection looks at it.
        self._writer = CrmStore(self.path)
        self._reader = CrmStore(self.path, read_only=True)
        # One writer at a time: the single writer connection is used by one worker
        # thread at a time (whichever trio's thread cache picks), never two at once.
        self._write_limiter = trio.CapacityLimiter(1)

    def lookup(self, phone: str) -> CallerRecord | None:
        """Look ``phone`` up synchronously, on the caller's thread (the event loop).

        One indexed SELECT on a memory-mapped file; see the module docstring for the
        measured cost and why it does not go to a thread.
        """
        return self._reader.lookup(phone)

    async def write(self, work: Callable[[CrmStore], T]) -> T:
        """Run ``work(store)`` on the writer connection in a worker thread."""
        return await trio.to_thread.run_sync(work, self._writer, limiter=self._write_limiter)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
