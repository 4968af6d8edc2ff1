"""Framing SIP messages out of a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1).

Theory of operation: over TCP a message ends Content-Length bytes after the empty
line that ends its headers, and Content-Length is mandatory. :class:`StreamFramer`
buffers what it is given (:meth:`~StreamFramer.receive_data`) and hands out complete
messages one at a time (:meth:`~StreamFramer.next_message`), whole, for
``parse_message_untrusted``. CRLFs between messages are skipped (§7.5); a double CRLF
is an RFC 5626 keepalive ping, which the shell answers with a single CRLF pong:
they are counted in ``pings`` for the shell to read with :meth:`take_pings`.

Linear work: the search for the empty line resumes where the previous one stopped
(three bytes back, for a CRLFCRLF split across reads), and a message's length is
worked out once, when its header block is complete. Headers fed a byte at a time
cost time in proportion to their length, not to its square.

Faults: a missing or bad Content-Length, or a bare CR or LF between messages, makes
the stream unframeable: nothing after it can be trusted. ``next_message`` raises
:class:`SipParseError` (the messages before the fault have been handed out), and
raises it again on every later call; the shell closes the connection. A message over
the size limit raises :class:`MessageTooLarge` (513, RFC 3261 §21.5.11); when its
header block was complete and within the limit, the error carries that block, from
which the user agent can address a 513 (§8.2.6.2) before the shell closes.

Time: the framer keeps, from the ``now`` given with each read, the two deadlines a
shell enforces. *Idle*: no complete message and no keepalive for ``idle_timeout``
seconds. *Headers*: a message's header block must be complete ``header_timeout``
seconds after its first byte arrived (a slowloris peer trickles it). ``deadline`` is
the earlier of the two; :meth:`expired` says which one has passed. A body still
arriving is bounded by the idle deadline and the size limit.
"""

from __future__ import annotations

import enum
import math
import re

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.message import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["MessageTooLarge", "StreamFramer", "StreamTimeout"]

_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_EMPTY_LINE = b"\r\n\r\n"
# A buffer holding only these may be the start of a CRLFCRLF ping: wait for the rest.
_PING_PREFIXES = (b"\r", b"\r\n", b"\r\n\r")


class StreamTimeout(enum.Enum):
    """Which of the framer's deadlines passed."""

    IDLE = "idle"
    HEADERS = "headers"


class MessageTooLarge(SipParseError):
    """A message over the size limit (513); ``head`` is its header block when a 513 can be addressed from it."""

    def __init__(self, reason: str, *, head: bytes | None = None):
        super().__init__(513, reason)
        self.head = head


