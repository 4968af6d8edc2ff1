"""SIP message parsing and serialising: captured INVITEs, the torture set, Content-Length rules."""

from __future__ import annotations

import os
import pathlib

import hypothesis
import pytest
from hypothesis import strategies as st

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import CSeq, parse_cseq, parse_name_addr, parse_session_expires, parse_via_list
from eko_rtp.sip.message import Headers, Request, Response, parse_message_untrusted
from eko_rtp.sip.uri import parse_uri

TORTURE = pathlib.Path(__file__).parent / "sip_torture"


def fixture(name: str) -> bytes:
    return (TORTURE / f"{name}.sip").read_bytes()


def parse(data: bytes, transport: str = "udp", **kwargs) -> Request | Response:
    return parse_message_untrusted(data, transport=transport, **kwargs)


def test_under_pure_python_every_message_is_parsed_in_python():
    """tests/test_stream.py runs this file again with EKO_RTP_PURE_PYTHON=1: then these
    tests are the Python parser's, without the compiled scan of sip/_head.c."""
    from eko_rtp.sip import message

    if not os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("the compiled scan, when built, is compared with Python in tests/test_sip_head_scan.py")
    assert message._scan is None and message.HEAD_SCAN == "python"


def test_captured_pjsua2_invite_parses_and_round_trips():
    data = fixture("captured_pjsua2_invite")
    request = parse(data)
    assert isinstance(request, Request)
    assert (request.method, request.uri, request.version) == ("INVITE", "sip:eko@127.0.0.1:5099", "SIP/2.0")
    via = parse_via_list(request.headers.get_all("Via"))
    assert [(v.transport, v.host, v.port, v.branch, v.rport) for v in via] == [
        ("UDP", "127.0.0.1", 5097, "z9hG4bKPjz6tOQPiDanfLpoOUqYkuTGtoMCFLEXNT", True)
    ]
    assert parse_name_addr(request.headers.get("From"), "From").tag == "5.vM0ioWCp2TL1AOOZ7dwDFYvb0no9hO"
    assert parse_cseq(request.headers.get("CSeq")) == parse_cseq("22168 INVITE")
    assert parse_session_expires(request.headers.get("Session-Expires")).interval == 1800
    assert request.headers.get("min-se") == "90"
    assert len(request.body) == 620 and request.body.startswith(b"v=0\r\no=- 4004597124")
    # Content-Length is framing, not a header: bytes() writes it from the body.
    assert "Content-Length" not in request.headers
    assert parse(bytes(request)) == request
    # The only difference on the wire is the padding pjsua puts in Content-Length.
    assert bytes(request) == data.replace(b"Content-Length:   620", b"Content-Length: 620")


def test_captured_sipp_invite_parses_and_round_trips():
    data = fixture("captured_sipp_invite")
    request = parse(data)
    to = parse_name_addr(request.headers.get("To"), "To")
    assert (to.display_name, str(to.uri), to.tag) == ("service", "sip:service@127.0.0.1:5099", None)
    contact = parse_name_addr(request.headers.get("Contact"), "Contact")
    assert (contact.uri.user, contact.uri.host, contact.uri.port) == ("sipp", "127.0.0.1", 5098)
    assert request.headers.get("Subject") == "Performance Test"
    assert len(request.body) == 129
    assert bytes(request) == data.replace(b"Content-Length:   129", b"Content-Length: 129")


def test_whitespace_folding_and_several_via():
    request = parse(fixture("valid_whitespace_folding"))
    headers = request.headers
    assert headers.get("To") == '"Eko Bot"   <sip:eko@example.net>'
    sender = parse_name_addr(headers.get("From"), "From")
    assert (sender.display_name, sender.uri.user, sender.tag) == ('J "Rose" Doe', "john", "98asjd8")
    assert parse_cseq(headers.get("CSeq")) == parse_cseq("9 INVITE")
    vias = parse_via_list(headers.get_all("Via"))
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", None, "z9hG4bKkdjuw"),
        ("UDP", "192.0.2.99", 5062, "z9hG4bK-earlier"),
        ("TCP", "[2001:db8::9]", None, "z9hG4bK-first"),
    ]
    assert headers.get("Subject") == ""
    assert headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert len(request.body) == 87
    assert parse(bytes(request)) == request


