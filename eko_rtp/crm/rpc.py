"""msgpack-RPC framing, sans-I/O.

Theory of operation: a msgpack-RPC stream is a plain concatenation of msgpack
arrays, one per message, with no length prefix:

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]
    notification  [2, method, params]

``msgid`` is an unsigned 32-bit integer chosen by the requester and echoed in the
response, so many requests can be in flight on one connection and be answered in
any order. ``params`` is always an array. In a response exactly one of ``error``
and ``result`` is meaningful: ``error`` is nil on success.

:class:`RpcConnection` holds no socket. The shell feeds it received bytes with
:meth:`RpcConnection.receive_data` and pulls complete messages with
:meth:`RpcConnection.next_event` until it returns :data:`NEED_DATA`; the
``send_*`` methods return the bytes to write. Both directions share one object, so
a client and a server use the same class.

The decoder is a ``msgpack.Unpacker`` with every size limit set: a peer can make us
buffer at most ``max_message_bytes`` of one incomplete message, and no string,
binary, array, map or extension inside a message may exceed its own cap.

Nesting is bounded too (``max_depth``), because the Unpacker has no depth option:
its C decoder stops at its own stack of 1024 levels (``StackError``), its pure-Python
fallback recurses until ``RecursionError``, and 1,001 bytes (``0x91`` x 1000, then
nil) decode to a list 1001 levels deep, which any ``repr``, ``==`` or validator that
recurses turns into a ``RecursionError`` that ends the task, and the process with
it. So every decoded message is measured level by level, with no recursion
(:func:`nests_deeper_than`), before anything looks inside it; the deepest message of
this protocol (a look-up answer: response, record, tickets, ticket) is 4 levels.
Nothing here or downstream of here recurses over a decoded value: errors describe
untrusted values with :func:`describe_untrusted`, which never looks into a container.

Going over a limit, sending bytes that are not msgpack, or sending a value that is
not one of the three message shapes raises :class:`RpcProtocolError`. After that
the stream is out of sync for good: the connection is marked broken and every later
call raises the same error, so the shell's only move is to drop the connection.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
import msgpack

from eko_rtp.crm.errors import RpcProtocolError

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

MSGID_LIMIT = 2**32

# Well below the C decoder's own stack (1024) and Python's recursion limit (1000).
MAX_DEPTH_LIMIT = 256


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`RpcConnection.next_event` when no complete message is buffered.
NEED_DATA = _NeedData.NEED_DATA


@attrs.frozen(kw_only=True)
class RpcLimits:
    """Caps on what one peer may make us decode (all in bytes or element counts)."""

    max_message_bytes: int = 1024 * 1024
    max_str_len: int = 64 * 1024
    max_bin_len: int = 64 * 1024
    max_array_len: int = 10_000
    max_map_len: int = 1_000
    # Extension types have no meaning in this protocol: any of them is refused.
    max_ext_len: int = 0
    # Arrays and maps inside one another, the message itself counting 1. At most
    # MAX_DEPTH_LIMIT: the C decoder refuses deeper on its own (see the module docstring).
    max_depth: int = 16

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RpcLimits.{field.name} must be a non-negative int, got {value!r}")
        if self.max_message_bytes < 16:
            raise ValueError(f"RpcLimits.max_message_bytes must be at least 16, got {self.max_message_bytes}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"RpcLimits.max_depth must be from 1 to {MAX_DEPTH_LIMIT}, got {self.max_depth}")


def _is_msgid(value: object) -> bool:
    return type(value) is int and 0 <= value < MSGID_LIMIT


@attrs.frozen(kw_only=True)
class RpcRequest:
    msgid: int
    method: str
    params: list[Any]

    def __attrs_post_init__(self) -> None:
        if not _is_msgid(self.msgid):
            raise ValueError(f"request msgid must be an int in [0, 2**32), got {self.msgid!r}")
        if not isinstance(self.method, str):
            raise ValueError(f"request method must be a str, got {type(self.method).__name__}")
        if not isinstance(self.params, list):
            raise ValueError(f"request params must be an array, got {type(self.params).__name__}")


@attrs.frozen(kw_only=True)
class RpcResponse:
    msgid: int
    error: Any
    result: Any

    def __attrs_post_init__(self) -> None:
        if not _is_msgid(self.msgid):
            raise ValueError(f"response msgid must be an int in [0, 2**32), got {self.msgid!r}")


@attrs.frozen(kw_only=True)
class RpcNotification:
    method: str
    params: list[Any]

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ValueError(f"notification method must be a str, got {type(self.method).__name__}")
        if not isinstance(self.params, list):
            raise ValueError(f"notification params must be an array, got {type(self.params).__name__}")


RpcEvent = RpcRequest | RpcResponse | RpcNotification


def nests_deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` has arrays or maps more than ``limit`` levels deep (itself is level 1).

    Level by level with an explicit list, never recursing: safe on any decoded value.
    Map keys need no look (the Unpacker's ``strict_map_key`` lets only str and bytes in).
    """
    level = [value] if type(value) is list or type(value) is dict else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) is list or type(child) is dict
        ]
    return False


