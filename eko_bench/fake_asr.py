"""The bench's own stand-in for Deepgram's live transcription websocket (``/v1/listen``), on loopback.

Theory of operation: at 500 listening calls the server streams 25 000 websocket
messages a second (one per 20 ms frame per call), and the fake shares the bench's
CPU with the load generator. A websocket library per message would cost more than
the server being measured, so this fake speaks just enough of RFC 6455 itself, in
a *child process* with one ``select.epoll`` loop over non-blocking sockets (the
RTP engine's reasons: no GIL shared with the bench's SIP side, its own CPU figure).

Each connection is a :class:`Session`, sans-I/O: ``receive(bytes) -> bytes to
send``. It checks the handshake as Deepgram does (``GET /v1/listen``, an
``Authorization: Token <key>`` header, a websocket upgrade; anything else is
refused with Deepgram's ``dg-error`` header and JSON body: 404, 401 or 400) and
answers ``101`` with the RFC 6455 §4.2.2 accept key. Then it reads client frames
(RFC 6455 §5.2; they must be masked, §5.3): audio (binary) frames are only counted,
never unmasked or copied; text frames are unmasked and read: ``KeepAlive`` is
counted, ``CloseStream`` is answered with a ``Metadata`` reply (the audio's
duration) and a close frame with 1000, as Deepgram does; pings are answered with
pongs carrying their payload (§5.5.3), and a close from the client is echoed
(§5.5.1). Every ``results_every_bytes`` of audio an interim ``Results`` reply goes
out (prebuilt bytes; ``is_final`` false, so a script waiting in ``listen`` is not
answered and keeps its timing). Frames are not fragmented by the server's client;
continuation frames are still followed. A text message over ``MAX_TEXT`` or a frame
over ``MAX_FRAME`` closes the stream with 1009, an unmasked frame with 1002.

The loop reads each ready socket once per wake-up and writes replies at once; a
reply that does not fit the socket's buffer waits for ``EPOLLOUT``. At the end the
child sends back its counters and its CPU time.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import select
import socket
import struct
import time
import urllib.parse

from eko_bench.children import STOP_TIMEOUT, last_words
from eko_bench.targets import check_loopback
from eko_rtp.errors import UserError

API_KEY = "eko-bench-fake-asr-key"
REQUEST_ID = "eko-bench-fake-asr"
AUDIO_BYTES_PER_SECOND = 8000  # G.711: one byte a sample at 8 kHz
RESULTS_EVERY_BYTES = AUDIO_BYTES_PER_SECOND  # an interim Results reply per second of audio
MAX_HANDSHAKE = 16 * 1024
MAX_TEXT = 64 * 1024
MAX_FRAME = 1 << 20
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = STOP_TIMEOUT
_RECEIVE_SIZE = 65536

# RFC 6455 §5.2 opcodes.
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# RFC 6455 §7.4.1 close codes.
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG = 1000, 1002, 1009
_LENGTH_16 = struct.Struct("!H")
_LENGTH_64 = struct.Struct("!Q")


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked frame, as a server sends it (RFC 6455 §5.1, §5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + _LENGTH_16.pack(size)
    else:
        header = bytes((0x80 | opcode, 127)) + _LENGTH_64.pack(size)
    return header + payload


def unmask(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """RFC 6455 §5.3: XOR with the 4-byte key, repeated (one big-integer XOR, no loop per byte)."""
    size = len(payload)
    if not size:
        return b""
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


def results_message(text: str = "allo", *, start: float = 0.0, duration: float = 1.0) -> str:
    """An interim ``Results`` reply in the shape Deepgram sends (channel 0 of 1, word timings)."""
    words = text.split()
    step = duration / max(1, len(words))
    return json.dumps({
        "type": "Results", "channel_index": [0, 1], "duration": duration, "start": start,
        "is_final": False, "speech_final": False, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": [
            {"word": word, "start": start + index * step, "end": start + (index + 1) * step, "confidence": 0.9,
             "punctuated_word": word} for index, word in enumerate(words)]}]},
        "metadata": {"request_id": REQUEST_ID, "model_info": {"name": "eko-bench-fake", "version": "0",
                                                              "arch": "fake"}, "model_uuid": "fake"},
    })


def metadata_message(duration: float) -> str:
    """The ``Metadata`` reply Deepgram sends after ``CloseStream``: the audio's duration in seconds."""
    return json.dumps({"type": "Metadata", "transaction_key": "deprecated", "request_id": REQUEST_ID,
                       "sha256": "0" * 64, "created": "2025-01-01T00:00:00.000Z", "duration": duration,
                       "channels": 1})


