"""A websocket client as data (RFC 6455): the opening handshake, masked frames out, bounded frames in.

Theory of operation: no networking here (the trio shell is
:mod:`eko_rtp.asr.deepgram_client`). A :class:`ClientConnection` is built with the
request's host, resource and extra headers; :meth:`~ClientConnection.handshake_request`
is the HTTP/1.1 upgrade to send (§4.1), with a 16-byte nonce as
``Sec-WebSocket-Key``. Bytes from the server go to
:meth:`~ClientConnection.receive_data` (``b""`` for the end of the stream), which
returns events: first :class:`Accepted` once the ``101`` answer is complete and its
``Sec-WebSocket-Accept`` is the SHA-1 of our key and the GUID (§4.2.2, §4.1 item 4),
or :class:`Rejected` with the status, headers and (bounded) body of any other answer;
then :class:`Message` for each complete text or binary message, :class:`Pong`, and
:class:`Closed` last (the server's close code and reason, or 1006 when the stream
ended without a close frame, §7.1.5).

Frames we send (§5.2) are built whole by :meth:`~ClientConnection.send_binary`,
:meth:`~ClientConnection.send_text`, :meth:`~ClientConnection.send_ping` and
:meth:`~ClientConnection.send_close`, each returning the bytes to write: unfragmented,
masked (§5.3: a client masks every frame with a fresh 4-byte key, here cut from a
pool of random bytes refilled from the injected source; the XOR is one big-integer
operation over the whole payload). The answers the protocol owes the peer, a pong for
a ping (§5.5.2) and the echo of a close (§5.5.1), are queued and taken with
:meth:`~ClientConnection.data_to_send`.

Incoming frames are parsed incrementally and never trusted: reserved bits set (no
extension is negotiated, §5.2), an unknown opcode, a masked server frame (§5.1), a
control frame that is fragmented or over 125 bytes (§5.5), a continuation out of place
(§5.4), a close code that may not be sent (§7.4), a frame over ``max_frame_size``, a
message over ``max_message_size`` or in more than ``max_fragments`` pieces, a text
message or close reason that is not UTF-8 (§8.1): each raises
:class:`RemoteProtocolError` carrying the close code that fails the connection (1002,
1007, 1009; §7.1.7), with that close frame queued for :meth:`data_to_send`. The
handshake answer is bounded too (:data:`MAX_HANDSHAKE_SIZE`, :data:`MAX_BODY_SIZE`).
Calls that make no sense in the current state (sending before the handshake or after
our close) raise :class:`LocalProtocolError`: the caller's bug, not the server's.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct
from collections.abc import Callable, Sequence

import attrs

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "MAX_BODY_SIZE",
    "MAX_HANDSHAKE_SIZE",
    "Accepted",
    "ClientConnection",
    "Closed",
    "LocalProtocolError",
    "Message",
    "Pong",
    "Rejected",
    "RemoteProtocolError",
    "State",
    "WebSocketError",
    "accept_key",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MAX_HANDSHAKE_SIZE = 16 * 1024  # the answer's status line and headers
MAX_BODY_SIZE = 4 * 1024  # what we keep of a refusal's body (its words, for the error)

# RFC 6455 §5.2 opcodes.
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))

# RFC 6455 §7.4.1 close codes; 1005 and 1006 are never sent (§7.4.1), only reported.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
# §7.4.1 and the IANA registry: the codes a peer may put in a close frame.
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

# Frame layout (RFC 6455 §5.2), first two bytes:
#   FIN(1) RSV1-3(3) opcode(4) | MASK(1) payload length(7: 0-125, 126: 16-bit follows, 127: 64-bit follows)
# then the extended length, then the 4-byte masking key (client frames only), then the payload.
_LENGTH_16 = struct.Struct("!H")
_LENGTH_64 = struct.Struct("!Q")
_CLOSE_CODE = struct.Struct("!H")
_MASK_POOL_SIZE = 256  # random bytes fetched at once: 64 masking keys (6.4 s of audio messages)


class WebSocketError(Exception):
    """The websocket failed."""


class RemoteProtocolError(WebSocketError):
    """The server broke RFC 6455; ``close_code`` is the code that fails the connection (§7.1.7).

    ``close_code`` is None for a bad handshake answer: there is no websocket to close (§4.1).
    """

    def __init__(self, message: str, *, close_code: int | None = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


class LocalProtocolError(WebSocketError):
    """We asked for something the connection's state does not allow (a bug on our side)."""