def describe_untrusted(value: object) -> str:
    """A short text for an error message about a decoded value: at most 60 characters.

    Never looks inside an array or map (a repr would recurse, and copy up to a
    megabyte only to cut it); a long string or binary is cut before its repr.
    """
    if type(value) is list:
        return f"an array of {len(value)}" if value else "[]"
    if type(value) is dict:
        return f"a map of {len(value)}" if value else "{}"
    if isinstance(value, (str, bytes, bytearray)):
        value = value[:61]
    elif not isinstance(value, (int, float)) and value is not None:
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def event_from_untrusted(message: object) -> RpcEvent:
    """Turn one decoded msgpack value into an event, or raise :class:`RpcProtocolError`."""
    if not isinstance(message, list) or not message:
        raise RpcProtocolError(f"message is not a non-empty array: {describe_untrusted(message)}")
    kind = message[0]
    try:
        if kind == REQUEST and type(kind) is int:
            if len(message) != 4:
                raise ValueError(f"request must have 4 elements, got {len(message)}")
            return RpcRequest(msgid=message[1], method=message[2], params=message[3])
        if kind == RESPONSE and type(kind) is int:
            if len(message) != 4:
                raise ValueError(f"response must have 4 elements, got {len(message)}")
            return RpcResponse(msgid=message[1], error=message[2], result=message[3])
        if kind == NOTIFICATION and type(kind) is int:
            if len(message) != 3:
                raise ValueError(f"notification must have 3 elements, got {len(message)}")
            return RpcNotification(method=message[1], params=message[2])
    except ValueError as error:
        raise RpcProtocolError(str(error)) from None
    raise RpcProtocolError(f"unknown message type {describe_untrusted(kind)} (expected 0, 1 or 2)")


class RpcConnection:
    """One msgpack-RPC byte stream, both directions, no I/O."""

    def __init__(self, *, limits: RpcLimits = RpcLimits()) -> None:
        self.limits = limits
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=limits.max_message_bytes,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=limits.max_ext_len,
        )
        self._packer = msgpack.Packer(use_bin_type=True)
        self._next_msgid = 0
        self._broken: RpcProtocolError | None = None
        self._received = 0
        # Received bytes not yet handed to the unpacker. The unpacker is fed from here
        # only as much as one message may still take, so a long read of many small
        # messages is taken whole while one message never passes the limit.
        self._pending = bytearray()
        self._fed = 0
        # Stream offset just past the last complete message. The unpacker's own
        # tell() also counts the parsed head of a message still incomplete.
        self._consumed = 0

    @property
    def broken(self) -> RpcProtocolError | None:
        """The error that put the stream out of sync, or None while it is usable."""
        return self._broken

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet decoded: non-zero at EOF means the peer stopped mid-message."""
        return self._received - self._consumed

    def _fail(self, message: str) -> RpcProtocolError:
        self._broken = RpcProtocolError(message)
        return self._broken

    def _too_deep(self) -> str:
        return f"message nests deeper than {self.limits.max_depth} levels"

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes received from the peer; :meth:`next_event` decodes them."""
        if self._broken is not None:
            raise RpcProtocolError(str(self._broken))
        self._pending += data
        self._received += len(data)

    def _too_long(self) -> RpcProtocolError:
        return self._fail(f"incomplete message exceeds {self.limits.max_message_bytes} bytes")

    def next_event(self) -> RpcEvent | _NeedData:
        """The next complete message, or :data:`NEED_DATA`."""
        if self._broken is not None:
            raise RpcProtocolError(str(self._broken))
        while True:
            try:
                message = self._unpacker.unpack()
            except msgpack.OutOfData:
                # Every complete message the unpacker holds is taken: what was fed and
                # not consumed is the head of one message. The unpacker's own
                # max_buffer_size cannot bound it (its parsed part escapes that count),
                # so the limit is held here, against the stream offsets.
                room = self.limits.max_message_bytes - (self._fed - self._consumed)
                if room <= 0:  # a whole limit's worth fed and the message still incomplete
                    raise self._too_long() from None
                if not self._pending:
                    return NEED_DATA
                chunk = bytes(self._pending[:room])
                del self._pending[:room]
                try:
                    self._unpacker.feed(chunk)
                except msgpack.BufferFull:  # cannot happen: room is below its count
                    raise self._too_long() from None
                self._fed += len(chunk)
                continue
            except (msgpack.StackError, RecursionError):
                # The C decoder's stack, or the pure-Python fallback's recursion: deeper
                # than max_depth either way (it is at most MAX_DEPTH_LIMIT).
                raise self._fail(self._too_deep()) from None
            except ValueError as error:
                # FormatError, UnicodeDecodeError, over-limit lengths and non-string map
                # keys are all ValueError subclasses in msgpack.
                raise self._fail(f"undecodable msgpack: {error}") from None
            break
        self._consumed = self._unpacker.tell()
        if nests_deeper_than(message, self.limits.max_depth):
            raise self._fail(self._too_deep())
        try:
            return event_from_untrusted(message)
        except RpcProtocolError as error:
            raise self._fail(str(error)) from None

    def send_request(self, method: str, params: list[Any] | tuple[Any, ...]) -> tuple[int, bytes]:
        """Allocate a msgid and encode a request; returns ``(msgid, bytes)``."""
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) % MSGID_LIMIT
        return msgid, self._packer.pack([REQUEST, msgid, method, list(params)])

    def send_response(self, msgid: int, *, error: Any = None, result: Any = None) -> bytes:
        """Encode the answer to request ``msgid`` (``error`` None means success)."""
        if not _is_msgid(msgid):
            raise ValueError(f"response msgid must be an int in [0, 2**32), got {msgid!r}")
        return self._packer.pack([RESPONSE, msgid, error, result])

    def send_notification(self, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
        """Encode a notification (no answer expected)."""
        return self._packer.pack([NOTIFICATION, method, list(params)])