class State(enum.Enum):
    HANDSHAKE = "handshake"  # reading the HTTP upgrade request
    OPEN = "open"  # streaming
    CLOSING = "closing"  # our close frame is out; waiting for the client's
    DONE = "done"  # nothing more to read: close the socket once the replies are out


# Every move a session makes; any other is a bug in the fake.
TRANSITIONS = {
    (State.HANDSHAKE, "accepted"): State.OPEN,
    (State.HANDSHAKE, "refused"): State.DONE,
    (State.OPEN, "close_stream"): State.CLOSING,
    (State.OPEN, "client_close"): State.DONE,
    (State.OPEN, "protocol_error"): State.DONE,
    (State.CLOSING, "client_close"): State.DONE,
    (State.CLOSING, "protocol_error"): State.DONE,
}


class Session:
    """One connection's protocol, sans I/O: bytes in, bytes to send out; ``done`` once over."""

    def __init__(self, *, api_key: str, results_frame: bytes, results_every_bytes: int):
        self._api_key = api_key
        self._results_frame = results_frame
        self._results_every = results_every_bytes
        self._next_results = results_every_bytes
        self._buffer = bytearray()
        self._message_opcode: int | None = None  # a fragmented message's opcode, until its FIN
        self._text = bytearray()
        self.state = State.HANDSHAKE
        self.status: int | None = None  # 101, or the refusal's
        self.audio_bytes = 0
        self.audio_frames = 0
        self.keepalives = 0
        self.close_streams = 0
        self.pings = 0
        self.results_sent = 0
        self.other_text = 0
        self.ended = ""  # "closed" (CloseStream, then the client's close), "client-closed", "protocol-error"

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def _move(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the client; return what to send back (maybe nothing)."""
        if self.state is State.DONE:
            return b""
        self._buffer += data
        if self.state is State.HANDSHAKE:
            return self._handshake()
        return self._frames()

    # -- the HTTP upgrade --

    def _handshake(self) -> bytes:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HANDSHAKE:
                return self._refuse(431, "Request Header Fields Too Large", "handshake too large")
            return b""
        head = bytes(self._buffer[:end]).decode("latin-1")
        rest = bytes(self._buffer[end + 4:])
        self._buffer.clear()
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or parts[0] != "GET":
            return self._refuse(400, "Bad Request", f"expected a GET upgrade, got {lines[0][:80]!r}")
        if urllib.parse.urlsplit(parts[1]).path != "/v1/listen":
            return self._refuse(404, "Not Found", f"no route for {parts[1][:80]}")
        if headers.get("authorization") != f"Token {self._api_key}":
            return self._refuse(401, "Unauthorized", "Invalid credentials.")
        key = headers.get("sec-websocket-key")
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            return self._refuse(400, "Bad Request", "not a websocket upgrade")
        accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
        self.status = 101
        self._move("accepted")
        answer = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\ndg-request-id: {REQUEST_ID}\r\n\r\n").encode("ascii")
        if rest:
            self._buffer += rest
            answer += self._frames()
        return answer

    def _refuse(self, status: int, reason: str, words: str) -> bytes:
        self.status = status
        self._buffer.clear()
        self._move("refused")
        body = json.dumps({"err_code": reason.upper().replace(" ", "_"), "err_msg": words,
                           "request_id": REQUEST_ID}).encode()
        return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"dg-error: {words}\r\ndg-request-id: {REQUEST_ID}\r\nConnection: close\r\n\r\n").encode() + body

    # -- websocket frames --

    def _frames(self) -> bytes:
        buffer = self._buffer
        size = len(buffer)
        position = 0
        out = []
        while size - position >= 2 and self.state is not State.DONE:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = _LENGTH_16.unpack_from(buffer, position + 2)[0]
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = _LENGTH_64.unpack_from(buffer, position + 2)[0]
                header = 10
            if not second & 0x80:  # RFC 6455 §5.1: a client masks every frame
                out.append(self._fail(CLOSE_PROTOCOL_ERROR, "unmasked client frame"))
                break
            if length > MAX_FRAME:
                out.append(self._fail(CLOSE_TOO_BIG, "frame too large"))
                break
            end = position + header + 4 + length
            if end > size:
                break
            opcode = first & 0x0F
            final = first & 0x80
            if opcode == CONTINUATION:
                opcode = self._message_opcode if self._message_opcode is not None else BINARY
            elif opcode in (TEXT, BINARY):
                self._message_opcode = None if final else opcode
            if opcode == BINARY:
                self.audio_bytes += length
                if final:
                    self.audio_frames += 1
                if self.audio_bytes >= self._next_results and self.state is State.OPEN:
                    self._next_results += self._results_every
                    self.results_sent += 1
                    out.append(self._results_frame)
            else:
                key = bytes(buffer[position + header:position + header + 4])
                payload = unmask(buffer[position + header + 4:end], key)
                if opcode == TEXT:
                    self._text += payload
                    if len(self._text) > MAX_TEXT:
                        out.append(self._fail(CLOSE_TOO_BIG, "text message too large"))
                        break
                    if final:
                        out.append(self._text_message(bytes(self._text)))
                        self._text.clear()
                elif opcode == PING:
                    self.pings += 1
                    out.append(server_frame(PONG, payload))
                elif opcode == CLOSE:
                    if self.state is State.OPEN:
                        out.append(server_frame(CLOSE, payload[:2]))  # RFC 6455 §5.5.1: echo the code
                        self.ended = "client-closed"
                    else:
                        self.ended = "closed"
                    self._move("client_close")
                # PONG: nothing to do
            position = end
        del buffer[:position]
        return b"".join(out)

    def _text_message(self, text: bytes) -> bytes:
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "KeepAlive":
            self.keepalives += 1
            return b""
        if kind == "CloseStream" and self.state is State.OPEN:
            self.close_streams += 1
            self._move("close_stream")
            duration = round(self.audio_bytes / AUDIO_BYTES_PER_SECOND, 3)
            return (server_frame(TEXT, metadata_message(duration).encode())
                    + server_frame(CLOSE, _LENGTH_16.pack(CLOSE_NORMAL)))
        self.other_text += 1
        return b""

    def _fail(self, code: int, words: str) -> bytes:
        self.ended = "protocol-error"
        self._move("protocol_error")
        return server_frame(CLOSE, _LENGTH_16.pack(code) + words.encode())


# -- the child process ---------------------------------------------------------------

_COUNTED = ("audio_bytes", "audio_frames", "keepalives", "close_streams", "pings", "results_sent", "other_text")


class _Loop:
    def __init__(self, connection: multiprocessing.connection.Connection, listener: socket.socket, api_key: str,
                 results_every_bytes: int):
        self._connection = connection
        self._listener = listener
        self._api_key = api_key
        self._results_every = results_every_bytes
        self._results_frame = server_frame(TEXT, results_message().encode())
        self._epoll = select.epoll()
        self._sockets: dict[int, socket.socket] = {}
        self._sessions: dict[int, Session] = {}
        self._pending: dict[int, bytearray] = {}  # replies the socket had no room for
        self._open = 0  # streams past their handshake, not yet closed
        self.counts = dict.fromkeys(("connections", "streams", "refused", "open_max", "closed_cleanly",
                                     "client_closed", "protocol_errors", "dropped", *_COUNTED), 0)

    def run(self) -> None:
        control = self._connection.fileno()
        listening = self._listener.fileno()
        self._epoll.register(control, select.EPOLLIN)
        self._epoll.register(listening, select.EPOLLIN)
        poll = self._epoll.poll
        sessions = self._sessions
        while True:
            for fd, events in poll():
                if fd == listening:
                    self._accept()
                elif fd == control:
                    return
                elif fd in sessions:
                    if events & select.EPOLLOUT:
                        self._flush(fd)
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                        self._read(fd)

    def _accept(self) -> None:
        while True:
            try:
                made, _address = self._listener.accept()
            except BlockingIOError:
                return
            made.setblocking(False)
            made.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = made.fileno()
            self._sockets[fd] = made
            self._sessions[fd] = Session(api_key=self._api_key, results_frame=self._results_frame,
                                         results_every_bytes=self._results_every)
            self._epoll.register(fd, select.EPOLLIN)
            self.counts["connections"] += 1

    def _read(self, fd: int) -> None:
        try:
            data = self._sockets[fd].recv(_RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        session = self._sessions[fd]
        if not data:
            self._close(fd)
            return
        handshaking = session.state is State.HANDSHAKE
        reply = session.receive(data)
        if handshaking and session.status == 101:
            self._open += 1
            self.counts["streams"] += 1
            self.counts["open_max"] = max(self.counts["open_max"], self._open)
        if reply:
            self._send(fd, reply)
        if session.done and fd in self._sockets and not self._pending.get(fd):
            self._close(fd)

    def _send(self, fd: int, data: bytes) -> None:
        pending = self._pending.get(fd)
        if pending:
            pending += data
            return
        try:
            sent = self._sockets[fd].send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(fd)
            return
        if sent < len(data):
            self._pending[fd] = bytearray(data[sent:])
            self._epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, fd: int) -> None:
        pending = self._pending.get(fd)
        if pending:
            try:
                sent = self._sockets[fd].send(pending)
            except BlockingIOError:
                return
            except OSError:
                self._close(fd)
                return
            del pending[:sent]
        if not pending:
            self._pending.pop(fd, None)
            self._epoll.modify(fd, select.EPOLLIN)
            if self._sessions[fd].done:
                self._close(fd)

    def _close(self, fd: int) -> None:
        made = self._sockets.pop(fd, None)
        if made is None:
            return
        session = self._sessions.pop(fd)
        self._pending.pop(fd, None)
        self._epoll.unregister(fd)
        made.close()
        if session.status == 101:
            self._open -= 1
        self._count(session)

    def _count(self, session: Session) -> None:
        counts = self.counts
        if session.status is not None and session.status != 101:
            counts["refused"] += 1
        elif session.ended == "closed":
            counts["closed_cleanly"] += 1
        elif session.ended == "client-closed":
            counts["client_closed"] += 1
        elif session.ended == "protocol-error":
            counts["protocol_errors"] += 1
        elif session.status == 101:
            counts["dropped"] += 1  # the connection ended without a close handshake
        for name in _COUNTED:
            counts[name] += getattr(session, name)

    def close_all(self) -> None:
        for fd in list(self._sockets):
            self._close(fd)
        self._listener.close()


def _child(connection: multiprocessing.connection.Connection, host: str, api_key: str, results_every_bytes: int) -> None:
    started_cpu = time.process_time()
    started_wall = time.monotonic()
    try:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(4096)
        listener.setblocking(False)
    except OSError as error:
        connection.send(("error", f"cannot listen on {host}: {error}"))
        return
    connection.send(("ready", listener.getsockname()[1]))
    loop = _Loop(connection, listener, api_key, results_every_bytes)
    try:
        loop.run()
    except BaseException as error:  # reported to the parent, which raises it from stop()
        connection.send(("error", repr(error)))
        raise
    loop.close_all()
    connection.send(("stats", {**loop.counts, "busy_seconds": time.process_time() - started_cpu,
                               "wall_seconds": time.monotonic() - started_wall}))


class FakeAsr:
    """The endpoint on ``host`` (loopback only), in a process of its own; a context manager.

    ``base_url`` and ``api_key`` go to the server's DEEPGRAM_BASE_URL and
    DEEPGRAM_API_KEY; ``stats`` holds the child's counters once stopped.
    """

    def __init__(self, *, host: str = "127.0.0.1", api_key: str = API_KEY,
                 results_every_bytes: int = RESULTS_EVERY_BYTES):
        self.host = check_loopback(host)
        self.api_key = api_key
        self.results_every_bytes = results_every_bytes
        self.port: int | None = None
        self.stats: dict | None = None
        self._connection, self._child_end = multiprocessing.Pipe(duplex=True)
        self._process = multiprocessing.get_context("spawn").Process(
            target=_child, args=(self._child_end, host, api_key, results_every_bytes), name="eko-bench-asr",
            daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeAsr is not serving: enter it first")
        return f"ws://[{self.host}]:{self.port}" if ":" in self.host else f"ws://{self.host}:{self.port}"

    def __enter__(self) -> "FakeAsr":
        self._process.start()
        self._child_end.close()
        if not self._connection.poll(_START_TIMEOUT):
            self._process.kill()
            raise UserError(f"the fake speech-recognition endpoint did not start within {_START_TIMEOUT:.0f} s",
                            key="--asr")
        try:
            kind, payload = self._connection.recv()
        except EOFError:
            kind, payload = "error", f"it exited with status {self._process.exitcode}"
        if kind != "ready":
            self._process.join(timeout=_STOP_TIMEOUT)
            raise UserError(f"the fake speech-recognition endpoint failed: {payload}", key="--asr")
        self.port = payload
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> dict | None:
        """Stop the endpoint (idempotent) and keep its counters in ``stats``."""
        if self.stats is not None or self._process.pid is None or self.port is None:
            return self.stats
        kind, payload = last_words(self._connection, self._process, "stop",
                                   what="the fake speech-recognition endpoint", timeout=_STOP_TIMEOUT)
        if kind != "stats":
            raise RuntimeError(f"the fake speech-recognition endpoint failed: {payload}")
        self.stats = payload
        return payload