def test_compact_forms_are_expanded():
    request = parse(fixture("valid_compact_forms"))
    names = [name for name, _ in request.headers]
    assert names == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Session-Expires", "Content-Type",
        "Event", "Refer-To", "Referred-By", "Allow-Events", "Accept-Contact", "Reject-Contact",
        "Request-Disposition", "Content-Encoding", "Subject",
    ]
    assert request.body == b"hello"
    assert request.headers.get("x") == "1800;refresher=uac"
    assert bytes(request).startswith(b"OPTIONS sip:eko@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060")


def test_escaped_uris_ipv6_and_tel():
    request = parse(fixture("valid_escaped_uris"))
    uri = parse_uri(request.uri)
    assert (uri.user, uri.host, uri.parameter("transport")) == ("+33 123;phone-context=example.net", "example.net", "udp")
    assert str(uri) == "sip:+33%20123;phone-context=example.net@example.net;transport=udp"
    sender = parse_name_addr(request.headers.get("From"), "From")
    assert (sender.uri.user, sender.uri.parameter("x")) == ("caller@home", "Ab")
    to = parse_name_addr(request.headers.get("To"), "To")
    assert (to.uri.scheme, to.uri.host, to.uri.port) == ("sips", "example.net", 5061)
    contact = parse_name_addr(request.headers.get("Contact"), "Contact")
    assert (contact.uri.host, contact.uri.port, contact.uri.loose_route) == ("[2001:db8::1]", 5070, True)
    asserted = parse_name_addr(request.headers.get("P-Asserted-Identity"), "P-Asserted-Identity")
    assert (asserted.uri.scheme, asserted.uri.user, asserted.uri.parameter("cpc")) == ("tel", "+33123456789", "ordinary")
    assert request.headers.get("Max-Forwards") == "0"


def test_udp_content_length_smaller_truncates_and_absent_reads_to_the_end():
    assert parse(fixture("valid_udp_length_truncates")).body == b"hello"
    assert parse(fixture("valid_udp_no_length")).body == b"whole datagram body"


def test_stream_transport_requires_content_length():
    with pytest.raises(SipParseError) as caught:
        parse(fixture("valid_udp_no_length"), transport="tcp")
    assert (caught.value.status, caught.value.reason) == (400, "Content-Length is required over a stream transport")
    assert caught.value.request.method == "MESSAGE"


def test_response_with_several_via_lines():
    response = parse(fixture("valid_response_multiple_via"))
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (180, "Ringing Now")
    assert [v.branch for v in parse_via_list(response.headers.get_all("Via"))] == ["z9hG4bK-top", "z9hG4bK-second"]
    assert parse(bytes(response)) == response


INVALID = [
    ("invalid_bad_escape", 400, "bad %-escape in Request-URI '%ZZeko'", True),
    ("invalid_content_length_conflict", 400, "several different Content-Length values", True),
    ("invalid_content_length_larger", 400, "Content-Length 500 exceeds the 87 body bytes received", True),
    ("invalid_content_length_negative", 400, "bad Content-Length '-999'", True),
    ("invalid_cseq_method_mismatch", 400, "CSeq method OPTIONS does not match the request method INVITE", True),
    ("invalid_cseq_too_big", 400, "CSeq number 4294967296 is not below 2**31", True),
    ("invalid_header_without_colon", 400, "bad header line 'This line has no colon'", True),
    ("invalid_max_forwards", 400, "Max-Forwards 300 is above 255", True),
    ("invalid_missing_call_id", 400, "missing Call-ID header", True),
    ("invalid_no_empty_line", 400, "no empty line after the headers", False),
    ("invalid_request_line_spaces", 400,
     "extra whitespace in Request-Line 'INVITE  sip:eko@example.net  SIP/2.0'", True),
    ("invalid_two_from", 400, "several From headers", True),
    ("invalid_unterminated_display_name", 400, "unterminated display name in From", True),
    ("invalid_uri_scheme", 416, "unsupported URI scheme 'http' in Request-URI", True),
    ("invalid_version", 505, "SIP version 'SIP/7.0' is not supported", True),
    ("invalid_via_no_host", 400, "bad Via 'SIP/2.0/UDP ;branch=z9hG4bK-nohost'", True),
    ("invalid_via_port", 400, "bad port in Via '192.0.2.5:99999'", True),
]


