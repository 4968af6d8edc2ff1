"""URIs and structured header values: parse tables and round trips."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import (
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_session_expires,
    parse_token_list,
    parse_via,
    split_comma_list,
)
from eko_rtp.sip.uri import Uri, parse_uri


@pytest.mark.parametrize("text, user, password, host, port, parameters, canonical", [
    ("sip:alice@example.com", "alice", None, "example.com", None, (), "sip:alice@example.com"),
    ("SIP:Alice@EXAMPLE.com:5070;transport=TCP;lr", "Alice", None, "example.com", 5070,
     (("transport", "TCP"), ("lr", None)), "sip:Alice@example.com:5070;transport=TCP;lr"),
    ("sip:a%20b:pw%3F@[2001:DB8::1]:5060", "a b", "pw?", "[2001:db8::1]", 5060, (), "sip:a%20b:pw%3F@[2001:db8::1]:5060"),
    ("sips:example.net", None, None, "example.net", None, (), "sips:example.net"),
    ("tel:+33-1-23;phone-context=example.net", "+33-1-23", None, "", None,
     (("phone-context", "example.net"),), "tel:+33-1-23;phone-context=example.net"),
])
def test_uri_table(text, user, password, host, port, parameters, canonical):
    uri = parse_uri(text)
    assert (uri.user, uri.password, uri.host, uri.port, uri.parameters) == (user, password, host, port, parameters)
    assert str(uri) == canonical
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize("text, status, reason", [
    ("example.com", 400, "URI 'example.com' has no scheme"),
    ("mailto:a@b", 416, "unsupported URI scheme 'mailto' in URI"),
    ("sip:a@", 400, "bad host in URI ''"),
    ("sip:a@host:0", 400, "bad port in URI 'host:0'"),
    ("sip:a@ho st", 400, "bad URI 'sip:a@ho st'"),
    ("sip:@host", 400, "empty user in URI 'sip:@host'"),
    ("sip:a@host;;x", 400, "empty parameter in URI"),
    ("sip:%C3@host", 400, "%-escapes in URI '%C3' are not UTF-8"),
])
def test_uri_errors(text, status, reason):
    with pytest.raises(SipParseError) as caught:
        parse_uri(text)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_uri_validates_in_constructor():
    with pytest.raises(ValueError, match="a sip: URI needs a host"):
        Uri(scheme="sip", user="a")
    with pytest.raises(ValueError, match="port must be 1..65535, not 70000"):
        Uri(scheme="sip", host="h", port=70000)


@pytest.mark.parametrize("text, display, uri, tag, rendered", [
    ('"A \\"B\\"" <sip:a@h>;tag=1', 'A "B"', "sip:a@h", "1", '"A \\"B\\"" <sip:a@h>;tag=1'),
    ("Bob  Smith <sip:b@h;lr>", "Bob Smith", "sip:b@h;lr", None, '"Bob Smith" <sip:b@h;lr>'),
    ("sip:c@h;tag=x;other", None, "sip:c@h", "x", "<sip:c@h>;tag=x;other"),
    ("<tel:+331>", None, "tel:+331", None, "<tel:+331>"),
])
def test_name_addr_table(text, display, uri, tag, rendered):
    address = parse_name_addr(text)
    assert (address.display_name, str(address.uri), address.tag) == (display, uri, tag)
    assert str(address) == rendered
    assert parse_name_addr(str(address)) == address


def test_name_addr_lists_split_outside_quotes_and_brackets():
    values = ['"Doe, J" <sip:a@h;x=1,2>, <sip:b@h;lr>', "sip:c@h"]
    assert split_comma_list(values) == ['"Doe, J" <sip:a@h;x=1,2>', "<sip:b@h;lr>", "sip:c@h"]
    routes = parse_name_addr_list(['<sip:p1@h;lr>,<sip:p2@h;lr>'], "Record-Route")
    assert [str(r.uri) for r in routes] == ["sip:p1@h;lr", "sip:p2@h;lr"]


def test_via_parameters_and_stamping():
    via = parse_via("SIP/2.0/udp 10.0.0.1:5062;branch=z9hG4bK1;rport")
    assert (via.transport, via.host, via.port, via.branch, via.rport, via.received) == (
        "UDP", "10.0.0.1", 5062, "z9hG4bK1", True, None)
    stamped = via.with_parameter("received", "192.0.2.9").with_parameter("rport", "4000")
    assert str(stamped) == "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;received=192.0.2.9;rport=4000"
    assert parse_via(str(stamped)).rport == 4000
    assert parse_via("SIP/2.0/TLS h").sent_by == "h:5061"
    with pytest.raises(SipParseError) as caught:
        parse_via("SIP/2.0/UDP h;rport=x")
    assert caught.value.reason == "bad rport 'x' in Via"
    with pytest.raises(SipParseError) as caught:
        parse_via("SIP/3.0/UDP h")
    assert caught.value.reason == "bad Via 'SIP/3.0/UDP h'"


@pytest.mark.parametrize("function, text, reason", [
    (parse_cseq, "x INVITE", "bad CSeq 'x INVITE'"),
    (parse_cseq, "1", "bad CSeq '1'"),
    (parse_session_expires, "0", "Session-Expires of 0 seconds"),
    (parse_session_expires, "90;refresher=me", "Session-Expires refresher 'me' is neither uac nor uas"),
    (parse_session_expires, "abc", "bad Session-Expires 'abc': not a number of seconds"),
    (parse_media_type, "application", "bad Content-Type 'application'"),
])
def test_header_value_errors(function, text, reason):
    with pytest.raises(SipParseError) as caught:
        function(text)
    assert (caught.value.status, caught.value.reason) == (400, reason)


def test_header_values():
    assert str(parse_session_expires("1800 ; refresher=UAC")) == "1800;refresher=uac"
    assert parse_media_type("Application/SDP; charset=x") == ("application/sdp", (("charset", "x"),))
    assert parse_token_list(["timer, 100rel", "replaces"], "Supported") == ("timer", "100rel", "replaces")
    assert str(parse_cseq("12  BYE")) == "12 BYE"


TEXT = st.text(alphabet=st.sampled_from(list("sip:tel@<>\";,=%[]?&0123456789abcAB .-_+*#\\\t\u00e9")), max_size=60)


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(TEXT)
def test_header_parsers_only_raise_sip_parse_error(text):
    for function in (parse_uri, parse_name_addr, parse_via, parse_cseq, parse_session_expires, parse_media_type,
                     lambda value: parse_name_addr_list([value], "Route"),
                     lambda value: parse_token_list([value], "Require")):
        try:
            function(text)
        except SipParseError:
            pass
        try:
            function("sip:" + text)
        except SipParseError:
            pass