class State(enum.Enum):
    CONNECTING = "connecting"  # the handshake request is out, its answer not yet complete
    OPEN = "open"
    CLOSING = "closing"  # our close frame is out, the server's not yet in (§7.1.2)
    CLOSED = "closed"  # the closing handshake is done, the stream ended, or the handshake was refused


# Every move the connection makes (the event that causes it, in the comment).
TRANSITIONS = {
    State.CONNECTING: {State.OPEN, State.CLOSED},  # 101 accepted / refused, ended, or bad answer
    State.OPEN: {State.CLOSING, State.CLOSED},  # we close / the server closes, the stream ends, or a bad frame
    State.CLOSING: {State.CLOSED},  # the server's close, the stream's end, or a bad frame
    State.CLOSED: set(),
}


@attrs.frozen(kw_only=True)
class Accepted:
    """The server switched protocols (101 with the right accept key): the websocket is open."""


@attrs.frozen(kw_only=True)
class Rejected:
    """The server answered the handshake with ``status`` (not 101); ``body`` cut at :data:`MAX_BODY_SIZE`."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@attrs.frozen(kw_only=True)
class Message:
    """One complete message: ``str`` for a text message, ``bytes`` for a binary one."""

    data: str | bytes


@attrs.frozen(kw_only=True)
class Pong:
    """A pong (§5.5.3), the answer to a ping of ours when ``payload`` is that ping's."""

    payload: bytes


@attrs.frozen(kw_only=True)
class Closed:
    """The connection is over: the server's close ``code`` and ``reason``, or 1006 (no close frame)."""

    code: int
    reason: str


