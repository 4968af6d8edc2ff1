"""Session timers (RFC 4028) negotiated by a UAS.

Theory of operation: a session timer makes a dead call end even when its BYE was
lost: one side (the refresher) sends a re-INVITE or UPDATE every half interval, and
either side ends the session when no refresh came in time. As the UAS we read the
caller's Session-Expires, Min-SE and Supported: an interval below our minimum gets
422 with our Min-SE (§8.1); otherwise we take the caller's interval capped at our
preference but never below either minimum (§9), and the refresher it named or, when
it left the choice to us and supports ``timer``, the caller ("uac", which costs us
nothing); a caller without timer support leaves us to refresh, which we do with
UPDATE only, so we use no timer unless it allows UPDATE. The expiry deadline is the
interval minus min(32, interval/3) after the last refresh (§10), so the BYE goes out
before the peer's own timer fires.

``refresher`` on the wire is relative to the transaction that negotiated it: in a
request the caller sent, "uas" is us; in an UPDATE we sent, "uac" is us. The
negotiated state keeps the plain answer, ``we_refresh``.
"""

from __future__ import annotations

import attrs

from eko_rtp.sip.headers import SessionExpires, parse_min_se, parse_session_expires, parse_token_list
from eko_rtp.sip.message import Headers

__all__ = [
    "SessionTimerSettings",
    "SessionTimer",
    "IntervalTooSmall",
    "RFC_MIN_SE",
    "negotiate_as_uas",
    "adopt_refresh_response",
    "refresh_request_headers",
]

# RFC 4028 §5: Min-SE is never below 90 seconds.
RFC_MIN_SE = 90


@attrs.frozen(kw_only=True)
class SessionTimerSettings:
    """Our preferred interval and the smallest one we accept, in seconds."""

    session_expires: int = 1800
    min_se: int = attrs.field(default=90, validator=attrs.validators.ge(RFC_MIN_SE))

    def __attrs_post_init__(self) -> None:
        if self.session_expires < self.min_se:
            raise ValueError(f"session_expires ({self.session_expires}) is below min_se ({self.min_se})")


@attrs.frozen(kw_only=True)
class SessionTimer:
    """A negotiated session timer: interval, whether we refresh, whether the peer knows timers."""

    interval: int = attrs.field(validator=attrs.validators.ge(1))
    we_refresh: bool
    peer_supports: bool

    def refresh_due(self, refreshed_at: float) -> float:
        """When the refresher sends its refresh: half the interval after the last one (§10)."""
        return refreshed_at + self.interval / 2

    def expiry_due(self, refreshed_at: float) -> float:
        """When to give up and send BYE: interval - min(32, interval/3) after the last refresh (§10)."""
        return refreshed_at + self.interval - min(32, self.interval / 3)

    def response_headers(self) -> list[tuple[str, str]]:
        """Session-Expires (refresher relative to the caller's request) and Require: timer (§9)."""
        headers = [("Session-Expires", str(SessionExpires(interval=self.interval,
                                                            refresher="uas" if self.we_refresh else "uac")))]
        if self.peer_supports:
            headers.append(("Require", "timer"))
        return headers


@attrs.frozen(kw_only=True)
class IntervalTooSmall:
    """The request's Session-Expires is below our minimum: answer 422 with Min-SE (§8.1)."""

    min_se: int


def _lists(headers: Headers, name: str) -> tuple[str, ...]:
    return tuple(token.lower() for token in parse_token_list(headers.get_all(name), name))


def negotiate_as_uas(
    headers: Headers, settings: SessionTimerSettings, *, peer_allows_update: bool
) -> SessionTimer | IntervalTooSmall | None:
    """Decide the session timer for a (re-)INVITE or UPDATE the caller sent; None: no timer."""
    peer_supports = "timer" in _lists(headers, "Supported") or "timer" in _lists(headers, "Require")
    requested = parse_session_expires(headers.get("Session-Expires") or "") if "Session-Expires" in headers else None
    if requested is not None and requested.interval < settings.min_se:
        return IntervalTooSmall(min_se=settings.min_se)
    floor = max(settings.min_se, parse_min_se(headers.get("Min-SE") or "") if "Min-SE" in headers else RFC_MIN_SE)
    if requested is not None:
        interval = max(min(requested.interval, settings.session_expires), floor)
    else:
        interval = max(settings.session_expires, floor)
    if requested is not None and requested.refresher is not None:
        we_refresh = requested.refresher == "uas"
    else:
        we_refresh = not peer_supports
    if requested is None and we_refresh and not peer_allows_update:
        return None
    return SessionTimer(interval=interval, we_refresh=we_refresh, peer_supports=peer_supports)


def refresh_request_headers(timer: SessionTimer) -> list[tuple[str, str]]:
    """Headers of the UPDATE we send to refresh: we stay the refresher ("uac" of this request)."""
    return [("Session-Expires", f"{timer.interval};refresher=uac"), ("Supported", "timer")]


def adopt_refresh_response(timer: SessionTimer, headers: Headers) -> SessionTimer:
    """The timer after a 2xx to our refresh: the peer may have changed interval or refresher (§7.4)."""
    if "Session-Expires" not in headers:
        return timer
    answered = parse_session_expires(headers.get("Session-Expires") or "")
    return attrs.evolve(timer, interval=answered.interval, we_refresh=answered.refresher != "uas")
