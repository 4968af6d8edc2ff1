"""A local stand-in for Deepgram's live transcription websocket (``/v1/listen``).

Theory of operation: a real websocket server on 127.0.0.1 (``trio-websocket`` over
``trio.serve_listeners``), run in the test's own trio nursery, so its stamps
(``trio.current_time()``) share the client's clock. It checks the handshake as
Deepgram does: the path ``/v1/listen``, an ``Authorization: Token <key>`` header
(anything else: HTTP 401), and the query a G.711 stream needs (``encoding`` mulaw or
alaw, ``sample_rate=8000``, ``channels=1``, a ``model`` and a ``language``; anything
else: 400). A refusal carries the ``dg-error`` and ``dg-request-id`` headers and a
JSON body ``{"err_code", "err_msg", "request_id"}``.

Once accepted, each connection is logged as a :class:`StreamRecord`: every binary
frame's bytes in order, empty frames, ``KeepAlive`` and ``CloseStream`` with their
arrival times, any other text frame. Replies come from a script: each
:class:`Reply` goes out once the given number of audio bytes has arrived and, for a
reply that waits for speech, once the audio has carried enough speech and then
enough quiet (the fake's stand-in for Deepgram hearing words and its endpointing).
Speech is told from quiet by level alone: a binary frame is speech when its G.711
audio (the law the query names, decoded here, not with the server's code) reaches
``speech_level_dbfs``. On
``CloseStream`` the fake sends ``on_close_stream`` replies (the flushed final
results), then a ``Metadata`` whose duration is the audio received, and closes with
1000, as Deepgram does.

Misbehaviour, set on the fake before the client connects: ``reject_status``
(refuse every handshake), ``handshake_delay`` (answer the handshake late, or never
with ``math.inf``), ``drop_after_bytes`` (cut the TCP connection without a close
frame), ``close_after_bytes`` (a close frame with a code and reason, like
``1011 NET-0001``), ``freeze_after_bytes`` (stop reading and answering, pings
included, with the connection left open), ``answer_close_stream=False`` (ignore
``CloseStream``). Garbage and oversized replies are scripted like any other.

A test whose server runs in another process serves the fake from a thread of its
own (:class:`FakeDeepgramThread`): the fake then keeps its own trio clock, and the
test reaches its records through :meth:`FakeDeepgramThread.call`.
"""

from __future__ import annotations

import collections
import json
import math
import ssl
import threading
import urllib.parse
from functools import partial

import attrs
import trio
import trio_websocket

__all__ = [
    "AUDIO_RATE",
    "REQUEST_ID",
    "FakeDeepgram",
    "FakeDeepgramThread",
    "Reply",
    "StreamRecord",
    "metadata",
    "results",
    "speech_started",
    "utterance_end",
]

AUDIO_RATE = 8000  # bytes of G.711 a second
REQUEST_ID = "0f3e1c52-7a5b-4c1e-9d7e-fake0000000"


def results(text: str, *, is_final: bool, speech_final: bool = False, start: float = 0.0, duration: float = 1.0,
            confidence: float = 0.98, from_finalize: bool = False) -> str:
    """A ``Results`` reply in the shape Deepgram sends (channel 0 of 1, word timings, metadata)."""
    words = text.split()
    step = duration / max(1, len(words))
    return json.dumps({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "channel": {"alternatives": [{
            "transcript": text,
            "confidence": confidence,
            "words": [{"word": word.lower(), "start": start + index * step, "end": start + (index + 1) * step,
                       "confidence": confidence, "punctuated_word": word} for index, word in enumerate(words)],
        }]},
        "metadata": {"request_id": REQUEST_ID, "model_info": {"name": "2-general-nova", "version": "fake",
                                                              "arch": "nova-2"}, "model_uuid": "fake"},
        "from_finalize": from_finalize,
    })


def speech_started(timestamp: float) -> str:
    return json.dumps({"type": "SpeechStarted", "channel": [0, 1], "timestamp": timestamp})


def utterance_end(last_word_end: float) -> str:
    return json.dumps({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end})


