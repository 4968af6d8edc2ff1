"""The embedded CRM: a trio msgpack-RPC server over the SQLite store.

Theory of operation: one task per connection reads bytes into an
:class:`RpcConnection`; each request is answered in its own task (at most
``max_in_flight`` per connection, so one client cannot queue unbounded work) and
responses are written under a per-connection send lock, in whatever order the
store finishes them: msgids let the client match them up.

Two kinds of bad input, two answers (docs/crm-rpc.md): a well-framed request with
an unknown method or bad params gets an error response ``[code, message]`` and the
connection carries on; bytes that are not msgpack-RPC (garbage, over a limit, a
value that is not a message) close that connection only. Nothing a client sends
ends the server.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from eko_rtp.crm.address import CrmAddress
from eko_rtp.crm.errors import CrmReplyError, RpcProtocolError
from eko_rtp.crm.phone import normalise_phone
from eko_rtp.crm.records import parse_call_log_untrusted
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcLimits, RpcNotification, RpcRequest
from eko_rtp.crm.store import ThreadedCrmStore
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


class CrmServer:
    """Answers CRM requests from a :class:`ThreadedCrmStore`."""

    def __init__(self, store: ThreadedCrmStore, *, limits: RpcLimits = RpcLimits(), max_in_flight: int = 64) -> None:
        self.store = store
        self.limits = limits
        self.max_in_flight = max_in_flight
        self.stats = CrmServerStats()
        self._methods: dict[str, Callable[[list[Any]], Awaitable[Any]]] = {
            "crm.version": self._version,
            "crm.lookup_caller": self._lookup_caller,
            "crm.stats": self._stats,
        }

    async def _version(self, params: list[Any]) -> str:
        if params:
            raise MethodError(ERROR_INVALID_PARAMS, f"crm.version takes no parameters, got {len(params)}")
        return PROTOCOL_VERSION

    async def _lookup_caller(self, params: list[Any]) -> dict[str, Any] | None:
        phone = _one_param(params, "crm.lookup_caller")
        if not isinstance(phone, str) or len(phone) > MAX_PHONE_LENGTH:
            raise MethodError(
                ERROR_INVALID_PARAMS,
                f"crm.lookup_caller phone must be a string of at most {MAX_PHONE_LENGTH} characters",
            )
        e164 = normalise_phone(phone)
        if e164 is None:
            return None
        record = await self.store.lookup(e164)
        return None if record is None else record.to_wire()

    async def _stats(self, params: list[Any]) -> dict[str, int]:
        return attrs.asdict(self.stats)

    async def _answer(self, request: RpcRequest) -> Any:
        method = self._methods.get(request.method)
        if method is None:
            raise MethodError(ERROR_UNKNOWN_METHOD, f"unknown method {request.method[:64]!r}")
        try:
            return await method(request.params)
        except sqlite3.Error as error:
            log.error("CRM store failed on %s: %s", request.method, error)
            raise MethodError(ERROR_INTERNAL, "the CRM store failed") from None

    async def _respond(
        self, request: RpcRequest, rpc: RpcConnection, stream: trio.abc.Stream, send_lock: trio.Lock, slot: trio.Semaphore
    ) -> None:
        try:
            try:
                data = rpc.send_response(request.msgid, result=await self._answer(request))
            except MethodError as error:
                data = rpc.send_response(request.msgid, error=[error.code, error.message])
        finally:
            slot.release()
        async with send_lock:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; its reader sees the end of the stream

    async def _notified(self, notification: RpcNotification, slot: trio.Semaphore) -> None:
        try:
            if notification.method != "crm.log_call":
                log.warning("CRM ignoring unknown notification %r", notification.method[:64])
                return
            call_log = parse_call_log_untrusted(_one_param(notification.params, "crm.log_call"))
            await self.store.log_call(call_log)
        except (MethodError, CrmReplyError) as error:
            log.warning("CRM ignoring bad %s: %s", notification.method[:64], error)
        except sqlite3.Error as error:
            log.error("CRM store failed on crm.log_call: %s", error)
        finally:
            slot.release()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes or breaks the protocol."""
        self.stats.connections_accepted += 1
        self.stats.connections_open += 1
        rpc = RpcConnection(limits=self.limits)
        send_lock = trio.Lock()
        in_flight = trio.Semaphore(self.max_in_flight)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    try:
                        rpc.receive_data(data)
                        while (event := rpc.next_event()) is not NEED_DATA:
                            await in_flight.acquire()
                            if isinstance(event, RpcRequest):
                                self.stats.requests += 1
                                nursery.start_soon(self._respond, event, rpc, stream, send_lock, in_flight)
                            elif isinstance(event, RpcNotification):
                                self.stats.notifications += 1
                                nursery.start_soon(self._notified, event, in_flight)
                            else:
                                in_flight.release()
                                raise RpcProtocolError(f"unexpected response to msgid {event.msgid} (this server sends no requests)")
                    except RpcProtocolError as error:
                        self.stats.protocol_errors += 1
                        log.warning("CRM closing a connection: %s", error)
                        break
                nursery.cancel_scope.cancel()
        finally:
            self.stats.connections_open -= 1
            await trio.aclose_forcefully(stream)


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