@pytest.mark.parametrize("name, status, reason, has_request", INVALID)
def test_torture_invalid(name, status, reason, has_request):
    with pytest.raises(SipParseError) as caught:
        parse(fixture(name))
    assert (caught.value.status, caught.value.reason) == (status, reason)
    assert (caught.value.request is not None) == has_request


def test_every_torture_fixture_is_covered():
    names = {path.stem for path in TORTURE.glob("*.sip")}
    invalid = {row[0] for row in INVALID}
    assert {name for name in names if name.startswith("invalid_")} == invalid


def test_message_size_limit_is_513():
    data = fixture("captured_sipp_invite")
    with pytest.raises(SipParseError) as caught:
        parse(data, max_message_size=400)
    assert (caught.value.status, caught.value.reason) == (513, "message of 509 bytes exceeds the 400-byte limit")
    assert caught.value.request.method == "INVITE"
    big = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 70000
    with pytest.raises(SipParseError) as caught:
        parse(big)
    assert (caught.value.status, caught.value.reason) == (513, "message of 70028 bytes exceeds the 65536-byte limit")


def test_transport_is_checked_as_our_input():
    with pytest.raises(ValueError, match="transport must be udp, tcp or tls, not 'sctp'"):
        parse(fixture("valid_udp_no_length"), transport="sctp")


def test_leading_crlf_is_ignored_and_response_status_checked():
    data = b"\r\n\r\n" + fixture("valid_response_multiple_via")
    assert parse(data).status == 180
    with pytest.raises(SipParseError) as caught:
        parse(b"SIP/2.0 99 Odd\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n\r\n")
    assert (caught.value.status, caught.value.reason) == (400, "bad status code '99'")


def test_headers_refuse_injection_and_serialise_in_order():
    with pytest.raises(ValueError, match="holds CR, LF or NUL"):
        Headers([("Subject", "a\r\nVia: evil")])
    with pytest.raises(ValueError, match="is not a token"):
        Headers([("Bad Name", "x")])
    headers = Headers([("i", "x"), ("Via", "a"), ("via", "b")])
    assert headers.get_all("v") == ["a", "b"]
    assert list(headers.without("VIA")) == [("Call-ID", "x")]
    assert headers.without("Subject", "Content-Length") is headers  # frozen: nothing to copy
    with pytest.raises(ValueError, match="holds CR, LF or NUL"):
        Headers([("Via", "a\r\nVia: evil")])  # a well-known name's value is checked all the same
    assert Headers([("call-id", "x"), ("X-Odd", "y")]).fields == (("Call-ID", "x"), ("X-Odd", "y"))
    response = Response(status=200, reason="OK", headers=headers, body=b"ab")
    assert bytes(response) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nVia: a\r\nVia: b\r\nContent-Length: 2\r\n\r\nab"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.binary(max_size=600))