def metadata(duration: float, request_id: str = REQUEST_ID) -> str:
    return json.dumps({"type": "Metadata", "transaction_key": "deprecated", "request_id": request_id,
                       "sha256": "0" * 64, "created": "2025-01-01T00:00:00.000Z", "duration": duration,
                       "channels": 1})


def _ulaw_sample(code: int) -> int:
    """ITU-T G.711 µ-law: the 14-bit sample ``code`` stands for, scaled to 16 bits."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)
    return -(magnitude - 0x84) if code & 0x80 else magnitude - 0x84


def _alaw_sample(code: int) -> int:
    """ITU-T G.711 A-law: the 13-bit sample ``code`` stands for, scaled to 16 bits."""
    code ^= 0x55
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if code & 0x80 else -magnitude


_SQUARES = {"mulaw": [_ulaw_sample(code) ** 2 for code in range(256)],
            "alaw": [_alaw_sample(code) ** 2 for code in range(256)]}


def level_dbfs(audio: bytes, encoding: str) -> float:
    """The RMS level of G.711 ``audio`` (``mulaw`` or ``alaw``) in dBFS; ``-inf`` for digital silence."""
    squares = _SQUARES[encoding]
    power = sum(squares[code] for code in audio) / max(1, len(audio))
    return 10 * math.log10(power / (32768 * 32768)) if power else -math.inf


@attrs.frozen(kw_only=True)
class Reply:
    """``message`` (a text frame, or a binary one for bytes), sent once ``after_bytes`` of audio arrived.

    ``after_speech_bytes``: also wait until that many bytes of speech came (frames at
    or over the fake's ``speech_level_dbfs``), then ``after_quiet_bytes`` of audio
    below it since the last speech frame. Replies go out in the order of
    ``after_bytes`` (their script order among equals), each once all its
    conditions hold.
    """

    after_bytes: int = 0
    message: str | bytes
    after_speech_bytes: int | None = None
    after_quiet_bytes: int = 0

    def due(self, record: "StreamRecord") -> bool:
        if len(record.audio) < self.after_bytes:
            return False
        if self.after_speech_bytes is None:
            return True
        return record.speech_bytes >= self.after_speech_bytes and record.quiet_bytes >= self.after_quiet_bytes


@attrs.define(kw_only=True)
class StreamRecord:
    """One handshake as the fake saw it, and the stream that followed if it was accepted."""

    target: str  # the request target, path and query as sent
    path: str
    query: list[tuple[str, str]]  # in order, repeated names kept
    headers: dict[str, str]  # lower-case names
    status: int | None = None  # 101, or the status of the refusal
    audio: bytearray = attrs.field(factory=bytearray)
    frames: list[int] = attrs.field(factory=list)  # the size of each audio frame
    frames_at: list[float] = attrs.field(factory=list)  # trio.current_time() at each frame's arrival
    speech_bytes: int = 0  # audio in frames at or over the fake's speech_level_dbfs
    quiet_bytes: int = 0  # audio below it since the last speech frame (0 before any speech)
    speech_from: int | None = None  # the offset in ``audio`` of the first speech frame
    empty_frames: int = 0
    keepalives: list[float] = attrs.field(factory=list)  # trio.current_time() at arrival
    close_stream_at: float | None = None
    other_text: list[str] = attrs.field(factory=list)
    opened_at: float = attrs.field(factory=trio.current_time)
    # How it ended: "closed" (after CloseStream), "dropped", "closed-by-fake", "frozen",
    # "client-closed" (the client closed or went away first).
    ended: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def query_values(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


class _Frozen(Exception):
    """The stream goes silent: stop the websocket reader, keep the socket open."""


class FakeDeepgram:
    """The fake endpoint; start it with ``await nursery.start(fake.serve)``."""

    def __init__(self, *, api_key: str = "test-key", ssl_context: ssl.SSLContext | None = None) -> None:
        self.api_key = api_key
        self.ssl_context = ssl_context  # serve wss with it
        self.reject_status: int | None = None
        self.handshake_delay = 0.0
        self.script: list[Reply] = []
        self.on_close_stream: list[str] = []
        self.answer_close_stream = True
        self.drop_after_bytes: int | None = None
        self.close_after_bytes: tuple[int, int, str] | None = None  # (bytes, code, reason)
        self.freeze_after_bytes: int | None = None
        self.speech_level_dbfs = -35.0  # a frame this loud is speech (for replies that wait for it)
        self.streams: list[StreamRecord] = []
        self.port: int | None = None
        self._changed = trio.Event()  # set (and renewed) when a stream opens or ends

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeDeepgram is not serving: await nursery.start(fake.serve) first")
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.ssl_context is not None:
            listeners = [trio.SSLListener(listener, self.ssl_context, https_compatible=True) for listener in listeners]
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    async def wait_for_streams(self, count: int, timeout: float = 5.0, *, ended: bool = False) -> list[StreamRecord]:
        """The streams once ``count`` of them have opened (``ended``: and the fake is done with them)."""
        with trio.fail_after(timeout):
            while len(self.streams) < count or (ended and not all(r.done.is_set() for r in self.streams[:count])):
                await self._changed.wait()
        return list(self.streams[:count])

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def only_stream(self, timeout: float = 2.0) -> StreamRecord:
        """The one stream opened, once the fake is done with it."""
        [record] = self.streams
        with trio.fail_after(timeout):
            await record.done.wait()
        return record

    async def _connection(self, stream: trio.SocketStream | trio.SSLStream) -> None:
        record: StreamRecord | None = None
        try:
            async with trio.open_nursery() as reader:  # trio-websocket's reader task lives here
                request = await trio_websocket.wrap_server_stream(reader, stream)
                record = self._record(request)
                try:
                    await self._answer(request, stream, record)
                except trio_websocket.ConnectionClosed:
                    record.ended = "client-closed"
                except _Frozen:
                    record.ended = "frozen"
                    record.done.set()
                reader.cancel_scope.cancel()
            if record is not None and record.ended == "frozen":
                await trio.sleep_forever()  # hold the socket open, read nothing: a peer gone silent
        finally:
            if record is not None:
                record.done.set()
                self._note_change()
            await trio.aclose_forcefully(stream)

    def _record(self, request: trio_websocket.WebSocketRequest) -> StreamRecord:
        url = urllib.parse.urlsplit(request.path)
        record = StreamRecord(
            target=request.path,
            path=url.path,
            query=urllib.parse.parse_qsl(url.query, keep_blank_values=True),
            headers={name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers},
        )
        self.streams.append(record)
        self._note_change()
        return record

    def _refusal(self, record: StreamRecord) -> tuple[int, str, str] | None:
        """(status, err_code, err_msg) to refuse the handshake with, or None to accept it."""
        if record.path != "/v1/listen":
            return 404, "NOT_FOUND", f"no route for {record.path}"
        if record.headers.get("authorization") != f"Token {self.api_key}":
            return 401, "INVALID_AUTH", "Invalid credentials."
        if self.reject_status is not None:
            return self.reject_status, "FAKE_REFUSAL", "Refused by the test."
        query = dict(record.query)
        for name, allowed in (("encoding", ("mulaw", "alaw")), ("sample_rate", ("8000",)), ("channels", ("1",))):
            if query.get(name) not in allowed:
                return 400, "Bad Request", f"{name}={query.get(name)!r} is not one of {', '.join(allowed)}"
        for name in ("model", "language"):
            if not query.get(name):
                return 400, "Bad Request", f"{name} is required"
        return None

    async def _answer(self, request: trio_websocket.WebSocketRequest, stream: trio.SocketStream,
                      record: StreamRecord) -> None:
        await trio.sleep(self.handshake_delay)
        refusal = self._refusal(record)
        identity = [(b"dg-request-id", REQUEST_ID.encode())]
        if refusal is not None:
            status, code, words = refusal
            record.status = status
            body = json.dumps({"err_code": code, "err_msg": words, "request_id": REQUEST_ID}).encode()
            await request.reject(status, extra_headers=[*identity, (b"dg-error", words.encode())], body=body)
            record.ended = "refused"
            return
        websocket = await request.accept(extra_headers=identity)
        record.status = 101
        await self._converse(websocket, stream, record)

    async def _converse(self, websocket: trio_websocket.WebSocketConnection, stream: trio.SocketStream,
                        record: StreamRecord) -> None:
        pending = collections.deque(sorted(self.script, key=lambda reply: reply.after_bytes))
        send = partial(self._send_due, websocket, pending, record)
        await send()
        while True:
            try:
                message = await websocket.get_message()
            except trio_websocket.ConnectionClosed:
                record.ended = "client-closed"
                return
            if isinstance(message, bytes):
                if not message:
                    record.empty_frames += 1
                    continue
                self._hear(record, message)
                record.audio += message
                record.frames.append(len(message))
                record.frames_at.append(trio.current_time())
                received = len(record.audio)
                if self.drop_after_bytes is not None and received >= self.drop_after_bytes:
                    record.ended = "dropped"
                    await trio.aclose_forcefully(stream)  # no close frame: the client sees 1006
                    return
                if self.close_after_bytes is not None and received >= self.close_after_bytes[0]:
                    record.ended = "closed-by-fake"
                    await websocket.aclose(self.close_after_bytes[1], self.close_after_bytes[2])
                    return
                if self.freeze_after_bytes is not None and received >= self.freeze_after_bytes:
                    raise _Frozen()
                await send()
                continue
            try:
                kind = json.loads(message).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "KeepAlive":
                record.keepalives.append(trio.current_time())
            elif kind == "CloseStream":
                record.close_stream_at = trio.current_time()
                if not self.answer_close_stream:
                    continue
                for reply in self.on_close_stream:
                    await websocket.send_message(reply)
                await websocket.send_message(metadata(len(record.audio) / AUDIO_RATE))
                record.ended = "closed"
                await websocket.aclose(1000)
                return
            else:
                record.other_text.append(message)

    def _hear(self, record: StreamRecord, audio: bytes) -> None:
        """Count ``audio`` (one binary frame, not yet in ``record.audio``) as speech or quiet."""
        encoding = dict(record.query).get("encoding")
        if encoding not in _SQUARES:
            return  # the handshake would have been refused
        if level_dbfs(audio, encoding) >= self.speech_level_dbfs:
            if record.speech_from is None:
                record.speech_from = len(record.audio)
            record.speech_bytes += len(audio)
            record.quiet_bytes = 0
        elif record.speech_from is not None:
            record.quiet_bytes += len(audio)

    async def _send_due(self, websocket: trio_websocket.WebSocketConnection, pending: collections.deque[Reply],
                        record: StreamRecord) -> None:
        while pending and pending[0].due(record):
            await websocket.send_message(pending.popleft().message)


class FakeDeepgramThread:
    """``fake`` served from a thread with its own ``trio.run``, for a server in another process.

    ``with FakeDeepgramThread(fake) as served:`` returns once the fake listens;
    :meth:`call` runs one of the fake's coroutines (``fake.wait_for_streams``) there
    and returns its result. Read records only after the fake is done with them (a
    stream's ``done``, ``wait_for_streams(..., ended=True)``): until then the fake's
    thread may still be writing them.
    """

    def __init__(self, fake: FakeDeepgram, *, start_timeout: float = 10.0) -> None:
        self.fake = fake
        self._start_timeout = start_timeout
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-deepgram", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                await nursery.start(self.fake.serve)
                self._listening.set()

        try:
            trio.run(main)
        except BaseException as error:  # reported to the test by __enter__ or __exit__
            self._failure = error
        finally:
            self._listening.set()

    def __enter__(self) -> "FakeDeepgramThread":
        self._thread.start()
        if not self._listening.wait(self._start_timeout) or self._failure is not None or self._scope is None:
            raise RuntimeError(f"the fake Deepgram did not start: {self._failure!r}")
        return self

    def call(self, async_function, *args, **kwargs):
        """``await async_function(*args, **kwargs)`` in the fake's thread; its result or its exception."""
        return trio.from_thread.run(partial(async_function, *args, **kwargs), trio_token=self._token)

    def __exit__(self, *exc_info) -> None:
        if self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the fake Deepgram's thread did not stop within 10 s")
        if self._failure is not None and exc_info[0] is None:
            raise RuntimeError("the fake Deepgram failed") from self._failure

