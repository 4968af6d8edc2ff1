"""One live Deepgram transcription stream per call: the trio shell of :mod:`eko_rtp.asr.deepgram_api`.

Theory of operation: :meth:`DeepgramStream.run` opens the connection itself (TCP, and
TLS for ``wss``) and runs ``trio-websocket`` over it, so the socket is ours to close
whatever the websocket layer does; connection and handshake together are bounded by
``connect_timeout``. Once connected it reports itself started, then runs three tasks
until the caller's audio channel closes (the hang-up):

- the forwarder sends each chunk from the channel as one binary frame, as it comes
  (the RTP payload as is: Deepgram is told the G.711 law, nothing is transcoded);
  empty chunks are skipped, since Deepgram reads an empty frame as the end;
- the keep-alive sends a ``KeepAlive`` text frame whenever nothing has been sent for
  ``settings.keepalive_seconds``, so a call that stops feeding audio (the bot
  speaking, a hold) does not hit Deepgram's 10 s idle close;
- the watchdog pings every ``keepalive_seconds`` and wants the pong (RFC 6455
  §5.5.2: a peer must answer a ping) within ``stall_timeout``: a peer gone without a
  word (a dead NAT, a cable) would otherwise leave the receiver waiting forever.

Beside them the receiver reads every reply, parses it with the core and calls
``on_event(event)`` synchronously, in order. When the audio ends, the stream sends
``CloseStream`` and waits up to ``close_timeout`` for the last ``Results``, the
``Metadata`` and Deepgram's close.

Failures are raised from :meth:`run` as :class:`~eko_rtp.asr.errors.AsrError` kinds:
no usable key (before any connection), key or settings refused, Deepgram unreachable,
the stream closed or lost before the hang-up, a send stalled (all sends are bounded by
``stall_timeout``). A reply we cannot read is logged, counted in
``replies_rejected`` and skipped, so one hostile or newer-than-us reply does not end
the call's transcription; :data:`REJECTED_LIMIT` of them end it with
:class:`~eko_rtp.asr.errors.AsrProtocolError` (a provider speaking a protocol we no
longer understand is better reported than listened to forever). A reply over
:data:`~eko_rtp.asr.deepgram_api.MAX_MESSAGE_SIZE` makes the websocket layer close
the stream (1009), reported the same way. After the hang-up nothing is raised: the
call is over and no one waits for the stream; a close that was not clean is logged
and ``closed_cleanly`` stays False.

The tasks never raise into the nursery: each records its failure and cancels the
stream, and :meth:`run` raises that one failure, so a caller catches plain
``AsrError``, not an exception group. ``on_event`` must not raise: an exception from
it is the caller's bug and ends the stream as is.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import trio
import trio_websocket

from eko_rtp.asr.deepgram_api import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CLOSE_STREAM,
    KEEPALIVE,
    MAX_MESSAGE_SIZE,
    AsrEvent,
    AsrSettings,
    ListenTarget,
    audio_seconds,
    auth_headers,
    close_error,
    handshake_error_untrusted,
    listen_target,
    parse_message_untrusted,
)
from eko_rtp.asr.errors import AsrDropped, AsrError, AsrProtocolError, AsrUnavailable
from eko_rtp.errors import first_leaf

__all__ = ["REJECTED_LIMIT", "DeepgramStream"]

log = logging.getLogger(__name__)

# Unreadable replies tolerated in one stream before it is given up.
REJECTED_LIMIT = 10


class DeepgramStream:
    """One call's audio to Deepgram and its transcription events back; :meth:`run` once."""

    def __init__(self, *, settings: AsrSettings, api_key: str, on_event: Callable[[AsrEvent], None],
                 connect_timeout: float = 5.0, close_timeout: float = 2.0, stall_timeout: float = 5.0) -> None:
        for name, value in (("connect_timeout", connect_timeout), ("close_timeout", close_timeout),
                            ("stall_timeout", stall_timeout)):
            if not value > 0:
                raise ValueError(f"DeepgramStream.{name} must be > 0, got {value!r}")
        self.settings = settings
        self._api_key = api_key
        self._on_event = on_event
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.stall_timeout = stall_timeout
        self.keepalives_sent = 0
        self.replies_rejected = 0
        self.closed_cleanly = False  # Deepgram closed with 1000 after our CloseStream
        self._bytes_sent = 0
        self._last_sent_at = 0.0
        self._hung_up = False  # the audio ended: from now on a close is expected, not a failure
        self._server_closed = trio.Event()
        self._failure: AsrError | None = None
        self._scope: trio.CancelScope | None = None
        self._ran = False

    def __repr__(self) -> str:  # never the key
        return f"<DeepgramStream {self.settings.base_url} {self._bytes_sent} bytes sent>"

    @property
    def bytes_sent(self) -> int:
        """Audio bytes sent so far (KeepAlive and CloseStream not counted)."""
        return self._bytes_sent

    @property
    def seconds_sent(self) -> float:
        """Seconds of audio sent so far."""
        return audio_seconds(self._bytes_sent)

    async def run(self, audio: trio.MemoryReceiveChannel[bytes], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stream ``audio`` until it closes, then finish the stream; ``started()`` once connected."""
        if self._ran:
            raise RuntimeError("DeepgramStream.run() is for one stream: make a new DeepgramStream")
        self._ran = True
        headers = [(name.encode("ascii"), value.encode("ascii")) for name, value in auth_headers(self._api_key)]
        target = listen_target(self.settings)
        deadline = trio.current_time() + self.connect_timeout
        stream = await self._connect(target, deadline)
        try:
            await self._session(stream, target, headers, deadline, audio, task_status)
        finally:
            # Ours to close: trio-websocket (0.12) leaves the socket open when the server
            # closes first, as Deepgram does after CloseStream.
            await trio.aclose_forcefully(stream)
        if self._failure is not None:
            raise self._failure

    def _no_handshake(self) -> AsrUnavailable:
        return AsrUnavailable(f"Deepgram at {self.settings.base_url}: no handshake within {self.connect_timeout:g} s")

    async def _connect(self, target: ListenTarget, deadline: float) -> trio.abc.Stream:
        """The TCP (and TLS) connection to Deepgram, by ``deadline``."""
        where = f"Deepgram at {self.settings.base_url}"
        with trio.move_on_at(deadline):
            try:
                if not target.tls:
                    return await trio.open_tcp_stream(target.host, target.port)
                secure = await trio.open_ssl_over_tcp_stream(
                    target.host, target.port, ssl_context=ssl.create_default_context(), https_compatible=True)
                try:
                    await secure.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(secure)
                    raise
                return secure
            except trio.BrokenResourceError as error:  # the TLS handshake: a certificate, a reset
                cause = error.__cause__ or error
                raise AsrUnavailable(f"{where}: TLS: {type(cause).__name__}: {cause}") from error
            except OSError as error:  # refused, unreachable, name not resolved
                raise AsrUnavailable(f"{where}: {type(error).__name__}: {error}") from error
        raise self._no_handshake()

    async def _session(self, stream: trio.abc.Stream, target: ListenTarget, headers: list[tuple[bytes, bytes]],
                       deadline: float, audio: trio.MemoryReceiveChannel[bytes],
                       task_status: trio.TaskStatus[None]) -> None:
        """The websocket over ``stream``: the handshake by ``deadline``, the stream, the close."""
        try:
            async with trio.open_nursery() as connection:  # trio-websocket's reader task lives here
                websocket = None
                with trio.move_on_at(deadline):
                    websocket = await trio_websocket.wrap_client_stream(
                        connection, stream, target.host_header, target.resource,
                        extra_headers=headers, max_message_size=MAX_MESSAGE_SIZE)
                if websocket is None:
                    self._failure = self._no_handshake()
                    connection.cancel_scope.cancel()
                    return
                task_status.started()
                try:
                    await self._converse(websocket, audio)
                finally:
                    with trio.move_on_after(self.close_timeout) as closing:
                        await websocket.aclose()  # at once if Deepgram closed first
                    if closing.cancelled_caught:
                        log.info("Deepgram: no answer to our websocket close within %g s", self.close_timeout)
                    connection.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the reader task's: a refused handshake
            refused, rest = group.split(trio_websocket.ConnectionRejected)
            if refused is None or rest is not None:
                raise
            rejection = first_leaf(refused)
            assert isinstance(rejection, trio_websocket.ConnectionRejected)
            raise handshake_error_untrusted(rejection.status_code, rejection.headers, rejection.body) from None

    # -- inside the open websocket --

    async def _converse(self, websocket: trio_websocket.WebSocketConnection,
                        audio: trio.MemoryReceiveChannel[bytes]) -> None:
        self._last_sent_at = trio.current_time()
        async with trio.open_nursery() as stream:
            self._scope = stream.cancel_scope
            stream.start_soon(self._guarded, self._receive, websocket)
            async with trio.open_nursery() as senders:
                senders.start_soon(self._guarded, self._keep_alive, websocket)
                senders.start_soon(self._guarded, self._watch, websocket)
                await self._guarded(self._forward, websocket, audio)
                senders.cancel_scope.cancel()
            await self._finish(websocket)
            stream.cancel_scope.cancel()

    async def _guarded(self, task: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``task``; its :class:`AsrError` becomes the stream's failure, which ends the stream."""
        try:
            await task(*args)
        except AsrError as error:
            if self._failure is None:
                self._failure = error
            assert self._scope is not None
            self._scope.cancel()

    async def _send(self, websocket: trio_websocket.WebSocketConnection, message: bytes | str) -> None:
        try:
            with trio.fail_after(self.stall_timeout):
                await websocket.send_message(message)
        except trio.TooSlowError:
            raise AsrDropped(f"Deepgram: a send stalled for {self.stall_timeout:g} s after "
                             f"{self._bytes_sent} bytes of audio") from None
        except trio_websocket.ConnectionClosed as closed:
            raise self._close_error(closed.reason) from None
        self._last_sent_at = trio.current_time()

    def _close_error(self, reason: trio_websocket.CloseReason | None) -> AsrError:
        code, words = (reason.code, reason.reason) if reason is not None else (CLOSE_ABNORMAL, None)
        return close_error(code, words, audio_bytes=self._bytes_sent)

    async def _forward(self, websocket: trio_websocket.WebSocketConnection,
                       audio: trio.MemoryReceiveChannel[bytes]) -> None:
        async for chunk in audio:  # ends when the caller closes its side: the hang-up
            if not chunk:
                continue  # an empty binary frame means "end of stream" to Deepgram
            await self._send(websocket, chunk if isinstance(chunk, bytes) else bytes(chunk))
            self._bytes_sent += len(chunk)
        self._hung_up = True

    async def _keep_alive(self, websocket: trio_websocket.WebSocketConnection) -> None:
        while True:  # until the hang-up cancels it; each turn sleeps or sends
            due = self._last_sent_at + self.settings.keepalive_seconds
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            await self._send(websocket, KEEPALIVE)
            self.keepalives_sent += 1

    async def _watch(self, websocket: trio_websocket.WebSocketConnection) -> None:
        while True:  # until the hang-up cancels it; each turn sleeps, then waits a bounded time
            await trio.sleep(self.settings.keepalive_seconds)
            try:
                with trio.fail_after(self.stall_timeout):
                    await websocket.ping()
            except trio.TooSlowError:
                raise AsrDropped(f"Deepgram: no answer to a ping within {self.stall_timeout:g} s after "
                                 f"{self._bytes_sent} bytes of audio") from None
            except trio_websocket.ConnectionClosed:
                return  # the receiver reports the close

    async def _receive(self, websocket: trio_websocket.WebSocketConnection) -> None:
        while True:  # until the connection closes; each turn waits for one reply
            try:
                message = await websocket.get_message()
            except trio_websocket.ConnectionClosed as closed:
                self._closed(closed.reason)
                return
            try:
                event = parse_message_untrusted(message)
            except AsrProtocolError as error:
                self.replies_rejected += 1
                log.warning("%s; reply skipped (%d/%d)", error, self.replies_rejected, REJECTED_LIMIT)
                if self.replies_rejected >= REJECTED_LIMIT:
                    raise AsrProtocolError(f"Deepgram: {self.replies_rejected} replies unreadable, the last: "
                                           f"{error}") from None
                continue
            self._on_event(event)

    def _closed(self, reason: trio_websocket.CloseReason | None) -> None:
        if not self._hung_up:
            raise self._close_error(reason)
        self.closed_cleanly = reason is not None and reason.code == CLOSE_NORMAL
        if not self.closed_cleanly:
            log.warning("Deepgram: the stream ended uncleanly after the hang-up (%s); final results may be lost",
                        self._close_error(reason))
        self._server_closed.set()

    async def _finish(self, websocket: trio_websocket.WebSocketConnection) -> None:
        """After the hang-up: ask for the last results and wait, bounded, for Deepgram to close."""
        try:
            await self._send(websocket, CLOSE_STREAM)
        except AsrError as error:
            log.warning("Deepgram: could not send CloseStream after the hang-up: %s", error)
            return
        with trio.move_on_after(self.close_timeout) as waited:
            await self._server_closed.wait()
        if waited.cancelled_caught:
            log.warning("Deepgram: no close within %g s of CloseStream, after %d bytes of audio; "
                        "final results may be lost", self.close_timeout, self._bytes_sent)
