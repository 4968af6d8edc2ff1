"""The one error type SIP parsing of network input may raise.

A :class:`SipParseError` says who is at fault (the peer), what to answer (``status``)
and what was wrong (``reason``, which doubles as the reason phrase of the error
response, so it is one short printable line). ``request`` holds whatever was parsed
of a request before the fault, so the user agent can still address a response when
Via, From, To, Call-ID and CSeq are usable (RFC 3261 §8.2.6).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SipParseError", "describe"]

_MAX_REASON = 200


def describe(text: str, limit: int = 60) -> str:
    """Quote untrusted text for an error reason: repr-escaped and truncated."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


class SipParseError(Exception):
    """Malformed or unacceptable SIP input from the network; carries the status to answer."""

    def __init__(self, status: int, reason: str, *, request: Any = None):
        # The reason becomes a reason phrase: keep it one printable line (RFC 3261 §25.1
        # Reason-Phrase excludes CR and LF). Cut first: a reason may quote a whole
        # hostile value, and this runs once per refused datagram.
        reason = "".join(ch if ch.isprintable() else "?" for ch in reason[:_MAX_REASON])
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.request = request

    def with_request(self, request: Any) -> "SipParseError":
        """The same error, now carrying the partly parsed request."""
        return SipParseError(self.status, self.reason, request=request)
