"""The bench's own minimal UAC: messages it builds parse back, captured answers parse, bad input is named."""

import pytest

from eko_bench import uac
from eko_bench.run import Plan
from eko_bench.targets import check_loopback, parse_host_port
from eko_rtp.errors import UserError

ENDPOINT = uac.Endpoint(local_host="127.0.0.1", local_port=5999, target_host="127.0.0.1", target_port=5060)
DIALOG = uac.Dialog(endpoint=ENDPOINT, call_id="abc-1@eko-bench", from_tag="f00d", caller="+15551000001")

# A 200 OK to OPTIONS as pjsua 2.15 sent it to this bench (captured).
PJSUA_OPTIONS_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:56859;rport=56859;received=127.0.0.1;branch=z9hG4bK223f7a904413da4e\r\n"
    b"Call-ID: x1\r\n"
    b"From: <sip:bench@127.0.0.1>;tag=a4664a6c0249\r\n"
    b"To: <sip:eko@127.0.0.1>;tag=z9hG4bK223f7a904413da4e\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Allow: PRACK, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, SUBSCRIBE, NOTIFY, REFER, MESSAGE, OPTIONS\r\n"
    b"Content-Length:  0\r\n\r\n"
)

ANSWER_SDP = (
    b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=eko\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 30002 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def _invite_200(body=ANSWER_SDP, contact=b"Contact: <sip:eko@127.0.0.1:5060;transport=udp>\r\n"):
    return (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx;rport=5999\r\n"
        b"f: <sip:+15551000001@127.0.0.1>;tag=f00d\r\n"
        b"t: <sip:eko@127.0.0.1:5060>;tag=srv9\r\n"
        b"i: abc-1@eko-bench\r\n"
        b"CSeq: 1 INVITE\r\n" + contact +
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def test_invite_round_trip():
    sdp = uac.sdp_offer(address="127.0.0.1", rtp_port=40010, session_id=7)
    message = uac.parse_message_untrusted(DIALOG.invite(branch="z9hG4bKbr1", sdp=sdp))
    assert (message.method, message.request_uri, message.status) == ("INVITE", "sip:eko@127.0.0.1:5060", None)
    assert message.headers == (
        ("via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKbr1;rport"),
        ("max-forwards", "70"),
        ("from", "<sip:+15551000001@127.0.0.1>;tag=f00d"),
        ("to", "<sip:eko@127.0.0.1:5060>"),
        ("call-id", "abc-1@eko-bench"),
        ("cseq", "1 INVITE"),
        ("contact", "<sip:trunk@127.0.0.1:5999>"),
        ("content-type", "application/sdp"),
        ("content-length", str(len(sdp))),
    )
    assert message.body == sdp
    assert b"m=audio 40010 RTP/AVP 0 8 101\r\n" in sdp and b"a=fmtp:101 0-16\r\n" in sdp


def test_captured_pjsua_response_parses():
    message = uac.parse_message_untrusted(PJSUA_OPTIONS_200)
    assert (message.status, message.reason, message.call_id, message.cseq) == (200, "OK", "x1", (1, "OPTIONS"))
    assert uac.header_parameter(message.header("To"), "tag") == "z9hG4bK223f7a904413da4e"
    assert message.body == b""


def test_confirmed_dialog_acks_and_byes_to_the_contact():
    response = uac.parse_message_untrusted(_invite_200())
    assert response.cseq == (1, "INVITE") and response.call_id == "abc-1@eko-bench"
    dialog = DIALOG.confirmed(response)
    assert (dialog.to_tag, dialog.remote_target) == ("srv9", "sip:eko@127.0.0.1:5060;transport=udp")
    ack = uac.parse_message_untrusted(dialog.ack())
    assert (ack.method, ack.request_uri, ack.cseq) == ("ACK", "sip:eko@127.0.0.1:5060;transport=udp", (1, "ACK"))
    assert ack.header("to") == "<sip:eko@127.0.0.1:5060>;tag=srv9"
    bye = uac.parse_message_untrusted(dialog.bye(branch="z9hG4bKbye"))
    assert (bye.method, bye.cseq, bye.header("from")) == ("BYE", (2, "BYE"), "<sip:+15551000001@127.0.0.1>;tag=f00d")


def test_confirmed_without_contact_uses_the_target():
    dialog = DIALOG.confirmed(uac.parse_message_untrusted(_invite_200(contact=b"")))
    assert dialog.remote_target == "sip:eko@127.0.0.1:5060"


def test_ack_for_a_failure_reuses_the_invite_branch():
    busy = uac.parse_message_untrusted(
        b"SIP/2.0 486 Busy Here\r\nVia: x\r\nTo: <sip:eko@127.0.0.1:5060>;tag=b1\r\nCall-ID: abc-1@eko-bench\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    ack = uac.parse_message_untrusted(DIALOG.ack_failure(busy, branch="z9hG4bKinv"))
    assert ack.header("via") == "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKinv;rport"
    assert ack.header("to") == "<sip:eko@127.0.0.1:5060>;tag=b1"


def test_response_to_a_bye_echoes_the_transaction_headers():
    bye = uac.parse_message_untrusted(
        b"BYE sip:trunk@127.0.0.1:5999 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKs\r\n"
        b"From: <sip:eko@127.0.0.1>;tag=srv9\r\nTo: <sip:+1555@127.0.0.1>;tag=f00d\r\n"
        b"Call-ID: abc-1@eko-bench\r\nCSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    assert uac.response_to(bye, 200, "OK") == (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKs\r\n"
        b"From: <sip:eko@127.0.0.1>;tag=srv9\r\nTo: <sip:+1555@127.0.0.1>;tag=f00d\r\n"
        b"Call-ID: abc-1@eko-bench\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n")


def test_options_probe_parses():
    message = uac.parse_message_untrusted(uac.options(ENDPOINT, call_id="o1", branch="z9hG4bKo"))
    assert (message.method, message.cseq, message.call_id) == ("OPTIONS", (1, "OPTIONS"), "o1")


def test_folded_header_and_body_cut_at_content_length():
    message = uac.parse_message_untrusted(
        b"SIP/2.0 100 Trying\r\nSubject: a\r\n  b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nl: 2\r\n\r\nxyz")
    assert (message.header("subject"), message.body) == ("a b", b"xy")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n", "message has no blank line after the headers"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "bad status line 'SIP/2.0 2000 OK'"),
        (b"SIP/2.0 099 Low\r\n\r\n", "bad status line 'SIP/2.0 099 Low'"),
        (b"HELLO\r\n\r\n", "bad start line 'HELLO'"),
        (b"BYE sip:x SIP/3.0\r\n\r\n", "bad start line 'BYE sip:x SIP/3.0'"),
        (b"SIP/2.0 200 OK\r\nnocolon\r\n\r\n", "header line 2 has no name: 'nocolon'"),
        (b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length 'x'"),
        (b"SIP/2.0 200 OK\r\nContent-Length: 9\r\n\r\nabc", "Content-Length 9 but only 3 body bytes"),
        (b"SIP/2.0 200 OK\r\nX: \xff\r\n\r\n", "headers are not UTF-8 (byte 19)"),
        (b"x" * 70000, "message of 70000 bytes is larger than 65535"),
    ],
)
def test_unreadable_messages_are_named(data, error):
    with pytest.raises(uac.BenchProtocolError) as caught:
        uac.parse_message_untrusted(data)
    assert str(caught.value) == error


def test_missing_call_id_and_bad_cseq():
    message = uac.parse_message_untrusted(b"SIP/2.0 200 OK\r\nCSeq: one INVITE\r\n\r\n")
    with pytest.raises(uac.BenchProtocolError, match="message has no Call-ID header"):
        message.call_id
    with pytest.raises(uac.BenchProtocolError, match="bad CSeq header 'one INVITE'"):
        message.cseq


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (ANSWER_SDP, uac.MediaAnswer(address="127.0.0.1", port=30002, payload_type=8)),
        (b"v=0\r\nc=IN IP4 127.0.0.9\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.2\r\n",
         uac.MediaAnswer(address="127.0.0.2", port=4000, payload_type=0)),
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 5000 RTP/AVP 96\r\nm=audio 4002 RTP/AVP 0\r\n",
         uac.MediaAnswer(address="127.0.0.1", port=4002, payload_type=0)),
    ],
)
def test_sdp_answers(body, expected):
    assert uac.parse_sdp_answer_untrusted(body) == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\n", "SDP answer has no m=audio line"),
        (b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "SDP answer has no c= line"),
        (b"v=0\r\nc=IN IP4\r\n", "bad SDP connection line 'c=IN IP4'"),
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio x RTP/AVP 0\r\n", "bad SDP media line 'm=audio x RTP/AVP 0'"),
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 101\r\n",
         "SDP answer chose payload type 101, offered 0 (PCMU) and 8 (PCMA)"),
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n", "SDP answer has port 0"),
    ],
)
def test_bad_sdp_answers(body, error):
    with pytest.raises(uac.BenchProtocolError) as caught:
        uac.parse_sdp_answer_untrusted(body)
    assert str(caught.value) == error


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "::1"])
def test_loopback_targets_are_accepted(host):
    assert check_loopback(host) == host


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("10.0.0.1:5060", "key '--address': target 10.0.0.1 is outside loopback (127.0.0.0/8, ::1); the bench refuses to load other hosts"),
        ("localhost:5060", "key '--address': target host 'localhost' is not an IP address (the bench only targets loopback)"),
        ("[::2]:5060", "key '--address': target ::2 is outside loopback (127.0.0.0/8, ::1); the bench refuses to load other hosts"),
        ("127.0.0.1", "key '--address': expected HOST:PORT, got '127.0.0.1'"),
        ("127.0.0.1:70000", "key '--address': expected HOST:PORT, got '127.0.0.1:70000'"),
    ],
)
def test_non_loopback_or_malformed_targets_are_refused(text, error):
    with pytest.raises(UserError) as caught:
        parse_host_port(text, key="--address")
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (dict(calls=0), "key '--calls': 0 calls is outside 1..3000"),
        (dict(calls=3001), "key '--calls': 3001 calls is outside 1..3000"),
        (dict(concurrency=0), "key '--concurrency': concurrency 0 is outside 1..3000"),
        (dict(rate=0), "key '--rate': rate 0 calls/s is outside (0, 1000]"),
        (dict(hold=601), "key '--hold': hold 601 s is outside (0, 600]"),
        (dict(calls=2000, concurrency=10, hold=5), "key '--hold': the run would take about 1005 s (calls / rate,"
         " in waves of concurrency, plus hold), over the 600 s cap"),
        (dict(scenario="live"), "key '--scenario': scenario 'live' is not one of greeting-unknown, greeting-returning,"
         " live-tts, hybrid, mixed, listening"),
        (dict(scenario="live-tts", tts_first_byte_ms=-1.0),
         "key '--tts-first-byte-ms': time to first byte -1.0 ms is outside 0..10000"),
        (dict(scenario="hybrid", tts_first_byte_ms=10_001.0),
         "key '--tts-first-byte-ms': time to first byte 10001.0 ms is outside 0..10000"),
        (dict(scenario="hybrid", filler_tail_frames=-1), "key '--cache': filler tail of -1 frames is negative"),
        (dict(scenario="listening", listening="loud"), "key '--listening': listening 'loud' is not one of vad, asr, off"),
        (dict(scenario="listening", quiet_frames=0), "key '--cache': 0 quiet frames is outside 1..500"),
        (dict(local_host="192.168.1.1"), "key '--address': target 192.168.1.1 is outside loopback (127.0.0.0/8, ::1);"
         " the bench refuses to load other hosts"),
    ],
)
def test_plan_caps(fields, error):
    arguments = dict(calls=10, concurrency=10, rate=100.0, hold=5.0) | fields
    with pytest.raises(UserError) as caught:
        Plan(**arguments)
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("scenario", "index", "caller"),
    [
        ("greeting-unknown", 0, "+33600000000"),  # docs/crm-rpc.md: unknown to every seeded CRM
        ("greeting-unknown", 1999, "+33600001999"),
        ("greeting-returning", 0, "+33700000001"),  # synthetic client 1
        ("greeting-returning", 41, "+33700000042"),
    ],
)
def test_caller_numbers_by_scenario(scenario, index, caller):
    assert Plan(calls=1, concurrency=1, rate=1.0, hold=1.0, scenario=scenario).caller(index) == caller
