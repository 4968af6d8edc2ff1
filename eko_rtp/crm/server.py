"""The embedded CRM: a trio msgpack-RPC server over the SQLite store.

Theory of operation: one task per connection reads bytes into an
:class:`RpcConnection` and answers everything one read brought in as a batch:
requests that need no data are answered on the spot, and all store work of the
batch (look-ups, call logs) runs in a single hand-off to a database worker thread.
While a batch is in the store, new requests gather in the socket buffer and form
the next batch, so the cost of the thread hand-off is shared by a burst instead of
paid per request, and a client can queue no more work than one read (64 KiB) at a
time. Responses of a batch go out in one write, in request order.

Two kinds of bad input, two answers (docs/crm-rpc.md): a well-framed request with
an unknown method or bad params gets an error response ``[code, message]`` and the
connection carries on; bytes that are not msgpack-RPC (garbage, over a limit, a
value that is not a message) close that connection only. Nothing a client sends
ends the server.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sqlite3
import stat
from collections.abc import Callable
from typing import Any

import attrs
import trio

from eko_rtp.crm.address import CrmAddress
from eko_rtp.crm.errors import CrmReplyError, RpcProtocolError
from eko_rtp.crm.phone import normalise_phone
from eko_rtp.crm.records import parse_call_log_untrusted
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcEvent, RpcLimits, RpcNotification, RpcRequest
from eko_rtp.crm.store import CrmStore, ThreadedCrmStore
from eko_rtp.errors import UserError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1"

# Error codes of the error element [code, message] (docs/crm-rpc.md).
ERROR_UNKNOWN_METHOD = 1
ERROR_INVALID_PARAMS = 2
ERROR_INTERNAL = 3

MAX_PHONE_LENGTH = 64


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


def _one_param(params: list[Any], method: str) -> Any:
    if len(params) != 1:
        raise MethodError(ERROR_INVALID_PARAMS, f"{method} takes 1 parameter, got {len(params)}")
    return params[0]


# One unit of store work prepared on the event loop and run in the worker thread:
# a request's job returns its result, a notification's job returns None.
_Job = Callable[[CrmStore], Any]


@attrs.frozen
class _StoreWork:
    msgid: int | None  # None for a notification: nothing to answer
    job: _Job


class CrmServer:
    """Answers CRM requests from a :class:`ThreadedCrmStore`."""

    def __init__(self, store: ThreadedCrmStore, *, limits: RpcLimits = RpcLimits()) -> None:
        self.store = store
        self.limits = limits
        self.stats = CrmServerStats()

    def _prepare_request(self, rpc: RpcConnection, request: RpcRequest) -> bytes | _StoreWork:
        """Validate a request; return its response now, or the store job that answers it."""
        msgid = request.msgid
        try:
            if request.method == "crm.lookup_caller":
                phone = _one_param(request.params, "crm.lookup_caller")
                if not isinstance(phone, str) or len(phone) > MAX_PHONE_LENGTH:
                    raise MethodError(
                        ERROR_INVALID_PARAMS,
                        f"crm.lookup_caller phone must be a string of at most {MAX_PHONE_LENGTH} characters",
                    )
                e164 = normalise_phone(phone)
                if e164 is None:
                    return rpc.send_response(msgid, result=None)

                def lookup(store: CrmStore) -> dict[str, Any] | None:
                    record = store.lookup(e164)
                    return None if record is None else record.to_wire()

                return _StoreWork(msgid, lookup)
            if request.method == "crm.version":
                if request.params:
                    raise MethodError(ERROR_INVALID_PARAMS, f"crm.version takes no parameters, got {len(request.params)}")
                return rpc.send_response(msgid, result=PROTOCOL_VERSION)
            if request.method == "crm.stats":
                return rpc.send_response(msgid, result=attrs.asdict(self.stats))
            raise MethodError(ERROR_UNKNOWN_METHOD, f"unknown method {request.method[:64]!r}")
        except MethodError as error:
            return rpc.send_response(msgid, error=[error.code, error.message])

    def _prepare_notification(self, notification: RpcNotification) -> _StoreWork | None:
        try:
            if notification.method != "crm.log_call":
                raise MethodError(ERROR_UNKNOWN_METHOD, "unknown notification")
            call_log = parse_call_log_untrusted(_one_param(notification.params, "crm.log_call"))
        except (MethodError, CrmReplyError) as error:
            log.warning("CRM ignoring bad notification %r: %s", notification.method[:64], error)
            return None
        now = datetime.datetime.now(datetime.timezone.utc)

        def log_call(store: CrmStore) -> None:
            store.log_call(call_log, now)

        return _StoreWork(None, log_call)

    async def _answer_batch(self, rpc: RpcConnection, events: list[RpcEvent]) -> bytes:
        """Answer every message of one read; all store work goes in one thread hand-off."""
        answers: list[bytes | _StoreWork | None] = []
        for event in events:
            if isinstance(event, RpcRequest):
                self.stats.requests += 1
                answers.append(self._prepare_request(rpc, event))
            elif isinstance(event, RpcNotification):
                self.stats.notifications += 1
                answers.append(self._prepare_notification(event))
            else:
                raise RpcProtocolError(f"unexpected response to msgid {event.msgid} (this server sends no requests)")
        work = [answer for answer in answers if isinstance(answer, _StoreWork)]
        if work:
            outcomes = await self.store.run(lambda store: [_run_job(item.job, store) for item in work])
            replies = iter(
                rpc.send_response(item.msgid, **outcome)
                for item, outcome in zip(work, outcomes)
                if item.msgid is not None
            )
            answers = [next(replies, None) if isinstance(a, _StoreWork) and a.msgid is not None else a for a in answers]
        return b"".join(answer for answer in answers if isinstance(answer, bytes))

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes or breaks the protocol.

        Messages are handled a read at a time: while one batch is in the store, the
        next requests gather in the socket buffer and make the next batch.
        """
        self.stats.connections_accepted += 1
        self.stats.connections_open += 1
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
                    reply = await self._answer_batch(rpc, events)
                except RpcProtocolError as error:
                    self.stats.protocol_errors += 1
                    log.warning("CRM closing a connection: %s", error)
                    break
                if reply:
                    await stream.send_all(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self.stats.connections_open -= 1
            await trio.aclose_forcefully(stream)


def _run_job(job: _Job, store: CrmStore) -> dict[str, Any]:
    """Run one job in the worker thread; a store failure fails that job only."""
    try:
        return {"result": job(store)}
    except sqlite3.Error as error:
        log.error("CRM store failed: %s", error)
        return {"error": [ERROR_INTERNAL, "the CRM store failed"]}


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
    threads: int = 2,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the embedded CRM on ``address`` until cancelled; reports the bound addresses."""
    store = ThreadedCrmStore(db_path, threads=threads)
    server = CrmServer(store)
    listeners = await open_crm_listeners(address)
    bound = [listener_address(listener) for listener in listeners]
    try:
        log.info("CRM listening on %s (database %s)", ", ".join(bound), db_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, server.handle_connection, listeners)
            task_status.started(bound)
    finally:
        store.close()
        if address.path is not None:
            try:
                os.unlink(address.path)
            except FileNotFoundError:
                pass
