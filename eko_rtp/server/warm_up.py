"""Warm-up: canned calls through the SIP and offer/answer cores before real ones.

Theory of operation: CPython 3.11 runs a function's first few executions in its
generic interpreter and specialises ("quickens") it only afterwards, and the first
call after a start also fills what this path keeps from one message to the next
(compiled regular expressions, header names and addresses already read). A server
that starts cold answers its first callers slower than the next ones; after a
rolling restart, that is every worker's first calls.

The cores are sans-I/O, so :func:`warm_up` can place calls through a throwaway
:class:`~eko_rtp.sip.useragent.UserAgent` with the server's settings and a
:class:`~eko_rtp.media.negotiation.MediaSession` made by the server's own factory,
in memory: an INVITE with an offer from a documentation address (RFC 5737
TEST-NET-1), its answer, the ACK, then the caller's BYE. No socket, no timer, no
admission bucket, no metric and no log line of a call is touched: the user agent
is dropped afterwards.

Best effort: what the canned call gets is not checked (a configuration may refuse
its offer, which warms the refusal instead). An exception would be a bug in a
core: it is logged as a warning, and the server starts anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from eko_rtp.media import sdp
from eko_rtp.media.negotiation import MediaSession
from eko_rtp.sip.events import CallEnded, IncomingCall, Transmit
from eko_rtp.sip.message import Headers, Request, Response, parse_message_untrusted
from eko_rtp.sip.uri import format_host_port
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

__all__ = ["WARM_UP_CALLS", "warm_up"]

log = logging.getLogger(__name__)

# Enough for 3.11's interpreter to have quickened every function on the path (it
# does after a handful of runs), few enough to cost milliseconds at start.
WARM_UP_CALLS = 16
_CALLER = ("192.0.2.1", 5060)  # RFC 5737: never a real caller
_OFFER = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
          b"m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
          b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def warm_up(settings: UserAgentSettings, media_session: Callable[[IncomingCall], MediaSession],
            calls: int = WARM_UP_CALLS) -> int:
    """Place ``calls`` canned calls; return how many went from INVITE to the BYE's end (see the
    module docstring)."""
    started = time.perf_counter()
    completed = 0
    try:
        ua = UserAgent(settings)
        for number in range(calls):
            completed += _one_call(ua, settings, media_session, number)
    except Exception as error:  # a core's bug: say so, and start anyway
        log.warning("warm-up call failed (a bug; the server starts anyway): %r", error)
        return completed
    log.debug("warm-up: %d canned calls, %d completed, in %.1f ms", calls, completed,
              (time.perf_counter() - started) * 1000)
    return completed


def _one_call(ua: UserAgent, settings: UserAgentSettings, media_session: Callable[[IncomingCall], MediaSession],
              number: int) -> bool:
    now = float(number)
    call_id = f"warm-up-{number}@192.0.2.1"
    ours = format_host_port(settings.host, settings.port)

    def request(method: str, cseq: int, to_tag: str | None, body: bytes = b"") -> bytes:
        headers = [
            ("Via", f"SIP/2.0/UDP {_CALLER[0]}:{_CALLER[1]};branch=z9hG4bK-warm-{number}-{method.lower()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:0612345678@{_CALLER[0]}>;tag=warm-{number}"),
            ("To", f"<sip:eko@{ours}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:0612345678@{_CALLER[0]}:{_CALLER[1]}>"),
        ]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return bytes(Request(method=method, uri=f"sip:eko@{ours}", headers=Headers(headers), body=body))

    ua.receive(request("INVITE", 1, None, _OFFER), source=_CALLER, transport="udp", now=now)
    incoming = [event for event in ua.events() if isinstance(event, IncomingCall)]
    if not incoming:
        return False
    media = media_session(incoming[0])
    try:
        media.invite(incoming[0].offer)
    except sdp.SdpError as error:
        ua.reject(call_id, error.status, now)
        ua.events()
        return False
    ua.answer(call_id, media.local_body, now)
    final = [event for event in ua.events() if isinstance(event, Transmit) and event.data.startswith(b"SIP/2.0 200")]
    if not final:
        return False
    response = parse_message_untrusted(final[0].data, transport="udp")
    to_tag = response.to.tag if isinstance(response, Response) and response.to is not None else None
    ua.receive(request("ACK", 1, to_tag), source=_CALLER, transport="udp", now=now)
    ua.receive(request("BYE", 2, to_tag), source=_CALLER, transport="udp", now=now)
    return any(isinstance(event, CallEnded) for event in ua.events())