def test_random_bytes_only_raise_sip_parse_error(data):
    for transport in ("udp", "tcp"):
        try:
            parse(data, transport=transport)
        except SipParseError:
            pass


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.data())
def test_mutated_invites_only_raise_sip_parse_error(data):
    base = bytearray(fixture("captured_sipp_invite"))
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(base) - 1))
        base[index] = data.draw(st.sampled_from(b" \t\r\n:;,<>\"%@=[]0aZ\x00\xff"))
    try:
        message = parse(bytes(base))
    except SipParseError:
        return
    assert parse(bytes(message)) == message


def test_addressing_headers_are_parsed_once_into_typed_fields():
    request = parse(fixture("valid_whitespace_folding"))
    headers = request.headers
    assert request.vias == tuple(parse_via_list(headers.get_all("Via")))
    assert [(v.transport, v.host, v.branch) for v in request.vias][0] == ("UDP", "192.0.2.2", "z9hG4bKkdjuw")
    assert request.from_ == parse_name_addr(headers.get("From"), "From") and request.from_.tag == "98asjd8"
    assert request.to == parse_name_addr(headers.get("To"), "To") and request.to.tag is None
    assert (request.call_id, request.cseq) == ("wsinv.ndaksdj@192.0.2.1", CSeq(number=9, method="INVITE"))
    response = parse(fixture("valid_response_multiple_via"))
    assert [via.branch for via in response.vias] == ["z9hG4bK-top", "z9hG4bK-second"]
    assert (response.from_.tag, response.to.tag, response.call_id, response.cseq) == (
        "ours", "theirs", "resp-1", CSeq(number=2, method="BYE"))
    # Derived from the headers, the typed fields take no part in equality: a round trip still compares equal.
    assert parse(bytes(response)) == response


def test_messages_built_here_have_no_typed_fields():
    request = Request(method="OPTIONS", uri="sip:a@b", headers=Headers([("Call-ID", "x")]))
    assert (request.vias, request.from_, request.to, request.call_id, request.cseq) == ((), None, None, None, None)


OPTIONS = ("OPTIONS sip:eko@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-a\r\n"
           "From: <sip:a@example.org>;tag=f\r\nTo: <sip:eko@example.net>\r\nCall-ID: c-1\r\nCSeq: 4 OPTIONS\r\n\r\n")


@pytest.mark.parametrize("old, new, reason, parsed", [
    ("To: <sip:eko@example.net>", "To: <sip:eko@example.net", "unclosed <URI> in To",
     ("z9hG4bK-a", "f", None, "c-1", 4)),
    ("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-a", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-a, SIP/2.0/UDP :1",
     "bad host in Via ':1'", ("z9hG4bK-a", "f", None, "c-1", 4)),
    ("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-a", "Via: ,", "Via header without a value",
     (None, "f", None, "c-1", 4)),
    ("CSeq: 4 OPTIONS", "CSeq: four OPTIONS", "bad CSeq 'four OPTIONS'", ("z9hG4bK-a", "f", None, "c-1", None)),
    ("Call-ID: c-1", "Call-ID: c 1", "bad Call-ID 'c 1'", ("z9hG4bK-a", "f", None, None, 4)),
    ("SIP/2.0\r\nVia", "SIP/3.0\r\nVia", "SIP version 'SIP/3.0' is not supported", ("z9hG4bK-a", "f", None, "c-1", 4)),
    ("From: <sip:a@example.org>;tag=f", "From: <sip:a@example.org>;tag=f\r\nFrom: <sip:b@example.org>;tag=g",
     "several From headers", ("z9hG4bK-a", "f", None, "c-1", 4)),
])
def test_a_refused_request_carries_the_typed_fields_that_parsed(old, new, reason, parsed):
    with pytest.raises(SipParseError) as caught:
        parse(OPTIONS.replace(old, new, 1).encode())
    request = caught.value.request
    assert caught.value.reason == reason
    assert len(request.vias) == (0 if parsed[0] is None else 1)
    assert (request.vias[0].branch if request.vias else None, request.from_.tag, request.to and request.to.tag,
            request.call_id, request.cseq and request.cseq.number) == parsed