class StreamFramer:
    """Cuts complete SIP messages out of a TCP byte stream, and keeps its deadlines."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, idle_timeout: float = math.inf,
                 header_timeout: float = math.inf, now: float = 0.0):
        if idle_timeout <= 0 or header_timeout <= 0:
            raise ValueError(f"timeouts must be positive, not {idle_timeout} and {header_timeout}")
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.pings = 0
        self._buffer = bytearray()
        self._searched = 0  # bytes of the current message searched for the empty line, not found
        self._length: int | None = None  # the current message's whole length, once its headers are complete
        self._now = now
        self._active_at = now  # the last complete message or keepalive (at first: the connection's start)
        self._head_started_at: float | None = None  # first byte of a message whose headers are incomplete
        self._error: SipParseError | None = None

    def take_pings(self) -> int:
        """How many CRLFCRLF keepalive pings arrived since the last call (each wants a CRLF pong)."""
        pings, self.pings = self.pings, 0
        return pings

    @property
    def pending(self) -> int:
        """Bytes held of a message not yet complete (a CRLF that may start a ping is not one)."""
        buffer = self._buffer
        return 0 if buffer in _PING_PREFIXES else len(buffer)

    @property
    def deadline(self) -> float:
        """When the connection is to be closed unless a message or keepalive completes first."""
        idle = self._active_at + self.idle_timeout
        if self._head_started_at is None:
            return idle
        return min(idle, self._head_started_at + self.header_timeout)

    def expired(self, now: float) -> StreamTimeout | None:
        """The deadline that has passed at ``now``, if any (the header deadline first)."""
        if self._head_started_at is not None and now >= self._head_started_at + self.header_timeout:
            return StreamTimeout.HEADERS
        if now >= self._active_at + self.idle_timeout:
            return StreamTimeout.IDLE
        return None

    def receive_data(self, data: bytes, now: float = 0.0) -> None:
        """Append ``data``, read at ``now``; then call :meth:`next_message` until it returns None."""
        self._buffer += data
        self._now = now

    def next_message(self) -> bytes | None:
        """The next complete message, or None until more data comes.

        Raises :class:`SipParseError` once the stream cannot be framed, on this call
        and every later one.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._length is None and self._head_started_at is None:
                self._skip_keepalives()
            return self._cut()
        except SipParseError as error:
            self._error = error
            raise

    def feed(self, data: bytes, now: float = 0.0) -> list[bytes]:
        """Append ``data``; return the complete messages now available, in order.

        At a fault it raises, and the messages cut before the fault in this call are
        lost: a shell that delivers each message should use ``receive_data`` and
        ``next_message``.
        """
        self.receive_data(data, now)
        messages = []
        while (message := self.next_message()) is not None:
            messages.append(message)
        return messages

    def _skip_keepalives(self) -> None:
        buffer = self._buffer
        while buffer[:1] == b"\r":
            if buffer.startswith(_EMPTY_LINE):
                self.pings += 1
                del buffer[:4]
            elif buffer in _PING_PREFIXES:
                break  # maybe the start of a ping: wait for the rest
            elif buffer.startswith(b"\r\n"):
                del buffer[:2]  # §7.5: a CRLF before a start line is ignored
            else:
                return  # a bare CR: _cut refuses it
            self._active_at = self._now  # RFC 5626 §4.4.1: keepalives keep the flow alive
        if buffer in _PING_PREFIXES:
            self._active_at = self._now

    def _cut(self) -> bytes | None:
        buffer = self._buffer
        if self._length is None:
            if not buffer or buffer in _PING_PREFIXES:
                return None
            if self._head_started_at is None:
                if buffer[:1] in (b"\r", b"\n"):
                    raise SipParseError(400, "bare CR or LF between messages on the stream")
                self._head_started_at = self._now
            end = buffer.find(_EMPTY_LINE, max(0, self._searched - 3))
            if end < 0:
                self._searched = len(buffer)
                if len(buffer) > self.max_message_size:
                    raise MessageTooLarge(f"header block exceeds the {self.max_message_size}-byte limit")
                return None
            if end + 4 > self.max_message_size:
                raise MessageTooLarge(f"header block exceeds the {self.max_message_size}-byte limit")
            total = end + 4 + self._content_length(end)
            if total > self.max_message_size:
                raise MessageTooLarge(f"message of {total} bytes exceeds the {self.max_message_size}-byte limit",
                                      head=bytes(buffer[:end + 4]))
            self._length, self._head_started_at = total, None
        if len(buffer) < self._length:
            return None
        message = bytes(buffer[:self._length])
        del buffer[:self._length]
        self._length, self._searched, self._active_at = None, 0, self._now
        return message

    def _content_length(self, end: int) -> int:
        values = {match.group(1).strip() for match in _CONTENT_LENGTH.finditer(self._buffer, 0, end + 2)}
        if not values:
            raise SipParseError(400, "Content-Length is required over a stream transport")
        if len(values) > 1:
            # Which one ends the message? Guessing would read the rest of the stream
            # out of step (request smuggling); nothing after this can be trusted.
            raise SipParseError(400, "several different Content-Length values on the stream")
        [text] = values
        if not text.isdigit() or len(text) > 10:
            raise SipParseError(400, f"bad Content-Length {text.decode('latin-1')!r} on the stream")
        return int(text)
