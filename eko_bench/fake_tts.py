"""The bench's own stand-in for the ElevenLabs streaming endpoint, on loopback.

Theory of operation: ``POST /v1/text-to-speech/{voice}/stream?output_format=ulaw_8000``
with a JSON body ``{"text": ...}`` is answered after a set *time to first byte*
with chunked µ-law, the way the real endpoint streams. The audio is made to be
recognised at the caller: every sample is ``LIVE_BYTE``, a mid-level µ-law code
that neither silence nor espeak-rendered speech holds for ``LIVE_RUN`` samples in a
row, and its length follows the text (deterministic per text). The bench's
scenarios give every call its own text, so every call is a dynamic-cache miss and
really waits for the first byte.

A stdlib ``ThreadingHTTPServer`` (one thread per request) is enough: at 100
concurrent calls it holds 100 sleeping threads. Waits use an Event, so stopping
the fake ends every pending answer at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eko_bench.targets import check_loopback
from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE, ULAW_TO_ALAW
from eko_rtp.errors import UserError

API_KEY = "eko-bench-fake-key"
LIVE_BYTE = 0x35  # µ-law of about -2900 (linear 16-bit): audible, never silence
LIVE_RUN = 40  # samples (5 ms) of LIVE_BYTE that mark a live frame
SAMPLES_PER_CHARACTER = 400  # 50 ms of audio per character of text
MAX_SAMPLES = 8000 * 10  # 10 s whatever the text
CHUNK_BYTES = 1600  # 200 ms of audio per chunk
CHUNK_DELAY = 0.05  # s between chunks: faster than real time, as the real endpoint streams
_PATH_PREFIX = ("v1", "text-to-speech")
_LIVE_TAIL = {0: bytes([LIVE_BYTE]) * LIVE_RUN, 8: bytes([ULAW_TO_ALAW[LIVE_BYTE]]) * LIVE_RUN}
_SILENCE = {0: bytes((ULAW_SILENCE, 0x7F)), 8: bytes((ALAW_SILENCE, 0x55))}

SILENT, SOUND, LIVE = 0, 1, 2  # what a received RTP payload is (classify_payload)


def live_audio(text: str) -> bytes:
    """The µ-law the fake streams for ``text``: ``LIVE_BYTE`` for 50 ms per character (10 s at most)."""
    return bytes([LIVE_BYTE]) * min(MAX_SAMPLES, max(160, SAMPLES_PER_CHARACTER * len(text)))


def classify_payload(payload: bytes, payload_type: int) -> int:
    """SILENT (all silence codes), LIVE (ends in a run of the fake's audio) or SOUND (anything else).

    "Ends in" and not "is": after a cached phrase whose length is not whole frames,
    the first live frame carries the phrase's tail before the live audio.
    """
    if payload.endswith(_LIVE_TAIL.get(payload_type, _LIVE_TAIL[0])):
        return LIVE
    if not payload.strip(_SILENCE.get(payload_type, _SILENCE[0])):
        return SILENT
    return SOUND


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # the bench's output is its report; requests are counted instead

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        arrived_ns = time.time_ns()  # CLOCK_REALTIME, like the bench's packet timestamps
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if 0 < length <= 65536 else b""
        if len(parts) != 4 or tuple(parts[:2]) != _PATH_PREFIX or parts[3] != "stream":
            return self._refuse(404, f"no route for POST {url.path}")
        if self.headers.get("xi-api-key") != self.server.fake.api_key:
            return self._refuse(401, "invalid API key")
        if dict(urllib.parse.parse_qsl(url.query)).get("output_format") != "ulaw_8000":
            return self._refuse(422, "the bench's fake renders only output_format=ulaw_8000")
        try:
            text = json.loads(raw)["text"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str) or not text:
            return self._refuse(422, "body must be a JSON object with a non-empty 'text'")
        fake = self.server.fake
        fake._count()
        if fake._stopping.wait(fake.first_byte_delay):
            return
        audio = live_audio(text)
        self.send_response(200)
        self.send_header("Content-Type", "audio/basic")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for offset in range(0, len(audio), CHUNK_BYTES):
                if offset and fake._stopping.wait(CHUNK_DELAY):
                    return
                piece = audio[offset:offset + CHUNK_BYTES]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                if not offset:
                    fake._note(text, arrived_ns, time.time_ns())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the server hung up mid-stream (the call ended): nothing to answer
            self.close_connection = True

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"detail": {"status": "eko_bench_fake", "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 100+ calls may open their streams in the same instant
    fake: "FakeTts"


class _Server6(_Server):
    address_family = socket.AF_INET6


class FakeTts:
    """The endpoint on ``host`` (loopback only), answering after ``first_byte_delay`` seconds.

    Use as a context manager; ``base_url`` and ``api_key`` go to the server's
    ELEVENLABS_BASE_URL and ELEVENLABS_API_KEY.
    """

    def __init__(self, *, host: str = "127.0.0.1", first_byte_delay: float, api_key: str = API_KEY):
        if not 0 <= first_byte_delay <= 10:
            raise UserError(f"time to first byte {first_byte_delay * 1000:.0f} ms is outside 0..10000 ms",
                            key="--tts-first-byte-ms")
        self.host = check_loopback(host)
        self.first_byte_delay = first_byte_delay
        self.api_key = api_key
        self.requests = 0
        # text -> (request read, first chunk written), CLOCK_REALTIME ns: the bench can
        # tell the endpoint's own lateness (its threads share the bench's GIL) from the server's.
        self.timings: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _note(self, text: str, arrived_ns: int, first_byte_ns: int) -> None:
        with self._lock:
            self.timings[text] = (arrived_ns, first_byte_ns)

    def __enter__(self) -> "FakeTts":
        self._server = (_Server6 if ":" in self.host else _Server)((self.host, 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="eko-bench-fake-tts", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
