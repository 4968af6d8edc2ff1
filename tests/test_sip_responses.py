"""Building the UAS's responses (sip/responses.py): what is copied, what is checked."""

from __future__ import annotations

import pytest

from eko_rtp.sip.headers import parse_via
from eko_rtp.sip.message import parse_message_untrusted
from eko_rtp.sip.responses import build_response, stamp_via
from eko_rtp.sip.transaction import Hop

INVITE = (b"INVITE sip:eko@192.0.2.10 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1;rport\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-0\r\n"
          b"From: <sip:+33612345678@192.0.2.20>;tag=a\r\nTo: <sip:eko@192.0.2.10>\r\n"
          b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nTimestamp: 54\r\nContent-Length: 0\r\n\r\n")
HOP = Hop(address=("198.51.100.7", 5071), transport="udp")


def request():
    return parse_message_untrusted(INVITE, transport="udp")


def test_a_200_copies_the_request_and_adds_ours_in_order():
    response = build_response(request(), 200, hop=HOP, server="Eko RTP", to_tag="t1",
                              extra=[("Contact", "<sip:eko@192.0.2.10>"), ("session-expires", "90;refresher=uas")],
                              body=b"v=0\r\n")
    assert bytes(response) == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1;received=198.51.100.7;rport=5071\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-0\r\n"
        b"From: <sip:+33612345678@192.0.2.20>;tag=a\r\nTo: <sip:eko@192.0.2.10>;tag=t1\r\n"
        b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:eko@192.0.2.10>\r\n"
        b"Session-Expires: 90;refresher=uas\r\nServer: Eko RTP\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert response.headers.get("session-expires") == "90;refresher=uas"  # the index knows every line


def test_a_100_copies_timestamp_and_carries_no_tag():
    response = build_response(request(), 100, hop=HOP, server="Eko RTP", to_tag="t1")
    assert response.headers.get("To") == "<sip:eko@192.0.2.10>"
    assert response.headers.get("Timestamp") == "54"
    assert "Server" not in response.headers


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
def test_an_extra_value_that_would_break_the_message_is_refused(value):
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        build_response(request(), 480, hop=HOP, server="Eko RTP", to_tag="t1", extra=[("Warning", value)])


def test_an_extra_name_that_is_not_a_token_is_refused():
    with pytest.raises(ValueError, match="not a token"):
        build_response(request(), 480, hop=HOP, server="Eko RTP", to_tag="t1", extra=[("Bad Name", "x")])


def test_stamping_replaces_received_and_rport_whatever_their_case():
    via = parse_via("SIP/2.0/UDP 192.0.2.20:5070;RECEIVED=1.2.3.4;branch=z9hG4bK-1;Rport;x")
    assert str(stamp_via(via, HOP)) == (
        "SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1;x;received=198.51.100.7;rport=5071")
    assert stamp_via(via, HOP) == via.with_parameter("received", "198.51.100.7").with_parameter("rport", "5071")


def test_stamping_without_rport_adds_received_only_when_the_host_differs():
    via = parse_via("SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1")
    assert str(stamp_via(via, HOP)) == "SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1;received=198.51.100.7"
    same = Hop(address=("192.0.2.20", 5070), transport="udp")
    assert stamp_via(via, same) is via
