"""One live Deepgram transcription stream per call: the trio shell of :mod:`eko_rtp.asr.deepgram_api`.

Theory of operation: :meth:`DeepgramStream.run` opens the connection
(:mod:`eko_rtp.asr.transport`: TCP, and TLS for ``wss``) and speaks the websocket
protocol through the sans-I/O :class:`~eko_rtp.asr.websocket.ClientConnection`;
connection and handshake together are bounded by ``connect_timeout``. Once connected
it reports itself started and runs two tasks until the caller's audio channel closes
(the hang-up):

- the forwarder (``run``'s own task) frames each chunk from the channel as one
  binary message and writes it at once, in its own task (the RTP payload as is:
  Deepgram is told the G.711 law, nothing is transcoded); empty chunks are skipped,
  since Deepgram reads an empty frame as the end;
- the receiver reads every reply, parses it with the core and calls
  ``on_event(event)`` synchronously, in order; it also keeps the stream's two
  clocks, waking for them when no reply comes: a ``KeepAlive`` text frame whenever
  nothing has been sent for ``settings.keepalive_seconds`` (a call that stops
  feeding audio, the bot speaking or a hold, must not hit Deepgram's 10 s idle
  close), and a ping every ``keepalive_seconds`` whose pong must come within
  ``stall_timeout`` (RFC 6455 §5.5.2: a peer must answer a ping; a peer gone
  without a word, a dead NAT or a cable, would otherwise leave us waiting forever).

Why our own websocket client rather than a library: a library's send path (a lock, a
memory channel to a writer, event objects, a checkpoint per socket write) and a
task per concern cost several times the framing and the system call themselves,
and at hundreds of concurrent streams the per-message cost is what decides how many
calls with recognition a core carries (``docs/BENCHMARKS.md``). Here a message is
one masked frame built in one piece and one ``send``; only a backlog (the kernel's
buffer full) makes the forwarder wait, bounded by ``stall_timeout``. Per stream: two
tasks, one socket, the core's buffers.

When the audio ends, the stream sends ``CloseStream`` and waits up to
``close_timeout`` for the last ``Results``, the ``Metadata`` and Deepgram's close.
Whatever ended the stream, if Deepgram has not closed yet we send our close frame
and wait up to ``close_timeout`` for its answer; then the socket is closed.

Failures are raised from :meth:`run` as :class:`~eko_rtp.asr.errors.AsrError` kinds:
no usable key (before any connection), key or settings refused, Deepgram unreachable,
the stream closed or lost before the hang-up, a send stalled. A reply we cannot read
is logged, counted in ``replies_rejected`` and skipped, so one hostile or
newer-than-us reply does not end the call's transcription; :data:`REJECTED_LIMIT` of
them end it with :class:`~eko_rtp.asr.errors.AsrProtocolError` (a provider speaking a
protocol we no longer understand is better reported than listened to forever). A
reply over :data:`~eko_rtp.asr.deepgram_api.MAX_MESSAGE_SIZE`, or any breach of
RFC 6455, fails the websocket (close 1009, 1002 or 1007) and is reported the same way.
After the hang-up nothing is raised: the call is over and no one waits for the
stream; a close that was not clean is logged and ``closed_cleanly`` stays False.

The receiver never raises into the nursery: it records its failure and cancels the
stream, and :meth:`run` raises that one failure, so a caller catches plain
``AsrError``, not an exception group. ``on_event`` must not raise: an exception from
it is the caller's bug and ends the stream as is.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable

import trio

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
from eko_rtp.asr.transport import Transport, open_transport
from eko_rtp.asr.websocket import (
    Accepted,
    ClientConnection,
    Closed,
    Event,
    Message,
    Pong,
    Rejected,
    RemoteProtocolError,
    State,
)

__all__ = ["REJECTED_LIMIT", "DeepgramStream"]

log = logging.getLogger(__name__)

# Unreadable replies tolerated in one stream before it is given up.
REJECTED_LIMIT = 10

_tls_context: ssl.SSLContext | None = None


def _default_tls_context() -> ssl.SSLContext:
    """One context for every stream: loading the CA store per call would cost milliseconds and memory."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