Event = Accepted | Rejected | Message | Pong | Closed


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server answers the ``Sec-WebSocket-Key`` ``key`` with (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def _header_token(value: bytes) -> set[bytes]:
    """A comma-separated header value as a set of lower-case tokens (``Upgrade``, ``Connection``)."""
    return {part.strip().lower() for part in value.split(b",")}


class ClientConnection:
    """One websocket client connection's protocol state; see the module docstring."""

    def __init__(self, *, host: str, resource: str, headers: Sequence[tuple[bytes, bytes]] = (),
                 max_frame_size: int = 1 << 20, max_message_size: int = 1 << 20, max_fragments: int = 64,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        for name, value in (("max_frame_size", max_frame_size), ("max_message_size", max_message_size),
                            ("max_fragments", max_fragments)):
            if not value > 0:
                raise ValueError(f"ClientConnection.{name} must be > 0, got {value!r}")
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._random_bytes = random_bytes
        self.key = base64.b64encode(random_bytes(16)).decode("ascii")  # §4.1 item 7: a 16-byte nonce
        lines = [f"GET {resource} HTTP/1.1".encode("ascii"), b"Host: " + host.encode("ascii"),
                 b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + self.key.encode("ascii"),
                 b"Sec-WebSocket-Version: 13"]
        lines.extend(name + b": " + value for name, value in headers)
        self._request = b"\r\n".join(lines) + b"\r\n\r\n"
        self.state = State.CONNECTING
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._masks = b""
        self._mask_at = 0
        # The fragmented message being put together (§5.4): its opcode, pieces and size.
        self._message_opcode: int | None = None
        self._fragments: list[bytes] = []
        self._message_size = 0
        # A refusal's head, parsed, while its body comes in.
        self._refusal: tuple[int, tuple[tuple[bytes, bytes], ...], int | None] | None = None

    def _move(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"websocket: no move from {self.state.value} to {state.value}")
        self.state = state

    # -- out ---------------------------------------------------------------------------

    def handshake_request(self) -> bytes:
        """The opening handshake (§4.1), to send first."""
        return self._request

    def data_to_send(self) -> bytes:
        """The answers owed to the server (pongs, the echo of its close, a failing close), taken once."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _mask_key(self) -> bytes:
        at = self._mask_at
        if at + 4 > len(self._masks):
            self._masks, at = self._random_bytes(_MASK_POOL_SIZE), 0
        self._mask_at = at + 4
        return self._masks[at:at + 4]

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 1 << 16:
            header = bytes((0x80 | opcode, 0x80 | 126)) + _LENGTH_16.pack(size)
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + _LENGTH_64.pack(size)
        key = self._mask_key()
        if not size:
            return header + key
        repeated = (key * ((size + 3) >> 2))[:size]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")
        return header + key + masked

    def _check_open(self, what: str) -> None:
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"websocket: cannot send {what} while {self.state.value}")

    def send_binary(self, data: bytes) -> bytes:
        """A binary message as one masked frame."""
        self._check_open("a binary message")
        return self._frame(BINARY, data)

    def send_text(self, text: str) -> bytes:
        """A text message as one masked frame."""
        self._check_open("a text message")
        return self._frame(TEXT, text.encode("utf-8"))

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping (§5.5.2); its payload (125 bytes at most) comes back in the :class:`Pong`."""
        self._check_open("a ping")
        if len(payload) > 125:
            raise LocalProtocolError(f"websocket: a ping payload is 125 bytes at most, got {len(payload)}")
        return self._frame(PING, payload)

    def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Our close frame (§5.5.1, §7.1.2); the connection is then closing until the server's answers."""
        self._check_open("a close")
        if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
            raise LocalProtocolError(f"websocket: {code} is not a close code one may send")
        payload = _CLOSE_CODE.pack(code) + reason.encode("utf-8")
        if len(payload) > 125:
            raise LocalProtocolError(f"websocket: a close reason is 123 bytes at most, got {len(payload) - 2}")
        self._move(State.CLOSING)
        return self._frame(CLOSE, payload)

    # -- in ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """The events ``data`` from the server completes; ``b""``: the server's stream ended."""
        if self.state is State.CLOSED:
            return []
        if not data:
            return self._ended()
        self._buffer += data
        if self.state is State.CONNECTING:
            answer = self._answer()
            if answer is None:
                return []
            if isinstance(answer, Rejected):
                return [answer]
            events: list[Event] = [answer]
        else:
            events = []
        try:
            self._frames(events)
        except RemoteProtocolError as error:
            assert error.close_code is not None
            self._fail(error.close_code, str(error))
            raise
        return events

    def _ended(self) -> list[Event]:
        if self.state is State.CONNECTING:
            if self._refusal is not None:  # a refusal without Content-Length: its body ran to the end
                return [self._rejected(bytes(self._buffer[:MAX_BODY_SIZE]))]
            self._move(State.CLOSED)
            raise RemoteProtocolError("websocket handshake: the server closed the connection before answering", close_code=None)
        self._move(State.CLOSED)
        return [Closed(code=CLOSE_ABNORMAL, reason="")]

    def _fail(self, code: int, words: str) -> None:
        """§7.1.7: fail the connection, with a close frame if ours is not out yet."""
        if self.state is State.OPEN:
            reason = words.encode("utf-8")[:123].decode("utf-8", "ignore")
            self._outgoing += self._frame(CLOSE, _CLOSE_CODE.pack(code) + reason.encode("utf-8"))
        if self.state is not State.CLOSED:
            self._move(State.CLOSED)
        self._buffer.clear()

    # -- the handshake answer (§4.1, §4.2.2) ----------------------------------------------

    def _answer(self) -> Accepted | Rejected | None:
        if self._refusal is not None:
            return self._refusal_body()
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HANDSHAKE_SIZE:
                self._move(State.CLOSED)
                raise RemoteProtocolError(f"websocket handshake: the answer's head is over {MAX_HANDSHAKE_SIZE} "
                                          f"bytes", close_code=None)
            return None
        if end > MAX_HANDSHAKE_SIZE:
            self._move(State.CLOSED)
            raise RemoteProtocolError(f"websocket handshake: the answer's head is over {MAX_HANDSHAKE_SIZE} bytes", close_code=None)
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        try:
            status, headers = self._parse_head(head)
        except RemoteProtocolError:
            self._move(State.CLOSED)
            raise
        named = {name.lower(): value for name, value in headers}
        if status != 101:
            length = named.get(b"content-length")
            size = int(length) if length is not None and length.strip().isdigit() else None
            self._refusal = (status, headers, size)
            return self._refusal_body()
        problem = self._upgrade_problem(named)
        if problem is not None:
            self._move(State.CLOSED)
            raise RemoteProtocolError(f"websocket handshake: {problem}", close_code=None)
        self._move(State.OPEN)
        return Accepted()

    @staticmethod
    def _parse_head(head: bytes) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[0] != b"HTTP/1.1" or not (len(parts[1]) == 3 and parts[1].isdigit()):
            shown = status_line[:60].decode("latin-1").encode("unicode_escape").decode("ascii")
            raise RemoteProtocolError(f"websocket handshake: not an HTTP/1.1 status line: {shown!r}", close_code=None)
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                shown = line[:60].decode("latin-1").encode("unicode_escape").decode("ascii")
                raise RemoteProtocolError(f"websocket handshake: a malformed header line: {shown!r}", close_code=None)
            headers.append((name, value.strip()))
        return int(parts[1]), tuple(headers)

    def _upgrade_problem(self, named: dict[bytes, bytes]) -> str | None:
        """What makes a 101 answer unacceptable (§4.1, the client's items 1-6), or None."""
        if b"websocket" not in _header_token(named.get(b"upgrade", b"")):
            return "the 101 answer has no 'Upgrade: websocket'"
        if b"upgrade" not in _header_token(named.get(b"connection", b"")):
            return "the 101 answer has no 'Connection: Upgrade'"
        accept = named.get(b"sec-websocket-accept")
        if accept is None:
            return "the 101 answer has no Sec-WebSocket-Accept"
        if accept != accept_key(self.key).encode("ascii"):
            shown = accept[:40].decode("latin-1").encode("unicode_escape").decode("ascii")
            return f"Sec-WebSocket-Accept {shown!r} does not match our key"
        if named.get(b"sec-websocket-extensions"):
            return "the server chose an extension we did not offer"
        if named.get(b"sec-websocket-protocol"):
            return "the server chose a subprotocol we did not offer"
        return None

    def _refusal_body(self) -> Rejected | None:
        assert self._refusal is not None
        size = self._refusal[2]
        if size is None or len(self._buffer) < min(size, MAX_BODY_SIZE):
            return None  # the rest of the body, or the end of the stream
        return self._rejected(bytes(self._buffer[:min(size, MAX_BODY_SIZE)]))

    def _rejected(self, body: bytes) -> Rejected:
        assert self._refusal is not None
        status, headers, _ = self._refusal
        self._move(State.CLOSED)
        self._buffer.clear()
        return Rejected(status=status, headers=headers, body=body)

    # -- frames (§5.2) -------------------------------------------------------------------

    def _frames(self, events: list[Event]) -> None:
        buffer = self._buffer
        while self.state is not State.CLOSED and len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            if first & 0x70:
                raise RemoteProtocolError("Reserved bits set, with no extension agreed")
            if second & 0x80:
                raise RemoteProtocolError("A masked frame from the server")
            opcode, size, at = first & 0x0F, second & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, at = _LENGTH_16.unpack_from(buffer, 2)[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, at = _LENGTH_64.unpack_from(buffer, 2)[0], 10
            if opcode in _CONTROL_OPCODES:
                if not first & 0x80 or size > 125:
                    raise RemoteProtocolError("A control frame fragmented or over 125 bytes")
            elif opcode not in _DATA_OPCODES:
                raise RemoteProtocolError(f"Unknown opcode {opcode:#x}")
            # Bounds before the payload is buffered: the message's, then the frame's.
            if opcode in _DATA_OPCODES and self._message_size + size > self.max_message_size:
                raise RemoteProtocolError(f"Exceeded maximum message size: {self.max_message_size} bytes",
                                          close_code=CLOSE_TOO_BIG)
            if size > self.max_frame_size:
                raise RemoteProtocolError(f"Exceeded maximum frame size: {self.max_frame_size} bytes",
                                          close_code=CLOSE_TOO_BIG)
            if len(buffer) < at + size:
                return
            payload = bytes(buffer[at:at + size])
            del buffer[:at + size]
            if opcode in _CONTROL_OPCODES:
                self._control(opcode, payload, events)
            else:
                self._data(opcode, bool(first & 0x80), payload, events)

    def _data(self, opcode: int, final: bool, payload: bytes, events: list[Event]) -> None:
        if opcode == CONTINUATION:
            if self._message_opcode is None:
                raise RemoteProtocolError("A continuation frame with no message to continue")
        elif self._message_opcode is not None:
            raise RemoteProtocolError("A new message inside a fragmented one")
        else:
            self._message_opcode = opcode
        self._message_size += len(payload)  # bounded in _frames, before the payload was buffered
        self._fragments.append(payload)
        if not final:
            if len(self._fragments) >= self.max_fragments:
                raise RemoteProtocolError(f"Exceeded maximum fragment count: {self.max_fragments}",
                                          close_code=CLOSE_TOO_BIG)
            return
        data = payload if len(self._fragments) == 1 else b"".join(self._fragments)
        kind = self._message_opcode
        self._message_opcode, self._fragments, self._message_size = None, [], 0
        if kind == TEXT:
            try:
                events.append(Message(data=data.decode("utf-8")))
            except UnicodeDecodeError as error:
                raise RemoteProtocolError(f"A text message that is not UTF-8 (byte {error.start})",
                                          close_code=CLOSE_INVALID_DATA) from None
        else:
            events.append(Message(data=data))

    def _control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == PING:
            if self.state is State.OPEN:  # §5.5.2; once our close is out we send nothing more (§5.5.1)
                self._outgoing += self._frame(PONG, payload)
            return
        if opcode == PONG:
            events.append(Pong(payload=payload))
            return
        code, reason = self._close_payload(payload)
        if self.state is State.OPEN:  # §5.5.1: answer a close with a close (echoing its code)
            self._outgoing += self._frame(CLOSE, b"" if code == CLOSE_NO_STATUS else _CLOSE_CODE.pack(code))
        self._move(State.CLOSED)
        self._buffer.clear()
        events.append(Closed(code=code, reason=reason))

    @staticmethod
    def _close_payload(payload: bytes) -> tuple[int, str]:
        if not payload:
            return CLOSE_NO_STATUS, ""  # §7.1.5: no status code in the close frame
        if len(payload) == 1:
            raise RemoteProtocolError("A close frame with a 1-byte payload")
        code = _CLOSE_CODE.unpack_from(payload)[0]
        if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
            raise RemoteProtocolError(f"Close code {code} may not be sent")
        try:
            return code, payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("A close reason that is not UTF-8",
                                      close_code=CLOSE_INVALID_DATA) from None
