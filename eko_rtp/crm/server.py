"""The embedded CRM: a trio msgpack-RPC server over the SQLite store.

Theory of operation: one task per connection reads bytes into an
:class:`RpcConnection` and answers everything one read brought in as a batch, in
request order, with one write. Look-ups run inline on the event loop (one indexed
SELECT; store.py says why that beats a thread hand-off), yielding to
other connections every :data:`LOOKUPS_PER_CHECKPOINT` look-ups so one client's
burst cannot hold the loop for more than about a millisecond. A client can queue no
more than one read (64 KiB) of work at a time, plus the writes below: the next read
waits for the answers.

``crm.create_ticket`` and ``crm.request_callback`` are writes that need an answer
(the caller is told "we will call you back"): they are validated on the loop, and a
task in the connection's nursery waits for the store's writer thread and sends the
answer when the row is made. The batch goes on meanwhile: the voicebot multiplexes
every call on one connection, so a write waiting for SQLite's lock (a seed, a
checkpoint) must not hold up the look-ups behind it. msgpack-RPC lets answers come
in any order. At most :data:`WRITES_IN_FLIGHT` such writes per connection wait at
once; the next waits for one of them, and reading that connection with it.

``crm.log_call`` notifications are never answered, so nothing waits for them: they
are validated on the loop and queued (``send_nowait``) to one writer task that
writes whatever has gathered in one transaction in the store's writer thread. When
the queue is full the call log is dropped and counted, not waited for.

Two kinds of bad input, two answers (docs/crm-rpc.md): a well-framed request with
an unknown method or bad params gets an error response ``[code, message]`` and the
connection carries on; bytes that are not msgpack-RPC (garbage, over a limit, a
value that is not a message) close that connection only. Nothing a client sends
ends the server.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import socket
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from eko_rtp.crm.address import CrmAddress
from eko_rtp.crm.errors import CrmReplyError, RpcProtocolError
from eko_rtp.crm.phone import normalise_phone
from eko_rtp.crm.records import (
    CallLog,
    parse_call_log_untrusted,
    parse_callback_request_untrusted,
    parse_ticket_request_untrusted,
)
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcEvent, RpcLimits, RpcNotification, RpcRequest
from eko_rtp.crm.store import CrmStore, ServingCrmStore
from eko_rtp.errors import UserError
from eko_rtp.service.logs import mask_phone

log = logging.getLogger(__name__)

T = TypeVar("T")

PROTOCOL_VERSION = "1"

# Error codes of the error element [code, message] (docs/crm-rpc.md).
ERROR_UNKNOWN_METHOD = 1
ERROR_INVALID_PARAMS = 2
ERROR_INTERNAL = 3

MAX_PHONE_LENGTH = 64

# Inline look-ups between two checkpoints: about a millisecond of loop time (docs/crm-rpc.md).
LOOKUPS_PER_CHECKPOINT = 100
# Call logs waiting for the writer; beyond this they are dropped and counted.
CALL_LOG_QUEUE_SIZE = 10_000
# Call logs written in one transaction at most.
CALL_LOG_BATCH = 1_000
# At shutdown, how long the writer may take to write the call logs still queued.
SHUTDOWN_WRITE_SECONDS = 2.0
# Requests answered after a write in the store's writer thread, out of order.
WRITE_METHODS = frozenset({"crm.create_ticket", "crm.request_callback"})
# Such writes one connection may have waiting at once.
WRITES_IN_FLIGHT = 16


class MethodError(Exception):
    """A request the server understood but refuses; becomes an error response."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@attrs.define
class CrmServerStats:
    connections_accepted: int = 0
    connections_open: int = 0
    requests: int = 0
    notifications: int = 0
    protocol_errors: int = 0
    call_logs_written: int = 0
    call_logs_dropped: int = 0  # the writer queue was full
    call_logs_failed: int = 0  # the database refused the write
    tickets_opened: int = 0
    callbacks_booked: int = 0
    repeated_requests: int = 0  # a ticket or callback asked again for the same call: answered with its id


def _one_param(params: list[Any], method: str) -> Any:
    if len(params) != 1:
        raise MethodError(ERROR_INVALID_PARAMS, f"{method} takes 1 parameter, got {len(params)}")
    return params[0]


# A validated call log and when it arrived, waiting for the writer.
_QueuedLog = tuple[CallLog, datetime.datetime]


class _Replies:
    """One connection's way out: whole messages, one writer at a time, and its waiting writes."""

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._nursery = nursery
        self._send_lock = trio.Lock()  # a batch's replies and write answers never interleave
        self._room = trio.Semaphore(WRITES_IN_FLIGHT)

    async def send(self, data: bytes) -> None:
        # Uncontended (no write answering), take the lock without the extra schedule
        # point of ``async with``: look-up batches pay nothing for the writes.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self._stream.send_all(data)
        finally:
            self._send_lock.release()

    async def start_write(self, answer: Callable[[], Awaitable[bytes]]) -> None:
        """Answer a write request in its own task; waits while WRITES_IN_FLIGHT are pending."""
        await self._room.acquire()
        self._nursery.start_soon(self._answer_write, answer)

    async def _answer_write(self, answer: Callable[[], Awaitable[bytes]]) -> None:
        try:
            await self.send(await answer())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; the row is made, and its retry will be given its id
        finally:
            self._room.release()