class DeepgramStream:
    """One call's audio to Deepgram and its transcription events back; :meth:`run` once.

    ``ssl_context``: the TLS context for ``wss`` (the system's CAs by default; a test
    CA in tests).
    """

    def __init__(self, *, settings: AsrSettings, api_key: str, on_event: Callable[[AsrEvent], None],
                 connect_timeout: float = 5.0, close_timeout: float = 2.0, stall_timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
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
        self._ssl_context = ssl_context
        self.keepalives_sent = 0
        self.replies_rejected = 0
        self.closed_cleanly = False  # Deepgram closed with 1000 after our CloseStream
        self._bytes_sent = 0
        self._last_sent_at = 0.0
        self._ping_due = math.inf
        self._pong_due = math.inf  # the pong to our last ping is wanted by then
        self._pings_sent = 0
        self._hung_up = False  # the audio ended: from now on a close is expected, not a failure
        self._close: tuple[int, str | None] | None = None  # Deepgram's close code and reason, once in
        self._server_closed = trio.Event()
        self._failure: AsrError | None = None
        self._scope: trio.CancelScope | None = None
        self._drain_lock = trio.Lock()
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
        websocket = ClientConnection(host=target.host_header, resource=target.resource, headers=headers,
                                     max_frame_size=MAX_MESSAGE_SIZE, max_message_size=MAX_MESSAGE_SIZE)
        transport = await self._connect(target, deadline)
        try:
            await self._session(transport, websocket, deadline, audio, task_status)
        finally:
            owed = websocket.data_to_send()  # the close that fails the stream, if it came to that
            if owed:
                try:
                    transport.write(owed)
                except OSError:
                    pass  # the connection is gone already: nothing to say goodbye to
            transport.close()
        if self._failure is not None:
            raise self._failure

    def _where(self) -> str:
        return f"Deepgram at {self.settings.base_url}"

    def _no_handshake(self) -> AsrUnavailable:
        return AsrUnavailable(f"{self._where()}: no handshake within {self.connect_timeout:g} s")

    async def _connect(self, target: ListenTarget, deadline: float) -> Transport:
        """The TCP (and TLS) connection to Deepgram, by ``deadline``."""
        transport = None
        with trio.move_on_at(deadline):
            try:
                transport = await open_transport(target.host, target.port)
            except OSError as error:  # refused, unreachable, name not resolved
                raise AsrUnavailable(f"{self._where()}: {type(error).__name__}: {error}") from error
            if not target.tls:
                return transport
            try:
                await transport.start_tls(self._ssl_context or _default_tls_context(), target.host)
                return transport
            except (ssl.SSLError, OSError) as error:  # a certificate, a reset, not TLS at all
                transport.close()
                raise AsrUnavailable(f"{self._where()}: TLS: {type(error).__name__}: {error}") from error
            except BaseException:
                transport.close()
                raise
        if transport is not None:
            transport.close()
        raise self._no_handshake()

    async def _session(self, transport: Transport, websocket: ClientConnection, deadline: float,
                       audio: trio.MemoryReceiveChannel[bytes], task_status: trio.TaskStatus[None]) -> None:
        """The websocket over ``transport``: the handshake by ``deadline``, the stream, the close."""
        early: list[Event] | None = None
        with trio.move_on_at(deadline):
            early = await self._handshake(transport, websocket)
        if early is None:
            self._failure = self._no_handshake()
            return
        task_status.started()
        try:
            await self._converse(transport, websocket, audio, early)
        finally:
            await self._say_goodbye(transport, websocket)

    async def _handshake(self, transport: Transport, websocket: ClientConnection) -> list[Event]:
        """The opening handshake; the events that came in the same reads as the 101 answer."""
        data = None
        try:
            transport.write(websocket.handshake_request())
            await transport.drain()
            while True:
                data = await transport.receive()
                events = websocket.receive_data(data)
                if not events:
                    continue
                if isinstance(events[0], Rejected):
                    refusal = events[0]
                    raise handshake_error_untrusted(refusal.status, refusal.headers, refusal.body)
                assert isinstance(events[0], Accepted)
                return events[1:]
        except RemoteProtocolError as error:
            if error.close_code is not None:  # a frame behind the 101 answer, in the same read
                raise self._protocol_failure(error) from None
            if data == b"":  # hung up without a word: a proxy, a restart; worth another try
                raise AsrUnavailable(f"{self._where()}: {error}") from None
            raise AsrProtocolError(f"{self._where()}: {error}") from None
        except OSError as error:
            raise AsrUnavailable(f"{self._where()}: {type(error).__name__}: {error}") from error

    async def _say_goodbye(self, transport: Transport, websocket: ClientConnection) -> None:
        """Our close frame if Deepgram has not closed, and a bounded wait for its answer (RFC 6455 §7.1.2)."""
        try:
            if websocket.state is not State.OPEN:
                return
            transport.write(websocket.send_close(CLOSE_NORMAL))
            with trio.move_on_after(self.close_timeout) as closing:
                await transport.drain()
                while websocket.state is not State.CLOSED:
                    websocket.receive_data(await transport.receive())
            if closing.cancelled_caught:
                log.info("Deepgram: no answer to our websocket close within %g s", self.close_timeout)
        except (OSError, RemoteProtocolError):
            return  # the close is a courtesy: the socket is closed next whatever happens

    # -- inside the open websocket --

    async def _converse(self, transport: Transport, websocket: ClientConnection,
                        audio: trio.MemoryReceiveChannel[bytes], early: list[Event]) -> None:
        now = trio.current_time()
        self._last_sent_at = now
        self._ping_due = now + self.settings.keepalive_seconds
        async with trio.open_nursery() as stream:
            self._scope = stream.cancel_scope
            stream.start_soon(self._guarded, self._receive, transport, websocket, early)
            await self._guarded(self._forward, transport, websocket, audio)
            if self._failure is None:
                await self._finish(transport, websocket)
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

    def _write(self, transport: Transport, frame: bytes) -> None:
        try:
            transport.write(frame)
        except OSError:
            raise self._close_error() from None

    async def _drain(self, transport: Transport) -> None:
        """Wait, at most ``stall_timeout``, until what was written has gone to the kernel."""
        try:
            async with self._drain_lock:
                with trio.fail_after(self.stall_timeout):
                    await transport.drain()
        except trio.TooSlowError:
            raise AsrDropped(f"Deepgram: a send stalled for {self.stall_timeout:g} s after "
                             f"{self._bytes_sent} bytes of audio") from None
        except OSError:
            raise self._close_error() from None

    def _check_open(self, websocket: ClientConnection) -> None:
        if websocket.state is not State.OPEN:
            raise self._close_error()

    def _close_error(self) -> AsrError:
        code, words = self._close if self._close is not None else (CLOSE_ABNORMAL, None)
        return close_error(code, words, audio_bytes=self._bytes_sent)

    async def _send_text(self, transport: Transport, websocket: ClientConnection, text: str) -> None:
        self._check_open(websocket)
        self._write(transport, websocket.send_text(text))
        self._last_sent_at = trio.current_time()
        if transport.backlog:
            await self._drain(transport)

    async def _forward(self, transport: Transport, websocket: ClientConnection,
                       audio: trio.MemoryReceiveChannel[bytes]) -> None:
        async for chunk in audio:  # ends when the caller closes its side: the hang-up
            if not chunk:
                continue  # an empty binary frame means "end of stream" to Deepgram
            if websocket.state is not State.OPEN:
                raise self._close_error()
            self._write(transport, websocket.send_binary(chunk))
            self._bytes_sent += len(chunk)
            self._last_sent_at = trio.current_time()
            if transport.backlog:
                await self._drain(transport)
        self._hung_up = True

    async def _receive(self, transport: Transport, websocket: ClientConnection, early: list[Event]) -> None:
        if self._handle(early):
            return
        while True:  # until the connection closes; each turn reads once or keeps a clock
            wake = math.inf if self._hung_up else min(self._last_sent_at + self.settings.keepalive_seconds,
                                                      self._ping_due, self._pong_due)
            data = None
            with trio.move_on_at(wake):
                data = await transport.receive()
            if data is None:
                await self._keep_clocks(transport, websocket)
                continue
            try:
                events = websocket.receive_data(data)
            except RemoteProtocolError as error:
                raise self._protocol_failure(error) from None
            owed = websocket.data_to_send()  # a pong, the echo of a close
            if owed:
                try:
                    transport.write(owed)
                except OSError:
                    pass  # the receive that follows reports the lost connection
            if self._handle(events):
                return

    def _protocol_failure(self, error: RemoteProtocolError) -> AsrError:
        """The websocket failed (RFC 6455 §7.1.7): as if closed with the code we send."""
        assert error.close_code is not None
        self._close = (error.close_code, str(error))
        return close_error(error.close_code, str(error), audio_bytes=self._bytes_sent)

    def _handle(self, events: list[Event]) -> bool:
        """Act on ``events``; whether the connection is closed."""
        for event in events:
            if isinstance(event, Message):
                self._reply(event.data)
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload():
                    self._pong_due = math.inf
                    self._ping_due = trio.current_time() + self.settings.keepalive_seconds
            elif isinstance(event, Closed):
                self._closed(event.code, event.reason)
                return True
        return False

    def _ping_payload(self) -> bytes:
        return b"%d" % self._pings_sent

    async def _keep_clocks(self, transport: Transport, websocket: ClientConnection) -> None:
        """The keep-alive and the ping watchdog, when one of them is due."""
        if self._hung_up:
            return
        now = trio.current_time()
        if now >= self._pong_due:
            raise AsrDropped(f"Deepgram: no answer to a ping within {self.stall_timeout:g} s after "
                             f"{self._bytes_sent} bytes of audio")
        if now >= self._ping_due:
            self._check_open(websocket)
            self._pings_sent += 1
            self._write(transport, websocket.send_ping(self._ping_payload()))
            self._ping_due = math.inf
            self._pong_due = now + self.stall_timeout
        if now >= self._last_sent_at + self.settings.keepalive_seconds:
            await self._send_text(transport, websocket, KEEPALIVE)
            self.keepalives_sent += 1
        elif transport.backlog:
            await self._drain(transport)

    def _reply(self, message: str | bytes) -> None:
        try:
            event = parse_message_untrusted(message)
        except AsrProtocolError as error:
            self.replies_rejected += 1
            log.warning("%s; reply skipped (%d/%d)", error, self.replies_rejected, REJECTED_LIMIT)
            if self.replies_rejected >= REJECTED_LIMIT:
                raise AsrProtocolError(f"Deepgram: {self.replies_rejected} replies unreadable, the last: "
                                       f"{error}") from None
            return
        self._on_event(event)

    def _closed(self, code: int, reason: str) -> None:
        self._close = (code, reason or None)
        if not self._hung_up:
            raise self._close_error()
        self.closed_cleanly = code == CLOSE_NORMAL
        if not self.closed_cleanly:
            log.warning("Deepgram: the stream ended uncleanly after the hang-up (%s); final results may be lost",
                        self._close_error())
        self._server_closed.set()

    async def _finish(self, transport: Transport, websocket: ClientConnection) -> None:
        """After the hang-up: ask for the last results and wait, bounded, for Deepgram to close."""
        try:
            await self._send_text(transport, websocket, CLOSE_STREAM)
        except AsrError as error:
            log.warning("Deepgram: could not send CloseStream after the hang-up: %s", error)
            return
        with trio.move_on_after(self.close_timeout) as waited:
            await self._server_closed.wait()
        if waited.cancelled_caught:
            log.warning("Deepgram: no close within %g s of CloseStream, after %d bytes of audio; "
                        "final results may be lost", self.close_timeout, self._bytes_sent)
