"""Typed failures of live speech recognition (Deepgram's streaming API).

Every failure a stream can report is an :class:`AsrError`; a call catches that one
type and carries on without transcripts (or opens a new stream when ``retryable``
says it may help). Subclasses say who is at fault: our configuration (no key, a key
refused, settings refused), the provider or the network (unreachable, dropped), or
the provider's words (a reply we cannot read). Messages say what and where, never
the API key.
"""

from __future__ import annotations


class AsrError(Exception):
    """Live speech recognition failed.

    ``status``: the HTTP status Deepgram answered the websocket handshake with, if it
    refused it. ``close_code``: the websocket close code, if the stream was closed.
    ``request_id``: Deepgram's ``dg-request-id``, when known (what its support asks for).
    """

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, close_code: int | None = None,
                 request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.close_code = close_code
        self.request_id = request_id


class AsrNoKey(AsrError):
    """A stream was asked for without a usable API key (none, or not a header-safe token)."""


class AsrUnauthorized(AsrError):
    """Deepgram refused the API key at the handshake (HTTP 401 or 403)."""


class AsrRequestRejected(AsrError):
    """Deepgram refused our settings at the handshake (HTTP 4xx other than 401, 403 and 429)."""


class AsrUnavailable(AsrError):
    """Deepgram could not be reached or asked us to come back later.

    Refused connection, name resolution failure, no handshake answer in time, HTTP 429
    or 5xx: a new stream a little later may work.
    """

    retryable = True


class AsrDropped(AsrError):
    """The stream ended before the call did: connection lost, send stalled, or closed by Deepgram."""

    retryable = True


class AsrProtocolError(AsrError):
    """Deepgram said something we cannot read: not JSON, wrong field types, too big, too deep."""