class CrmServer:
    """Answers CRM requests from a :class:`ServingCrmStore`; run :meth:`write_call_logs` beside it."""

    def __init__(self, store: ServingCrmStore, *, limits: RpcLimits = RpcLimits()) -> None:
        self.store = store
        self.limits = limits
        self.stats = CrmServerStats()
        self._call_log_send, self._call_log_receive = trio.open_memory_channel[_QueuedLog](CALL_LOG_QUEUE_SIZE)

    def _lookup(self, rpc: RpcConnection, msgid: int, params: list[Any]) -> bytes:
        phone = _one_param(params, "crm.lookup_caller")
        if not isinstance(phone, str) or len(phone) > MAX_PHONE_LENGTH:
            raise MethodError(
                ERROR_INVALID_PARAMS,
                f"crm.lookup_caller phone must be a string of at most {MAX_PHONE_LENGTH} characters",
            )
        e164 = normalise_phone(phone)
        if e164 is None:
            return rpc.send_response(msgid, result=None)
        try:
            record = self.store.lookup(e164)
        except sqlite3.Error as error:
            log.error("CRM store failed: %s", error)
            raise MethodError(ERROR_INTERNAL, "the CRM store failed") from None
        except ValueError as error:
            # A row the record type refuses (a bad timestamp, an over-long name): the
            # database's fault, not the caller's; answer this one, keep serving.
            log.error("CRM record for %s is invalid: %s", mask_phone(e164), error)
            raise MethodError(ERROR_INTERNAL, "the CRM record is invalid") from None
        return rpc.send_response(msgid, result=None if record is None else record.to_wire())

    def _answer_request(self, rpc: RpcConnection, request: RpcRequest) -> bytes:
        """The response to one request (an error response for a bad one)."""
        msgid = request.msgid
        try:
            if request.method == "crm.lookup_caller":
                return self._lookup(rpc, msgid, request.params)
            if request.method == "crm.version":
                if request.params:
                    raise MethodError(ERROR_INVALID_PARAMS, f"crm.version takes no parameters, got {len(request.params)}")
                return rpc.send_response(msgid, result=PROTOCOL_VERSION)
            if request.method == "crm.stats":
                return rpc.send_response(msgid, result=attrs.asdict(self.stats))
            raise MethodError(ERROR_UNKNOWN_METHOD, f"unknown method {request.method[:64]!r}")
        except MethodError as error:
            return rpc.send_response(msgid, error=[error.code, error.message])

    async def _write(self, work: Callable[[CrmStore], T]) -> T:
        try:
            return await self.store.write(work)
        except sqlite3.Error as error:
            log.error("CRM store failed: %s", error)
            raise MethodError(ERROR_INTERNAL, "the CRM store failed") from None

    async def _create_ticket(self, params: list[Any]) -> dict[str, str]:
        try:
            request = parse_ticket_request_untrusted(_one_param(params, "crm.create_ticket"))
        except CrmReplyError as error:
            raise MethodError(ERROR_INVALID_PARAMS, str(error)) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        ticket_id, opened = await self._write(lambda store: store.create_ticket(request, now))
        if opened:
            self.stats.tickets_opened += 1
            log.info("CRM opened ticket %s (%s) for call %r", ticket_id, request.category, request.call_id)
        else:
            self.stats.repeated_requests += 1
        return {"ticket_id": ticket_id}

    async def _request_callback(self, params: list[Any]) -> dict[str, str]:
        try:
            request = parse_callback_request_untrusted(_one_param(params, "crm.request_callback"))
        except CrmReplyError as error:
            raise MethodError(ERROR_INVALID_PARAMS, str(error)) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        callback_id, booked = await self._write(lambda store: store.request_callback(request, now))
        if booked:
            self.stats.callbacks_booked += 1
            log.info("CRM booked callback %s (queue %s) for call %r", callback_id, request.queue, request.call_id)
        else:
            self.stats.repeated_requests += 1
        return {"callback_id": callback_id}

    async def _answer_write(self, rpc: RpcConnection, request: RpcRequest) -> bytes:
        """The response to a request that writes (it waits for the writer thread)."""
        try:
            if request.method == "crm.create_ticket":
                result = await self._create_ticket(request.params)
            else:
                result = await self._request_callback(request.params)
        except MethodError as error:
            return rpc.send_response(request.msgid, error=[error.code, error.message])
        return rpc.send_response(request.msgid, result=result)

    def _queue_notification(self, notification: RpcNotification) -> None:
        try:
            if notification.method != "crm.log_call":
                raise MethodError(ERROR_UNKNOWN_METHOD, "unknown notification")
            call_log = parse_call_log_untrusted(_one_param(notification.params, "crm.log_call"))
        except (MethodError, CrmReplyError) as error:
            log.warning("CRM ignoring bad notification %r: %s", notification.method[:64], error)
            return
        try:
            self._call_log_send.send_nowait((call_log, datetime.datetime.now(datetime.timezone.utc)))
        except trio.WouldBlock:
            self.stats.call_logs_dropped += 1
            if self.stats.call_logs_dropped % 1000 == 1:  # the first, then one line per 1000
                log.warning("CRM dropping call logs: %d already wait for the database (%d dropped so far)",
                            CALL_LOG_QUEUE_SIZE, self.stats.call_logs_dropped)

    async def _answer_batch(self, rpc: RpcConnection, events: list[RpcEvent], replies_out: _Replies) -> bytes:
        """Answer every message of one read, in order; returns the bytes to write.

        Write requests are handed to ``replies_out``, which answers each when it is done.
        """
        replies: list[bytes] = []
        lookups = 0
        for event in events:
            if isinstance(event, RpcRequest):
                self.stats.requests += 1
                if event.method in WRITE_METHODS:
                    await replies_out.start_write(functools.partial(self._answer_write, rpc, event))
                    continue
                if event.method == "crm.lookup_caller":
                    lookups += 1
                    if lookups % LOOKUPS_PER_CHECKPOINT == 0:
                        await trio.lowlevel.checkpoint()
                replies.append(self._answer_request(rpc, event))
            elif isinstance(event, RpcNotification):
                self.stats.notifications += 1
                self._queue_notification(event)
            else:
                raise RpcProtocolError(f"unexpected response to msgid {event.msgid} (this server sends no requests)")
        return b"".join(replies)

    def _take_call_logs(self, first: _QueuedLog | None = None) -> list[_QueuedLog]:
        batch = [] if first is None else [first]
        while len(batch) < CALL_LOG_BATCH:
            try:
                batch.append(self._call_log_receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _write_call_logs(self, batch: list[_QueuedLog]) -> None:
        try:
            await self.store.write(lambda store: store.log_calls(batch))
        except sqlite3.Error as error:
            self.stats.call_logs_failed += len(batch)
            log.error("CRM could not write %d call logs: %s", len(batch), error)
        else:
            self.stats.call_logs_written += len(batch)

    async def write_call_logs(self) -> None:
        """Write queued call logs until cancelled, whatever has gathered in one transaction.

        On cancellation the logs still queued are written within
        :data:`SHUTDOWN_WRITE_SECONDS` (shielded: the last words of a shutdown).
        """
        try:
            async for first in self._call_log_receive:
                await self._write_call_logs(self._take_call_logs(first))
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SHUTDOWN_WRITE_SECONDS
                while batch := self._take_call_logs():
                    await self._write_call_logs(batch)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes or breaks the protocol.

        Messages are handled a read at a time: requests that arrive while a batch is
        answered gather in the socket buffer and make the next batch. Writes still
        waiting when the client stops are finished (their rows made) before the
        connection closes.
        """
        self.stats.connections_accepted += 1
        self.stats.connections_open += 1
        try:
            async with trio.open_nursery() as nursery:
                await self._serve_connection(stream, _Replies(stream, nursery))
        finally:
            self.stats.connections_open -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream, replies_out: _Replies) -> None:
        rpc = RpcConnection(limits=self.limits)
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                events: list[RpcEvent] = []
                try:
                    rpc.receive_data(data)
                    while (event := rpc.next_event()) is not NEED_DATA:
                        events.append(event)
                    reply = await self._answer_batch(rpc, events, replies_out)
                except RpcProtocolError as error:
                    self.stats.protocol_errors += 1
                    log.warning("CRM closing a connection: %s", error)
                    break
                if reply:
                    await replies_out.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError("exists and is not a socket; refusing to replace it", path=path)
    os.unlink(path)


async def open_crm_listeners(address: CrmAddress) -> list[trio.SocketListener]:
    """Listening sockets for ``address``; a stale Unix socket file is replaced."""
    try:
        if address.path is not None:
            _remove_stale_socket(address.path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(address.path)
            sock.listen(128)
            return [trio.SocketListener(sock)]
        assert address.port is not None
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as error:
        raise UserError(f"cannot listen on CRM address {address}: {error.strerror or error}") from None


def listener_address(listener: trio.SocketListener) -> str:
    """The bound address of a listener as ``HOST:PORT`` or a socket path."""
    name = listener.socket.getsockname()
    if isinstance(name, str):
        return name
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_crm(
    address: CrmAddress,
    db_path: str | os.PathLike[str],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the embedded CRM on ``address`` until cancelled; reports the bound addresses."""
    store = ServingCrmStore(db_path)
    try:
        listeners = await open_crm_listeners(address)
    except BaseException:
        store.close()
        raise
    server = CrmServer(store)
    bound = [listener_address(listener) for listener in listeners]
    try:
        log.info("CRM listening on %s (database %s)", ", ".join(bound), db_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.write_call_logs)
            await nursery.start(trio.serve_listeners, server.handle_connection, listeners)
            task_status.started(bound)
    finally:
        store.close()
        if address.path is not None:
            try:
                os.unlink(address.path)
            except FileNotFoundError:
                pass
