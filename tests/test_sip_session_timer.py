"""RFC 4028 negotiation as a UAS: (request headers, settings) -> decision tables."""

from __future__ import annotations

import pytest

from eko_rtp.sip.message import Headers
from eko_rtp.sip.session_timer import (
    IntervalTooSmall,
    SessionTimer,
    SessionTimerSettings,
    adopt_refresh_response,
    negotiate_as_uas,
    refresh_request_headers,
)

SETTINGS = SessionTimerSettings(session_expires=1800, min_se=120)


@pytest.mark.parametrize("headers, allows_update, expected", [
    # Caller supports timers, leaves the refresher to us: the caller refreshes.
    ([("Supported", "timer"), ("Session-Expires", "600")], False,
     SessionTimer(interval=600, we_refresh=False, peer_supports=True)),
    # Below our minimum: 422 with our Min-SE.
    ([("Supported", "timer"), ("Session-Expires", "90")], True, IntervalTooSmall(min_se=120)),
    # Above our preference: capped at it.
    ([("k", "timer"), ("x", "7200;refresher=uas")], True,
     SessionTimer(interval=1800, we_refresh=True, peer_supports=True)),
    # The caller's Min-SE raises the floor above our preference's cap.
    ([("Supported", "timer"), ("Session-Expires", "3600"), ("Min-SE", "2400")], False,
     SessionTimer(interval=2400, we_refresh=False, peer_supports=True)),
    # No timer support, no Session-Expires, UPDATE allowed: we refresh at our default.
    ([], True, SessionTimer(interval=1800, we_refresh=True, peer_supports=False)),
    # ... and without UPDATE nobody could refresh: no timer.
    ([], False, None),
    # No timer support but a Session-Expires from a proxy: we refresh.
    ([("Session-Expires", "900")], True, SessionTimer(interval=900, we_refresh=True, peer_supports=False)),
    # Require: timer counts as support.
    ([("Require", "timer")], False, SessionTimer(interval=1800, we_refresh=False, peer_supports=True)),
])
def test_negotiation_table(headers, allows_update, expected):
    assert negotiate_as_uas(Headers(headers), SETTINGS, peer_allows_update=allows_update) == expected


def test_deadlines_and_headers():
    timer = SessionTimer(interval=1800, we_refresh=False, peer_supports=True)
    assert (timer.refresh_due(10.0), timer.expiry_due(10.0)) == (910.0, 1778.0)
    assert SessionTimer(interval=90, we_refresh=True, peer_supports=False).expiry_due(0.0) == 60.0
    assert timer.response_headers() == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    ours = SessionTimer(interval=600, we_refresh=True, peer_supports=False)
    assert ours.response_headers() == [("Session-Expires", "600;refresher=uas")]
    assert refresh_request_headers(ours) == [("Session-Expires", "600;refresher=uac"), ("Supported", "timer")]


def test_refresh_response_may_hand_the_refresher_over():
    ours = SessionTimer(interval=600, we_refresh=True, peer_supports=False)
    assert adopt_refresh_response(ours, Headers([])) == ours
    assert adopt_refresh_response(ours, Headers([("Session-Expires", "300;refresher=uas")])) == SessionTimer(
        interval=300, we_refresh=False, peer_supports=False)


def test_settings_validate():
    with pytest.raises(ValueError, match="min_se"):
        SessionTimerSettings(min_se=60)
    with pytest.raises(ValueError, match=r"session_expires \(100\) is below min_se \(120\)"):
        SessionTimerSettings(session_expires=100, min_se=120)
