"""Dialog state from an INVITE and in-dialog request building (RFC 3261 §12)."""

from __future__ import annotations

import pytest

from eko_rtp.sip.dialog import Dialog
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import parse_via
from eko_rtp.sip.message import parse_message_untrusted

VIA = parse_via("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-ours;rport")


def invite(record_route: str = "", contact: str = "Contact: <sip:alice@192.0.2.20:5070;transport=udp>\r\n"):
    data = ("INVITE sip:eko@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-1\r\n"
            'From: "Alice" <sip:alice@example.org>;tag=a1\r\nTo: Eko <sip:eko@example.net;user=phone>\r\n'
            f"Call-ID: d-1\r\nCSeq: 41 INVITE\r\n{contact}{record_route}\r\n").encode()
    return parse_message_untrusted(data, transport="udp")


def test_dialog_from_invite_and_loose_routed_bye():
    rr = "Record-Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\nRecord-Route: <sip:p3.example.net;lr>\r\n"
    dialog = Dialog.from_invite(invite(rr), local_tag="t9", local_cseq=0)
    assert (dialog.call_id, dialog.local_tag, dialog.remote_tag, dialog.remote_cseq) == ("d-1", "t9", "a1", 41)
    assert str(dialog.remote_target) == "sip:alice@192.0.2.20:5070;transport=udp"
    assert dialog.record_route_values() == ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>",
                                            "<sip:p3.example.net;lr>"]
    assert dialog.next_hop().host == "p1.example.net"
    bye = dialog.build_request("BYE", via=VIA)
    assert bytes(bye) == (
        b"BYE sip:alice@192.0.2.20:5070;transport=udp SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-ours;rport\r\nMax-Forwards: 70\r\n"
        b"Route: <sip:p1.example.net;lr>\r\nRoute: <sip:p2.example.net;lr>\r\nRoute: <sip:p3.example.net;lr>\r\n"
        b'From: "Eko" <sip:eko@example.net;user=phone>;tag=t9\r\nTo: "Alice" <sip:alice@example.org>;tag=a1\r\n'
        b"Call-ID: d-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
    assert dialog.build_request("UPDATE", via=VIA).headers.get("CSeq") == "2 UPDATE"


def test_strict_router_gets_the_request_uri():
    dialog = Dialog.from_invite(invite("Record-Route: <sip:strict.example.net;maddr=10.0.0.1>, <sip:p2;lr>\r\n"),
                                local_tag="t", local_cseq=5)
    bye = dialog.build_request("BYE", via=VIA)
    assert bye.uri == "sip:strict.example.net"
    assert bye.headers.get_all("Route") == ["<sip:p2;lr>", "<sip:alice@192.0.2.20:5070;transport=udp>"]


def test_target_refresh_and_matching():
    dialog = Dialog.from_invite(invite(), local_tag="t", local_cseq=0)
    reinvite = invite(contact="Contact: <sip:alice@198.51.100.3:6000>\r\n")
    assert dialog.matches(reinvite)
    dialog.refresh_target(reinvite)
    assert str(dialog.remote_target) == "sip:alice@198.51.100.3:6000"


def test_invite_needs_one_contact():
    with pytest.raises(SipParseError) as caught:
        Dialog.from_invite(invite(contact=""), local_tag="t", local_cseq=0)
    assert (caught.value.status, caught.value.reason) == (400, "an INVITE needs exactly one Contact, not 0")
