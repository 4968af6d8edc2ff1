"""The trio shell of the CRM client: one persistent msgpack-RPC connection.

Theory of operation: :meth:`CrmClient.run` owns the connection. It connects, serves
the connection (one reader task, one task draining queued notifications) until it
breaks, fails every pending request at once, waits a backoff (50 ms doubling to
2 s by default) and connects again; forever, until cancelled. Requests from any
number of tasks share the connection: each gets a msgid and a slot in ``pending``,
writes its bytes under a send lock, and waits for the reader to fill its slot, so
concurrent look-ups are multiplexed instead of opening a connection per call.

Every request has a deadline (a trio cancel scope, not a flag). A request made
while there is no connection fails at once with :class:`CrmUnavailable`: the call
path has a greeting budget of a few hundred milliseconds and cannot usefully wait
for a reconnect. If a send is interrupted part-way, the stream may hold half a
message, so the connection is torn down rather than left out of sync.

Notifications (``crm.log_call``) never block the caller: they go into a bounded
queue; when it is full they are dropped and counted.

Every failure reaches the caller as a :class:`CrmError` subclass, is logged as one
line and counted in :attr:`CrmClient.stats` (numbers only; metrics read them). The
hand-over requests (:meth:`CrmClient.create_ticket`, :meth:`CrmClient.request_callback`)
log their failures at debug level only: they are retried by
:func:`eko_rtp.crm.followup.deliver`, which logs them boundedly, so a CRM that is
down for minutes does not cost a warning per retry per call.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from eko_rtp.crm.address import CrmAddress, parse_crm_address
from eko_rtp.crm.errors import (
    CrmError,
    CrmRemoteError,
    CrmTimeout,
    CrmUnavailable,
    RpcProtocolError,
)
from eko_rtp.crm.records import (
    CallbackRequest,
    CallerRecord,
    CallLog,
    TicketRequest,
    parse_caller_untrusted,
    parse_created_id_untrusted,
)
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcLimits, RpcNotification, RpcRequest, RpcResponse

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


@attrs.frozen(kw_only=True)
class CrmClientSettings:
    """Connection behaviour of :class:`CrmClient` (times in seconds)."""

    connect_timeout: float = 1.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    notification_queue_size: int = 1000
    latency_samples: int = 10_000
    limits: RpcLimits = RpcLimits()

    def __attrs_post_init__(self) -> None:
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError(
                f"backoff must satisfy 0 < backoff_initial <= backoff_max, got {self.backoff_initial}, {self.backoff_max}"
            )
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {self.connect_timeout}")
        if self.notification_queue_size < 1 or self.latency_samples < 1:
            raise ValueError("notification_queue_size and latency_samples must be at least 1")


@attrs.define
class CrmClientStats:
    """Counters for the metrics; read them, never reset them."""

    lookups: int = 0
    lookup_hits: int = 0
    timeouts: int = 0
    errors: int = 0  # failed requests other than timeouts
    connects: int = 0
    disconnects: int = 0
    late_responses: int = 0  # answers that came after their request gave up
    notifications_sent: int = 0
    notifications_dropped: int = 0
    lookup_latencies: collections.deque[float] = attrs.field(factory=collections.deque)


class _Slot:
    __slots__ = ("done", "response", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: RpcResponse | None = None
        self.error: CrmError | None = None


class _Connection:
    """One live stream and the requests waiting on it."""

    def __init__(self, stream: trio.abc.Stream, limits: RpcLimits) -> None:
        self.stream = stream
        self.rpc = RpcConnection(limits=limits)
        self.pending: dict[int, _Slot] = {}
        self.send_lock = trio.Lock()
        self.scope = trio.CancelScope()
        self.failure: Callable[[], CrmError] | None = None
        self.answered = False

    def abort(self, failure: Callable[[], CrmError]) -> None:
        """Tear the connection down; pending requests will get ``failure()``."""
        if self.failure is None:
            self.failure = failure
        self.scope.cancel()

    def fail_pending(self, failure: Callable[[], CrmError]) -> None:
        for slot in self.pending.values():
            slot.error = failure()
            slot.done.set()
        self.pending.clear()


def _remote_error(error: object, method: str) -> CrmRemoteError:
    # docs/crm-rpc.md: the error element is [code, message]; tolerate a bare string.
    if (
        isinstance(error, list)
        and len(error) == 2
        and type(error[0]) is int
        and isinstance(error[1], str)
    ):
        return CrmRemoteError(f"CRM error {error[0]} for {method}: {error[1][:200]}", code=error[0], method=method)
    text = error if isinstance(error, str) else repr(error)
    return CrmRemoteError(f"CRM error for {method}: {text[:200]}", method=method)


class CrmClient:
    """A msgpack-RPC client for the CRM; start :meth:`run` in a nursery (or use :func:`open_crm_client`)."""

    def __init__(self, address: CrmAddress | str, *, settings: CrmClientSettings = CrmClientSettings()) -> None:
        self.address = parse_crm_address(address) if isinstance(address, str) else address
        self.settings = settings
        self.stats = CrmClientStats(lookup_latencies=collections.deque(maxlen=settings.latency_samples))
        self._connection: _Connection | None = None
        self._connected = trio.Event()
        self._notify_send, self._notify_receive = trio.open_memory_channel[tuple[str, list[Any]]](
            settings.notification_queue_size
        )

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def wait_connected(self) -> None:
        """Return once a connection is up (use under a deadline)."""
        while self._connection is None:
            await self._connected.wait()

    async def _connect(self) -> trio.abc.Stream:
        if self.address.path is not None:
            return await trio.open_unix_socket(self.address.path)
        assert self.address.host is not None and self.address.port is not None
        return await trio.open_tcp_stream(self.address.host, self.address.port)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection to the CRM until cancelled; reports started after the first attempt."""
        settings = self.settings
        delay = settings.backoff_initial
        started = False
        reported_down = False
        while True:
            try:
                with trio.fail_after(settings.connect_timeout):
                    stream = await self._connect()
            except (OSError, trio.TooSlowError) as error:
                if not reported_down:
                    log.warning("CRM at %s unreachable (%s); retrying with backoff", self.address, error or "timeout")
                    reported_down = True
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(delay)
                delay = min(delay * 2, settings.backoff_max)
                continue
            reported_down = False
            connection = _Connection(stream, settings.limits)
            self._connection = connection
            self._connected.set()
            self.stats.connects += 1
            log.info("CRM connected to %s", self.address)
            if not started:
                task_status.started()
                started = True
            try:
                await self._serve(connection)
            finally:
                self._connection = None
                self._connected = trio.Event()
                address = self.address
                failure = connection.failure or (lambda: CrmUnavailable(f"connection to CRM at {address} closed"))
                connection.fail_pending(failure)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            self.stats.disconnects += 1
            log.warning("CRM connection to %s lost: %s", self.address, failure())
            if connection.answered:
                delay = settings.backoff_initial
            await trio.sleep(delay)
            delay = min(delay * 2, settings.backoff_max)

    async def _serve(self, connection: _Connection) -> None:
        with connection.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_notifications, connection)
                await self._read(connection)
                nursery.cancel_scope.cancel()

    async def _read(self, connection: _Connection) -> None:
        address = self.address
        while True:
            try:
                data = await connection.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                text = str(error) or type(error).__name__
                connection.abort(lambda: CrmUnavailable(f"connection to CRM at {address} failed: {text}"))
                return
            if not data:
                if connection.rpc.buffered_bytes:
                    connection.abort(lambda: CrmUnavailable(f"CRM at {address} closed the connection mid-message"))
                else:
                    connection.abort(lambda: CrmUnavailable(f"CRM at {address} closed the connection"))
                return
            try:
                connection.rpc.receive_data(data)
                while True:
                    event = connection.rpc.next_event()
                    if event is NEED_DATA:
                        break
                    await self._dispatch(connection, event)
            except CrmUnavailable:
                return  # _send has aborted the connection with the reason
            except RpcProtocolError as error:
                text = str(error)
                connection.abort(lambda: RpcProtocolError(f"CRM at {address} broke the protocol: {text}"))
                return

    async def _dispatch(self, connection: _Connection, event: RpcRequest | RpcResponse | RpcNotification) -> None:
        if isinstance(event, RpcResponse):
            slot = connection.pending.pop(event.msgid, None)
            if slot is None:
                self.stats.late_responses += 1
                return
            connection.answered = True
            slot.response = event
            slot.done.set()
        elif isinstance(event, RpcRequest):
            # The CRM has no business calling us; answer so it does not wait.
            data = connection.rpc.send_response(event.msgid, error=[2, "the voicebot serves no methods"])
            await self._send(connection, data)
        else:
            log.debug("ignoring CRM notification %s", event.method)

    async def _write_notifications(self, connection: _Connection) -> None:
        while True:
            method, params = await self._notify_receive.receive()
            data = connection.rpc.send_notification(method, params)
            try:
                await self._send(connection, data)
            except CrmUnavailable:
                self.stats.notifications_dropped += 1
                return  # _send has aborted the connection with the reason
            self.stats.notifications_sent += 1

    async def _send(self, connection: _Connection, data: bytes) -> None:
        address = self.address
        async with connection.send_lock:
            complete = False
            try:
                await connection.stream.send_all(data)
                complete = True
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                text = str(error) or type(error).__name__
                connection.abort(lambda: CrmUnavailable(f"sending to CRM at {address} failed: {text}"))
                raise CrmUnavailable(f"sending to CRM at {address} failed: {text}") from None
            finally:
                if not complete:
                    # Part of a message may be on the wire: the stream is out of sync.
                    connection.abort(lambda: CrmUnavailable(f"connection to CRM at {address} reset after an interrupted send"))

    def _count_failure(self, method: str, error: CrmError, *, quiet: bool = False) -> CrmError:
        if isinstance(error, CrmTimeout):
            self.stats.timeouts += 1
        else:
            self.stats.errors += 1
        log.log(logging.DEBUG if quiet else logging.WARNING, "CRM %s failed: %s", method, error)
        return error

    async def request(self, method: str, params: list[Any], *, timeout: float) -> Any:
        """Call ``method`` and return its result, or raise a CrmError subclass by the deadline."""
        return await self._request(method, params, timeout=timeout, quiet=False)

    async def _request(self, method: str, params: list[Any], *, timeout: float, quiet: bool) -> Any:
        """:meth:`request`; ``quiet``: the caller retries and logs, so failures log at debug level."""
        connection = self._connection
        if connection is None:
            raise self._count_failure(method, CrmUnavailable(f"no connection to CRM at {self.address}"), quiet=quiet)
        msgid, data = connection.rpc.send_request(method, params)
        slot = _Slot()
        connection.pending[msgid] = slot
        try:
            with trio.move_on_after(timeout):
                try:
                    await self._send(connection, data)
                except CrmUnavailable as error:
                    raise self._count_failure(method, error, quiet=quiet) from None
                await slot.done.wait()
        finally:
            connection.pending.pop(msgid, None)
        if not slot.done.is_set():
            timeout_error = CrmTimeout(f"CRM at {self.address} gave no answer to {method} within {timeout * 1000:.0f} ms")
            raise self._count_failure(method, timeout_error, quiet=quiet)
        if slot.error is not None:
            raise self._count_failure(method, slot.error, quiet=quiet)
        assert slot.response is not None
        if slot.response.error is not None:
            raise self._count_failure(method, _remote_error(slot.response.error, method), quiet=quiet)
        return slot.response.result

    async def lookup_caller(self, phone: str, timeout: float) -> CallerRecord | None:
        """The CRM record for an E.164 number, or None if the CRM does not know it."""
        self.stats.lookups += 1
        start = trio.current_time()
        result = await self.request("crm.lookup_caller", [phone], timeout=timeout)
        try:
            record = parse_caller_untrusted(result)
        except CrmError as error:
            raise self._count_failure("crm.lookup_caller", error) from None
        self.stats.lookup_latencies.append(trio.current_time() - start)
        if record is not None:
            self.stats.lookup_hits += 1
        return record

    async def version(self, timeout: float) -> str:
        """The protocol version the CRM speaks ("1")."""
        result = await self.request("crm.version", [], timeout=timeout)
        if not isinstance(result, str):
            raise self._count_failure("crm.version", CrmRemoteError(f"crm.version returned {type(result).__name__}, not a string"))
        return result

    async def create_ticket(self, request: TicketRequest, timeout: float) -> str:
        """Open a ticket for the call and return its id (the same id for a repeat of the call's request)."""
        result = await self._request("crm.create_ticket", [request.to_wire()], timeout=timeout, quiet=True)
        try:
            return parse_created_id_untrusted(result, "crm.create_ticket", "ticket_id")
        except CrmError as error:
            raise self._count_failure("crm.create_ticket", error, quiet=True) from None

    async def request_callback(self, request: CallbackRequest, timeout: float) -> str:
        """Book a callback for the call and return its id (the same id for a repeat of the call's request)."""
        result = await self._request("crm.request_callback", [request.to_wire()], timeout=timeout, quiet=True)
        try:
            return parse_created_id_untrusted(result, "crm.request_callback", "callback_id")
        except CrmError as error:
            raise self._count_failure("crm.request_callback", error, quiet=True) from None

    def log_call(self, call_log: CallLog) -> None:
        """Queue a ``crm.log_call`` notification; never blocks (drops are counted)."""
        try:
            self._notify_send.send_nowait(("crm.log_call", [call_log.to_wire()]))
        except trio.WouldBlock:
            self.stats.notifications_dropped += 1


@asynccontextmanager
async def open_crm_client(
    address: CrmAddress | str, *, settings: CrmClientSettings = CrmClientSettings()
) -> AsyncIterator[CrmClient]:
    """A running :class:`CrmClient` for the body of the ``async with``; its first connect attempt is done."""
    client = CrmClient(address, settings=settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
