"""Framing SIP messages out of a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1).

Theory of operation: over TCP a message ends Content-Length bytes after the empty
line that ends its headers, and Content-Length is mandatory. :class:`StreamFramer`
buffers what it is fed, cuts complete messages out, and hands them whole to
``parse_message_untrusted``. CRLFs between messages are skipped (§7.5); a double
CRLF is an RFC 5626 keepalive ping, which the shell answers with a single CRLF
pong: ``feed`` counts them in ``pings`` for the shell to read with
:meth:`take_pings`. A header block that grows past the size limit, or a missing or
bad Content-Length, makes the stream unframeable: :class:`SipParseError` is raised
and the shell should close the connection (nothing after it can be trusted).
"""

from __future__ import annotations

import re

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.message import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["StreamFramer"]

_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class StreamFramer:
    """Cuts complete SIP messages out of a TCP byte stream."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self.pings = 0

    def take_pings(self) -> int:
        """How many CRLFCRLF keepalive pings arrived since the last call (each wants a CRLF pong)."""
        pings, self.pings = self.pings, 0
        return pings

    @property
    def pending(self) -> int:
        """Bytes held of a message not yet complete (a CRLF that may start a ping is not one)."""
        buffer = self._buffer
        return 0 if buffer in (b"\r", b"\r\n", b"\r\n\r") else len(buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the complete messages now available, in order."""
        self._buffer += data
        messages = []
        while True:
            self._skip_keepalives()
            message = self._next_message()
            if message is None:
                return messages
            messages.append(message)

    def _skip_keepalives(self) -> None:
        buffer = self._buffer
        while True:
            if buffer.startswith(b"\r\n\r\n"):
                self.pings += 1
                del buffer[:4]
            elif buffer in (b"\r", b"\r\n", b"\r\n\r"):
                return  # maybe the start of a ping: wait for the rest
            elif buffer.startswith(b"\r\n"):
                del buffer[:2]  # §7.5: a CRLF before a start line is ignored
            else:
                return

    def _next_message(self) -> bytes | None:
        buffer = self._buffer
        if buffer in (b"\r", b"\r\n", b"\r\n\r"):
            return None
        if buffer[:1] in (b"\r", b"\n"):
            raise SipParseError(400, "bare CR or LF between messages on the stream")
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self.max_message_size:
                raise SipParseError(513, f"headers longer than the {self.max_message_size}-byte limit")
            return None
        values = {match.group(1).strip() for match in _CONTENT_LENGTH.finditer(buffer, 0, end + 2)}
        if not values:
            raise SipParseError(400, "Content-Length is required over a stream transport")
        if len(values) > 1:
            # Which one ends the message? Guessing would read the rest of the stream
            # out of step (request smuggling); nothing after this can be trusted.
            raise SipParseError(400, "several different Content-Length values on the stream")
        [text] = values
        if not text.isdigit() or len(text) > 10:
            raise SipParseError(400, f"bad Content-Length {text.decode('latin-1')!r} on the stream")
        total = end + 4 + int(text)
        if total > self.max_message_size:
            raise SipParseError(513, f"message of {total} bytes exceeds the {self.max_message_size}-byte limit")
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        return message
