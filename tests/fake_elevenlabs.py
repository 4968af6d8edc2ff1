"""A local stand-in for the ElevenLabs text-to-speech HTTP API.

Theory of operation: a real HTTP/1.1 server on 127.0.0.1 (``http.server`` in a
background thread, one thread per connection) answers the two endpoints Eko uses,
in the shape the ``elevenlabs`` SDK (2.x, ``text_to_speech/raw_client.py``) and
plain httpx expect:

- ``POST /v1/text-to-speech/{voice_id}``: the whole audio, ``Content-Length`` set;
- ``POST /v1/text-to-speech/{voice_id}/stream``: the audio in ``Transfer-Encoding:
  chunked`` pieces, paced as a test asks.

Query ``output_format`` (only ``ulaw_8000`` is rendered; anything else is a 422 as
the real API answers unsupported values), ``optimize_streaming_latency`` and
``enable_logging`` are accepted; the JSON body must carry a non-empty ``text``.
The key travels in the ``xi-api-key`` header. Errors are JSON
``{"detail": {"status": ..., "message": ...}}``.

The audio is deterministic: :func:`expected_audio` turns the text into a µ-law tone
whose pitch comes from a hash of the text and whose length grows with it, so a test
can check byte for byte what was played.

Each request consumes the next planned :class:`Respond` (``fake.plan(...)``), or
``fake.default`` when the plan is empty. Every request is logged as a
:class:`RequestRecord`, including how many body bytes went out, whether the
client hung up before the end (seen by polling the socket between chunks, so a
cancelled stream is noticed within one ``poll_interval`` even while the fake waits)
and when: the request arrived, the first audio bytes left, the hang-up was seen.
The server sets TCP_NODELAY, as real API fronts do.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import select
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs
import pytest

from eko_rtp.codec.frame import SAMPLE_RATE
from eko_rtp.codec.g711 import linear16_to_ulaw

__all__ = [
    "FakeElevenLabs",
    "Respond",
    "RequestRecord",
    "expected_audio",
    "fake_elevenlabs",
    "SAMPLES_PER_CHARACTER",
]

# 50 ms per character: a 3-character text is 1200 samples, 7.5 frames, so odd
# lengths exercise the padding of the last frame.
SAMPLES_PER_CHARACTER = 400
SUPPORTED_FORMAT = "ulaw_8000"


def expected_audio(text: str) -> bytes:
    """The µ-law bytes the fake renders for ``text`` (a tone keyed by the text's hash)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    frequency = 300 + int.from_bytes(digest[:2], "big") % 900  # 300..1199 Hz
    count = SAMPLES_PER_CHARACTER * len(text)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    pcm = bytearray(count * 2)
    for index in range(count):
        sample = int(8000 * math.sin(step * index))
        pcm[2 * index : 2 * index + 2] = sample.to_bytes(2, "little", signed=True)
    return linear16_to_ulaw(pcm)


@attrs.frozen(kw_only=True)
class Respond:
    """How the fake answers one request.

    ``status`` other than 200 sends a JSON error (``error_status`` and ``message``
    fill its ``detail``; ``retry_after`` adds that header). For 200: wait
    ``first_byte_delay`` seconds before the status line, send the body in pieces of
    ``chunk_size`` bytes (the whole body at once when None) with ``chunk_delay``
    seconds between pieces, and close the connection after ``cut_after`` body bytes
    (a stream broken midway). ``audio`` replaces the text-derived audio.
    """

    status: int = attrs.field(default=200)
    first_byte_delay: float = attrs.field(default=0.0)
    chunk_size: int | None = attrs.field(default=1000)
    chunk_delay: float = attrs.field(default=0.0)
    cut_after: int | None = attrs.field(default=None)
    audio: bytes | None = attrs.field(default=None)
    error_status: str | None = attrs.field(default=None)
    message: str | None = attrs.field(default=None)
    retry_after: int | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"Respond.status must be an HTTP status 100..599, got {self.status}")
        if self.first_byte_delay < 0 or self.chunk_delay < 0:
            raise ValueError(
                f"Respond delays must be >= 0, got first_byte_delay={self.first_byte_delay} "
                f"chunk_delay={self.chunk_delay}"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"Respond.chunk_size must be >= 1 or None, got {self.chunk_size}")
        if self.cut_after is not None and self.cut_after < 0:
            raise ValueError(f"Respond.cut_after must be >= 0 or None, got {self.cut_after}")


_DEFAULT_ERRORS = {
    401: ("invalid_api_key", "Invalid API key"),
    422: ("invalid_request", "Unprocessable request"),
    429: ("too_many_concurrent_requests", "Too many concurrent requests"),
    500: ("internal_server_error", "Internal server error"),
    503: ("service_unavailable", "Service temporarily unavailable"),
}


@attrs.define(kw_only=True)
class RequestRecord:
    """One request as the fake saw it, and what became of its answer."""

    method: str
    path: str
    voice_id: str | None
    streaming: bool
    query: dict[str, str]
    json: object
    headers: dict[str, str]  # lower-case names
    status: int | None = None
    bytes_sent: int = 0
    completed: bool = False  # the whole body went out
    disconnected: bool = False  # the client closed before the end of the body
    cut: bool = False  # the fake closed midway on purpose (Respond.cut_after)
    # time.perf_counter() stamps (CLOCK_MONOTONIC: comparable across processes): the
    # request read, the first audio bytes sent, the client's hang-up seen.
    received_at: float = attrs.field(factory=time.perf_counter)
    first_byte_at: float | None = None
    disconnected_at: float | None = None
    finished: threading.Event = attrs.field(factory=threading.Event, repr=False)

    def hung_up(self) -> None:
        """The client closed before the end of the body."""
        self.disconnected = True
        self.disconnected_at = time.perf_counter()

    def wait_finished(self, timeout: float = 5.0) -> bool:
        """Block until the fake is done answering this request; False on timeout."""
        return self.finished.wait(timeout)


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as a real API front does: with Nagle on, a chunk written right after
    # the headers waits for the client's delayed ACK (40 ms on Linux), which would add
    # to every time to first byte a test or benchmark measures.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # keep pytest output clean; the request log is the record

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._send_error(404, "not_found", f"no route for GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: object = json.loads(raw) if raw else None
        except ValueError:
            body = None
        parts = url.path.strip("/").split("/")
        voice_id = None
        streaming = False
        if len(parts) in (3, 4) and parts[:2] == ["v1", "text-to-speech"] and (len(parts) == 3 or parts[3] == "stream"):
            voice_id = urllib.parse.unquote(parts[2])
            streaming = len(parts) == 4
        record = RequestRecord(
            method="POST",
            path=url.path,
            voice_id=voice_id,
            streaming=streaming,
            query=query,
            json=body,
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        fake._log(record)
        try:
            self._answer(fake, record, body)
        finally:
            record.finished.set()

    def _answer(self, fake: "FakeElevenLabs", record: RequestRecord, body: object) -> None:
        if record.voice_id is None:
            record.status = 404
            self._send_error(404, "not_found", f"no route for POST {record.path}")
            return
        if fake.api_key is not None and record.headers.get("xi-api-key") != fake.api_key:
            record.status = 401
            self._send_error(401, *_DEFAULT_ERRORS[401])
            return
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            record.status = 422
            self._send_error(422, "invalid_request", "body must be a JSON object with a non-empty 'text'")
            return
        output_format = record.query.get("output_format")
        if output_format != SUPPORTED_FORMAT:
            record.status = 422
            self._send_error(
                422, "invalid_output_format", f"fake renders only output_format={SUPPORTED_FORMAT}, got {output_format!r}"
            )
            return
        respond = fake._next_respond()
        record.status = respond.status
        if not fake._wait(self.connection, respond.first_byte_delay):
            record.hung_up()
            return
        if respond.status != 200:
            default_status, default_message = _DEFAULT_ERRORS.get(respond.status, ("error", "Error"))
            extra = {"retry-after": str(respond.retry_after)} if respond.retry_after is not None else {}
            self._send_error(
                respond.status, respond.error_status or default_status, respond.message or default_message, extra
            )
            return
        audio = respond.audio if respond.audio is not None else expected_audio(body["text"])
        try:
            self._send_audio(fake, record, respond, audio)
        except (_ClientGone, ConnectionError, OSError):
            record.hung_up()
            self.close_connection = True

    def _send_audio(self, fake: "FakeElevenLabs", record: RequestRecord, respond: Respond, audio: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/basic")
        self.send_header("request-id", f"fake-{id(record):x}")
        if record.streaming:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(audio)))
        self.end_headers()
        limit = len(audio) if respond.cut_after is None else min(respond.cut_after, len(audio))
        size = respond.chunk_size or max(1, len(audio))
        offset = 0
        while offset < limit:
            if offset and not fake._wait(self.connection, respond.chunk_delay):
                raise _ClientGone()
            piece = audio[offset : min(offset + size, limit)]
            if not offset:
                record.first_byte_at = time.perf_counter()
            if record.streaming:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            self.wfile.flush()
            offset += len(piece)
            record.bytes_sent = offset
        if respond.cut_after is not None and respond.cut_after < len(audio):
            # A stream broken midway: drop the connection without the last chunk.
            record.cut = True
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if record.streaming:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        record.completed = True

    def _send_error(self, status: int, error_status: str, message: str, extra: dict[str, str] | None = None) -> None:
        payload = json.dumps({"detail": {"status": error_status, "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeElevenLabs"


class FakeElevenLabs:
    """The fake API on 127.0.0.1, served from a background thread while in a ``with`` block.

    ``api_key``: when set, requests without that ``xi-api-key`` get 401.
    ``default``: the answer when the plan is empty.
    """

    def __init__(self, *, api_key: str | None = None, default: Respond | None = None, poll_interval: float = 0.01):
        self.api_key = api_key
        self.default = default if default is not None else Respond()
        self.poll_interval = poll_interval
        self.requests: list[RequestRecord] = []
        self._plan: collections.deque[Respond] = collections.deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeElevenLabs is not running: use it in a 'with' block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def plan(self, *responds: Respond) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._plan.extend(responds)

    def audio_requests(self) -> list[RequestRecord]:
        """The logged requests that reached a text-to-speech route."""
        with self._lock:
            return [record for record in self.requests if record.voice_id is not None]

    def __enter__(self) -> "FakeElevenLabs":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-elevenlabs", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._closing.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # wake handlers blocked reading a kept-alive connection
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- called from handler threads --

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _next_respond(self) -> Respond:
        with self._lock:
            return self._plan.popleft() if self._plan else self.default

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _wait(self, connection: socket.socket, seconds: float) -> bool:
        """Wait ``seconds`` watching the client; False if it hung up (or the fake is closing)."""
        deadline = time.monotonic() + seconds
        while True:
            if self._closing.is_set():
                return False
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([connection], [], [], max(0.0, min(remaining, self.poll_interval)))
            if readable:
                try:
                    data = connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return False
                if not data:
                    return False
                # A pipelined next request: not a hang-up. Keep waiting without spinning.
                if remaining > 0:
                    threading.Event().wait(min(remaining, self.poll_interval))
            if remaining <= 0:
                return True


@pytest.fixture
def fake_elevenlabs():
    """A running :class:`FakeElevenLabs` with no required key."""
    with FakeElevenLabs() as fake:
        yield fake
