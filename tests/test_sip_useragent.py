"""The UAS core driven with explicit time: (state, input) -> exact output tables."""

from __future__ import annotations

import random

import pytest

from eko_rtp.sip.call_state import CallStateError
from eko_rtp.sip.events import (
    CallConfirmed,
    CallEnded,
    CallerIdentity,
    EndReason,
    IncomingCall,
    InfoDtmf,
    MessageRejected,
    SessionModified,
    Transmit,
)
from eko_rtp.sip.headers import SipWarning, parse_name_addr, parse_via
from eko_rtp.sip.message import Request, Response, parse_message_untrusted
from eko_rtp.sip.session_timer import SessionTimerSettings
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

SEED = 7
PEER = ("192.0.2.20", 5070)
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


def first_token(seed: int = SEED) -> str:
    """The first tag the seeded user agent draws."""
    return f"{random.Random(seed).getrandbits(64):016x}"


def message(method: str, *, call_id: str = "call-1", branch: str = "z9hG4bK-inv1", cseq: int = 1,
            from_tag: str = "caller1", to_tag: str | None = None, via: str = "192.0.2.20:5070;rport",
            extra: str = "", body: bytes = b"", content_type: str | None = "application/sdp",
            cseq_method: str | None = None) -> bytes:
    to = "<sip:eko@192.0.2.10>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:eko@192.0.2.10:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {via};branch={branch}",
        "Max-Forwards: 70",
        f'From: "Alice" <sip:alice@example.org>;tag={from_tag}',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@192.0.2.20:5070>",
    ]
    if extra:
        lines += extra.strip("\n").split("\n")
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Harness:
    """A user agent plus helpers that parse what it transmits."""

    def __init__(self, **settings):
        self.ua = UserAgent(UserAgentSettings(host="192.0.2.10", **settings), rng=random.Random(SEED))

    def send(self, data: bytes, now: float, *, source=PEER, transport="udp", connection=None) -> list:
        self.ua.receive(data, source=source, transport=transport, connection=connection, now=now)
        return self.ua.events()

    def tick(self, now: float) -> list:
        self.ua.handle_timers(now)
        return self.ua.events()

    def run_until(self, until: float) -> list[tuple[float, object]]:
        """Fire timers at their exact deadlines up to ``until``: (time, event) pairs."""
        out = []
        for _ in range(1000):
            deadline = self.ua.next_deadline()
            if deadline is None or deadline > until:
                return out
            out += [(deadline, event) for event in self.tick(deadline)]
        raise AssertionError("timers did not settle")

    tag = first_token()

    def call(self, now: float = 0.0, **kwargs) -> list:
        """INVITE with SDP, then answer it; returns the events of the answer and notes our tag."""
        self.send(message("INVITE", body=SDP, **kwargs), now)
        self.ua.answer(kwargs.get("call_id", "call-1"), ANSWER, now)
        events = self.ua.events()
        self.tag = parse_name_addr(sent(events)[0].headers.get("To"), "To").tag
        return events


def sent(events) -> list[Request | Response]:
    return [parse_message_untrusted(e.data, transport="udp") for e in events if isinstance(e, Transmit)]


def statuses(events) -> list[int]:
    return [m.status if isinstance(m, Response) else m.method for m in sent(events)]


def others(events) -> list:
    return [e for e in events if not isinstance(e, Transmit)]


def test_invite_gets_100_at_once_then_incoming_call():
    h = Harness()
    events = h.send(message("INVITE", body=SDP), 0.0)
    assert events[0] == Transmit(data=(
        b"SIP/2.0 100 Trying\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-inv1;received=192.0.2.20;rport=5070\r\n"
        b'From: "Alice" <sip:alice@example.org>;tag=caller1\r\n'
        b"To: <sip:eko@192.0.2.10>\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ), destination=PEER, transport="udp")
    incoming = events[1]
    assert isinstance(incoming, IncomingCall) and len(events) == 2
    assert (incoming.call_id, incoming.offer, incoming.source) == ("call-1", SDP, PEER)
    assert incoming.caller == CallerIdentity(from_uri="sip:alice@example.org", from_user="alice",
                                             display_name="Alice")


def test_answer_sends_exact_200_and_retransmits_until_ack():
    h = Harness()
    events = h.call()
    assert events == [Transmit(data=(
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.20:5070;branch=z9hG4bK-inv1;received=192.0.2.20;rport=5070\r\n"
        b'From: "Alice" <sip:alice@example.org>;tag=caller1\r\n'
        + f"To: <sip:eko@192.0.2.10>;tag={first_token()}\r\n".encode() +
        b"Call-ID: call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:eko@192.0.2.10:5060>\r\n"
        b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY\r\nSupported: timer\r\nServer: Eko RTP\r\n"
        b"Content-Type: application/sdp\r\n" + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode() + ANSWER
    ), destination=PEER, transport="udp")]
    timeline = h.run_until(8.0)
    assert [t for t, e in timeline] == [0.5, 1.5, 3.5, 7.5]
    assert all(e == events[0] for t, e in timeline)
    ack = message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag)
    assert h.send(ack, 8.0) == [CallConfirmed(call_id="call-1", answer=None)]
    assert h.send(ack, 8.1) == []  # a retransmitted ACK is absorbed silently
    assert h.run_until(60.0) == []


def test_no_ack_ends_the_call_with_bye_at_64_t1():
    h = Harness()
    h.call()
    timeline = h.run_until(32.0)
    retransmissions = [t for t, e in timeline if isinstance(e, Transmit) and e.data.startswith(b"SIP/2.0 200")]
    assert retransmissions == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    last = [e for t, e in timeline if t == 32.0]
    assert last[0] == CallEnded(call_id="call-1", reason=EndReason.NO_ACK)
    (bye,) = sent(last[1:])
    assert (bye.method, bye.uri, bye.headers.get("CSeq")) == ("BYE", "sip:alice@192.0.2.20:5070", "1 BYE")
    assert bye.headers.get("To") == '"Alice" <sip:alice@example.org>;tag=caller1'
    assert bye.headers.get("From") == f"<sip:eko@192.0.2.10>;tag={h.tag}"
    assert last[1].destination == PEER
    # The BYE is retransmitted until its 200; then the call is gone.
    assert [t for t, e in h.run_until(33.5)] == [32.5, 33.5]
    via = parse_via(bye.headers.get("Via"))
    ok = (f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {bye.headers.get('From')}\r\nTo: {bye.headers.get('To')}\r\n"
          f"Call-ID: call-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    assert h.send(ok, 34.0) == []
    assert h.run_until(100.0) == [] and h.ua.call_ids == []
    dropped = h.send(ok, 40.0)
    assert dropped == [MessageRejected(description="response 200 to BYE matches no transaction; dropped",
                                       source=PEER, status=None)]


def test_retransmitted_invite_repeats_last_response_without_second_call():
    h = Harness()
    first = h.send(message("INVITE", body=SDP), 0.0)
    again = h.send(message("INVITE", body=SDP), 0.2)
    assert again == [first[0]]  # the same 100 Trying, no second IncomingCall
    h.ua.answer("call-1", ANSWER, 0.3)
    ok = h.ua.events()
    assert h.send(message("INVITE", body=SDP), 0.4) == ok


def test_cancel_before_answer():
    h = Harness()
    h.send(message("INVITE", body=SDP), 0.0)
    events = h.send(message("CANCEL"), 1.0)
    cancel_ok, terminated = sent(events)
    assert (cancel_ok.status, cancel_ok.headers.get("CSeq")) == (200, "1 CANCEL")
    assert parse_name_addr(cancel_ok.headers.get("To"), "To").tag == h.tag
    assert (terminated.status, terminated.reason, terminated.headers.get("CSeq")) == (487, "Request Terminated", "1 INVITE")
    assert parse_name_addr(terminated.headers.get("To"), "To").tag == h.tag
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.CANCELLED)]
    assert h.ua.answer("call-1", ANSWER, 1.1) is False
    # The 487 is retransmitted (timer G) until the ACK, which ends there.
    assert [t for t, e in h.run_until(2.5)] == [1.5, 2.5]
    assert h.send(message("ACK", to_tag=h.tag), 3.0) == []
    assert [t for t, e in h.run_until(100.0)] == []


def test_cancel_for_nothing_is_481():
    h = Harness()
    events = h.send(message("CANCEL", branch="z9hG4bK-none"), 0.0)
    assert statuses(events) == [481]
    assert others(events) == [MessageRejected(description="CANCEL (Call-ID call-1): CANCEL matches no INVITE",
                                              source=PEER, status=481)]


def test_remote_bye_then_retransmission_then_unknown_dialog():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    bye = message("BYE", branch="z9hG4bK-bye1", cseq=2, to_tag=h.tag)
    events = h.send(bye, 5.0)
    assert statuses(events) == [200]
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.REMOTE_BYE)]
    assert h.send(bye, 5.5) == [events[0]]
    late = h.send(message("BYE", branch="z9hG4bK-bye2", cseq=3, to_tag=h.tag), 6.0)
    assert statuses(late) == [481]


def test_hangup_sends_bye_and_reports_at_once():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    assert h.ua.hangup("call-1", 10.0) is True
    events = h.ua.events()
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.LOCAL_BYE)]
    assert statuses(events) == ["BYE"]
    assert h.ua.hangup("call-1", 10.1) is False
    # A BYE crossing ours gets 200 and no second CallEnded.
    crossing = h.send(message("BYE", branch="z9hG4bK-bye9", cseq=2, to_tag=h.tag), 10.2)
    assert statuses(crossing) == [200] and others(crossing) == []


def test_hangup_before_ack_waits_for_the_ack():
    h = Harness()
    h.call()
    assert h.ua.hangup("call-1", 0.2) is True
    assert others(h.ua.events()) == [CallEnded(call_id="call-1", reason=EndReason.LOCAL_BYE)]
    assert statuses(h.tick(0.5)) == [200]  # still retransmitting the 200, no BYE yet
    events = h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.7)
    assert statuses(events) == ["BYE"] and others(events) == []


def test_hangup_before_answer_rejects_with_480():
    h = Harness()
    h.send(message("INVITE", body=SDP), 0.0)
    assert h.ua.hangup("call-1", 0.1) is True
    events = h.ua.events()
    assert statuses(events) == [480]
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.REJECTED)]


def test_reject_with_retry_after_and_misuse():
    h = Harness()
    h.send(message("INVITE", body=SDP), 0.0)
    h.ua.reject("call-1", 503, 0.1, headers=[("Retry-After", "5")])
    (response,) = sent(h.ua.events())
    assert (response.status, response.headers.get("Retry-After")) == (503, "5")
    with pytest.raises(ValueError, match="reject needs a status 300..699, not 200"):
        h.ua.reject("call-1", 200, 0.2)
    h.send(message("INVITE", call_id="call-2", branch="z9hG4bK-inv2", body=SDP), 0.0)
    h.ua.answer("call-2", ANSWER, 0.1)
    with pytest.raises(CallStateError, match="answer on call call-2 in state answered"):
        h.ua.answer("call-2", ANSWER, 0.2)


SRTP_REFUSAL = "SDES keys over UDP refused (media.srtp_over_insecure_signalling is false)"
REOFFER_REFUSAL = "the call is encrypted (SRTP): a re-offer without an active RTP/SAVP audio stream is refused"


def refused_with_a_warning(reason: str, *, branch: str, to_tag: str, cseq: int, extra: str = "") -> Transmit:
    """Our exact 488 to PEER's request: ``reason`` in the status line and in a Warning naming us."""
    return Transmit(data=(
        f"SIP/2.0 488 {reason}\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.20:5070;branch={branch};received=192.0.2.20;rport=5070\r\n"
        'From: "Alice" <sip:alice@example.org>;tag=caller1\r\n'
        f"To: <sip:eko@192.0.2.10>;tag={to_tag}\r\nCall-ID: call-1\r\nCSeq: {cseq} INVITE\r\n{extra}"
        f'Warning: 399 192.0.2.10 "{reason}"\r\nServer: Eko RTP\r\nContent-Length: 0\r\n\r\n'
    ).encode(), destination=PEER, transport="udp")


def test_reject_with_a_warning_names_us_beside_the_reason_phrase():
    # RFC 3261 §20.43: a B2BUA may rewrite the reason phrase; the Warning goes through.
    h = Harness()
    h.send(message("INVITE", body=SDP), 0.0)
    assert h.ua.reject("call-1", 488, 0.1, reason=SRTP_REFUSAL, headers=[("Retry-After", "5")],
                       warning=h.ua.warning(399, SRTP_REFUSAL)) is True
    assert h.ua.events() == [
        refused_with_a_warning(SRTP_REFUSAL, branch="z9hG4bK-inv1", to_tag=first_token(), cseq=1,
                               extra="Retry-After: 5\r\n"),
        CallEnded(call_id="call-1", reason=EndReason.REJECTED),
    ]


def test_a_refused_reinvite_carries_the_warning_too():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 1.0)
    assert h.ua.reject_modification("call-1", 488, 1.1, reason=REOFFER_REFUSAL,
                                    warning=h.ua.warning(399, REOFFER_REFUSAL)) is True
    assert h.ua.events() == [refused_with_a_warning(REOFFER_REFUSAL, branch="z9hG4bK-re1", to_tag=h.tag, cseq=2)]


@pytest.mark.parametrize(("host", "code", "text", "header"), [
    ("192.0.2.10", 399, "plain", '399 192.0.2.10 "plain"'),
    ("2001:db8::10", 305, "no common codec", '305 [2001:db8::10] "no common codec"'),
    ("eko.example", 399, 'SDP line 5 (\'a=crypto:1 "x"\'): bad \\ key',
     '399 eko.example "SDP line 5 (\'a=crypto:1 \\"x\\"\'): bad \\\\ key"'),
    ("eko.example", 399, "tab\tstays, control\x01 is escaped, é is UTF-8",
     '399 eko.example "tab\tstays, control\\\x01 is escaped, é is UTF-8"'),
])
def test_warning_values_are_quoted_strings(host, code, text, header):
    assert str(UserAgent(UserAgentSettings(host=host)).warning(code, text)) == header


@pytest.mark.parametrize(("fields", "error"), [
    ({"code": 299, "agent": "eko", "text": "x"}, "'code' must be >= 300: 299"),
    ({"code": 400, "agent": "eko", "text": "x"}, "'code' must be <= 399: 400"),
    ({"code": 399, "agent": "eko rtp", "text": "x"}, "warn-agent must be a host or a pseudonym, not 'eko rtp'"),
    ({"code": 399, "agent": "", "text": "x"}, "warn-agent must be a host or a pseudonym, not ''"),
    ({"code": 399, "agent": "eko", "text": "two\r\nlines"}, "warn-text must be one line"),
])
def test_warning_values_are_validated(fields, error):
    with pytest.raises(ValueError) as caught:
        SipWarning(**fields)
    assert str(caught.value) == error


def test_options_and_drain():
    h = Harness()
    (ok,) = sent(h.send(message("OPTIONS", branch="z9hG4bK-o1"), 0.0))
    assert (ok.status, ok.headers.get("Allow"), ok.headers.get("Accept"), ok.headers.get("Supported")) == (
        200, "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY", "application/sdp, application/dtmf-relay, message/sipfrag", "timer")
    h.call()  # a call in progress before the drain
    h.ua.set_accepting(False, retry_after=120)
    (busy,) = sent(h.send(message("OPTIONS", branch="z9hG4bK-o2"), 1.0))
    assert (busy.status, busy.headers.get("Retry-After")) == (503, "120")
    events = h.send(message("INVITE", call_id="call-9", branch="z9hG4bK-new", body=SDP), 1.0)
    assert statuses(events) == [503]
    assert sent(events)[0].headers.get("Retry-After") == "120"
    # In-dialog requests are still served while draining.
    assert statuses(h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 1.1)) == []
    assert statuses(h.send(message("BYE", branch="z9hG4bK-b", cseq=2, to_tag=h.tag), 1.2)) == [200]


@pytest.mark.parametrize("data, status, header, value, description", [
    (message("SUBSCRIBE"), 501, "Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY",
     "SUBSCRIBE (Call-ID call-1): method SUBSCRIBE is not implemented"),
    (message("INVITE", extra="Require: timer, foo, bar", body=SDP), 420, "Unsupported", "foo, bar",
     "INVITE (Call-ID call-1): Require foo, bar is not supported"),
    (message("INVITE", body=b"hello", content_type="text/plain"), 415, "Accept", "application/sdp",
     "INVITE (Call-ID call-1): INVITE body of type text/plain is not application/sdp"),
    (message("INVITE", body=SDP, extra="Content-Encoding: gzip"), 415, "Accept-Encoding", "identity",
     "INVITE (Call-ID call-1): Content-Encoding 'gzip' is not supported"),
    (message("BYE", to_tag="nosuch"), 481, None, None,
     "BYE (Call-ID call-1): in-dialog BYE matches no dialog"),
    (message("UPDATE"), 481, None, None, "UPDATE (Call-ID call-1): UPDATE outside a dialog"),
    (message("INVITE", extra="Session-Expires: 60", body=SDP), 422, "Min-SE", "90",
     "INVITE (Call-ID call-1): Session-Expires below our Min-SE 90"),
])
def test_refusals(data, status, header, value, description):
    h = Harness()
    events = h.send(data, 0.0)
    (response,) = sent(events)
    assert response.status == status
    if header:
        assert response.headers.get(header) == value
    assert parse_name_addr(response.headers.get("To"), "To").tag is not None
    assert others(events) == [MessageRejected(description=description, source=PEER, status=status)]


def test_parse_errors_answered_when_addressable_silent_otherwise():
    h = Harness()
    events = h.send(message("INVITE").replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia"), 0.0)
    (response,) = sent(events)
    assert (response.status, response.reason) == (505, "SIP version 'SIP/3.0' is not supported")
    assert events[0].destination == PEER
    events = h.send(message("INVITE").replace(b"Contact: <sip:alice@192.0.2.20:5070>", b"Contact: <sip:alice@"), 0.0)
    assert [(r.status, r.reason) for r in sent(events)] == [(400, "unclosed <URI> in Contact")]
    assert others(events) == [MessageRejected(description="INVITE (Call-ID call-1): unclosed <URI> in Contact",
                                              source=PEER, status=400)]
    garbage = h.send(b"\x00\xffnot sip at all\r\n\r\n", 0.0)
    assert garbage == [MessageRejected(description="unparseable message: headers are not UTF-8 (byte 1)",
                                       source=PEER, status=None)]
    no_via = h.send(b"OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\n"
                    b"CSeq: 1 OPTIONS\r\n\r\n", 0.0)
    assert no_via == [MessageRejected(description="unparseable message: missing Via header", source=PEER, status=None)]


def test_response_routing_with_and_without_rport():
    h = Harness()
    events = h.send(message("OPTIONS", via="10.0.0.5:5099"), 0.0, source=("203.0.113.7", 40000))
    assert events[0].destination == ("203.0.113.7", 5099)
    assert sent(events)[0].headers.get("Via") == "SIP/2.0/UDP 10.0.0.5:5099;branch=z9hG4bK-inv1;received=203.0.113.7"
    events = h.send(message("OPTIONS", via="10.0.0.5:5099;rport", branch="z9hG4bK-2"), 0.0,
                    source=("203.0.113.7", 40000))
    assert events[0].destination == ("203.0.113.7", 40000)
    assert sent(events)[0].headers.get("Via") == (
        "SIP/2.0/UDP 10.0.0.5:5099;branch=z9hG4bK-2;received=203.0.113.7;rport=40000")


def test_tcp_responses_fill_rport_and_received_too():
    # RFC 3581 §4 is not limited to UDP: a client behind NAT learns its mapped address.
    h = Harness()
    events = h.send(message("OPTIONS", via="10.0.0.5:5099;rport").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), 0.0,
                    source=("203.0.113.7", 40001), transport="tcp", connection=object())
    assert sent(events)[0].headers.get("Via") == (
        "SIP/2.0/TCP 10.0.0.5:5099;branch=z9hG4bK-inv1;received=203.0.113.7;rport=40001")


def test_tcp_responses_reuse_the_connection():
    h = Harness()
    connection = object()
    events = h.send(message("INVITE", body=SDP), 0.0, transport="tcp", connection=connection)
    assert events[0].transport == "tcp" and events[0].connection is connection
    h.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = h.ua.events()
    assert b"Contact: <sip:eko@192.0.2.10:5060;transport=tcp>" in ok.data and ok.connection is connection


def tls_invite(uri: str = "sip:eko@192.0.2.10:5061") -> bytes:
    return (message("INVITE", body=SDP).replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS")
            .replace(b"INVITE sip:eko@192.0.2.10:5060 ", f"INVITE {uri} ".encode()))


def test_over_tls_the_call_knows_it_and_our_contact_names_the_tls_port():
    h = Harness(tls_port=5061)
    connection = object()
    events = h.send(tls_invite(), 0.0, transport="TLS", connection=connection)
    (trying,), (incoming,) = [e for e in events if isinstance(e, Transmit)], others(events)
    assert (trying.transport, trying.connection) == ("tls", connection)
    assert incoming.transport == "tls" and incoming.secure_signalling
    h.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = h.ua.events()
    assert b"Contact: <sip:eko@192.0.2.10:5061;transport=tls>" in ok.data and ok.connection is connection


def test_signalling_over_udp_or_tcp_is_not_secure():
    for transport in ("udp", "tcp"):
        h = Harness(tls_port=5061)
        (incoming,) = others(h.send(message("INVITE", body=SDP), 0.0, transport=transport, connection=object()))
        assert incoming.transport == transport and not incoming.secure_signalling


def test_a_sips_request_uri_over_tls_gets_a_sips_contact():
    # RFC 3261 §12.1.1: the dialog is secure, and our Contact MUST be a SIPS URI.
    h = Harness(tls_port=5061)
    h.send(tls_invite("sips:eko@192.0.2.10"), 0.0, transport="tls", connection=object())
    h.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = sent(h.ua.events())
    assert ok.headers.get("Contact") == "<sips:eko@192.0.2.10:5061>"


def test_our_bye_over_tls_says_tls_and_the_tls_port_and_reuses_the_connection():
    h = Harness(tls_port=5061)
    connection = object()
    invite = tls_invite().replace(b"Contact: <sip:alice@192.0.2.20:5070>", b"Contact: <sip:alice@192.0.2.20;transport=tls>")
    h.send(invite, 0.0, transport="tls", connection=connection)
    h.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = sent(h.ua.events())
    tag = parse_name_addr(ok.headers.get("To"), "To").tag
    h.send(message("ACK", to_tag=tag, branch="z9hG4bK-ack").replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS"), 0.1,
           transport="tls", connection=connection)
    h.ua.hangup("call-1", 1.0)
    (bye,) = [e for e in h.ua.events() if isinstance(e, Transmit)]
    # The caller's Contact has no port: over TLS that is 5061 (RFC 3263 §4.2).
    assert (bye.destination, bye.transport, bye.connection) == (("192.0.2.20", 5061), "tls", connection)
    request = parse_message_untrusted(bye.data, transport="tls")
    assert request.method == "BYE"
    assert request.headers.get("Via").startswith("SIP/2.0/TLS 192.0.2.10:5061;branch=")


def test_the_tls_port_defaults_to_the_sip_port():
    assert UserAgentSettings(host="192.0.2.10", port=5070).port_for("tls") == 5070
    assert UserAgentSettings(host="192.0.2.10", port=5070, tls_port=5071).port_for("tls") == 5071
    assert UserAgentSettings(host="192.0.2.10", port=5070, tls_port=5071).port_for("tcp") == 5070


def test_record_route_is_copied_and_routes_our_bye():
    h = Harness()
    rr = "Record-Route: <sip:proxy2.example.net;lr>\nRecord-Route: <sip:198.51.100.1:5080;lr;ftag=x>"
    (ok,) = sent(h.call(extra=rr))
    assert ok.headers.get_all("Record-Route") == ["<sip:proxy2.example.net;lr>", "<sip:198.51.100.1:5080;lr;ftag=x>"]
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    h.ua.hangup("call-1", 1.0)
    events = h.ua.events()
    (bye,) = sent(events)
    assert bye.uri == "sip:alice@192.0.2.20:5070"
    assert bye.headers.get_all("Route") == ["<sip:proxy2.example.net;lr>", "<sip:198.51.100.1:5080;lr;ftag=x>"]
    assert events[-1].destination == ("proxy2.example.net", 5060)


def test_max_forwards_zero_is_served_by_a_uas():
    h = Harness()
    events = h.send(message("INVITE", body=SDP).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 0.0)
    assert statuses(events) == [100] and isinstance(events[1], IncomingCall)


def test_merged_request_and_cseq_order():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    merged = h.send(message("INVITE", branch="z9hG4bK-other-path", body=SDP), 0.2)
    assert statuses(merged) == [482]
    h.send(message("INFO", branch="z9hG4bK-i5", cseq=5, to_tag=h.tag), 0.3)
    old = h.send(message("INFO", branch="z9hG4bK-i4", cseq=4, to_tag=h.tag), 0.4)
    assert [(r.status, r.reason) for r in sent(old)] == [(500, "CSeq Out Of Order")]


def test_info_dtmf():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    relay = message("INFO", branch="z9hG4bK-i1", cseq=2, to_tag=h.tag, body=b"Signal=5\r\nDuration=160\r\n",
                    content_type="application/dtmf-relay")
    events = h.send(relay, 1.0)
    assert statuses(events) == [200]
    assert others(events) == [InfoDtmf(call_id="call-1", digit="5", duration_ms=160)]
    star = message("INFO", branch="z9hG4bK-i2", cseq=3, to_tag=h.tag, body=b"Signal= 10\r\n",
                   content_type="application/dtmf-relay")
    assert others(h.send(star, 1.1)) == [InfoDtmf(call_id="call-1", digit="*", duration_ms=None)]
    other = message("INFO", branch="z9hG4bK-i3", cseq=4, to_tag=h.tag, body=b"<xml/>", content_type="application/xml")
    events = h.send(other, 1.2)
    assert statuses(events) == [200] and others(events) == []
    bad = message("INFO", branch="z9hG4bK-i4", cseq=5, to_tag=h.tag, body=b"Signal=Z\r\n",
                  content_type="application/dtmf-relay")
    assert [(r.status, r.reason) for r in sent(h.send(bad, 1.3))] == [
        (400, "bad application/dtmf-relay body: dtmf-relay line 1: Signal 'Z' is not a DTMF key")]


def test_reinvite_with_sdp_then_without():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    hold = message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP + b"a=sendonly\r\n")
    events = h.send(hold, 10.0)
    assert statuses(events) == [100]
    assert others(events) == [SessionModified(call_id="call-1", offer=SDP + b"a=sendonly\r\n")]
    assert h.ua.answer_modification("call-1", ANSWER, 10.1) is True
    (ok,) = sent(h.ua.events())
    assert (ok.status, ok.headers.get("CSeq"), ok.body) == (200, "2 INVITE", ANSWER)
    assert h.send(message("ACK", branch="z9hG4bK-ack2", cseq=2, to_tag=h.tag), 10.2) == []
    bare = message("INVITE", branch="z9hG4bK-re2", cseq=3, to_tag=h.tag)
    assert others(h.send(bare, 20.0)) == [SessionModified(call_id="call-1", offer=None)]
    h.ua.answer_modification("call-1", ANSWER, 20.1)
    h.ua.events()
    ack = message("ACK", branch="z9hG4bK-ack3", cseq=3, to_tag=h.tag, body=SDP)
    assert h.send(ack, 20.2) == [CallConfirmed(call_id="call-1", answer=SDP)]


def test_reinvite_while_one_is_pending_gets_500_and_reject_modification():
    h = Harness()
    h.call()
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 1.0)
    events = h.send(message("INVITE", branch="z9hG4bK-re2", cseq=3, to_tag=h.tag, body=SDP), 1.1)
    (busy,) = sent(events)
    assert busy.status == 500 and 0 <= int(busy.headers.get("Retry-After")) <= 10
    assert h.ua.reject_modification("call-1", 488, 1.2) is True
    assert statuses(h.ua.events()) == [488]
    assert h.ua.reject_modification("call-1", 488, 1.3) is False


def test_update_without_sdp_refreshes_the_session_at_once():
    h = Harness()
    h.call(extra="Supported: timer\nSession-Expires: 120")
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    refresh = message("UPDATE", branch="z9hG4bK-up1", cseq=2, to_tag=h.tag,
                      extra="Supported: timer\nSession-Expires: 120;refresher=uac")
    (ok,) = sent(h.send(refresh, 50.0))
    assert (ok.status, ok.headers.get("Session-Expires"), ok.headers.get("Require")) == (200, "120;refresher=uac", "timer")
    # Expiry is now 50 + 120 - 32: nothing before that.
    timeline = h.run_until(200.0)
    assert [(t, e) for t, e in timeline if not isinstance(e, Transmit)] == [
        (138.0, CallEnded(call_id="call-1", reason=EndReason.SESSION_EXPIRED))]


def test_session_timer_uac_refresher_expiry_bye():
    h = Harness(session_timer=SessionTimerSettings(session_expires=1800, min_se=90))
    (ok,) = sent(h.call(extra="Supported: timer\nSession-Expires: 90\nMin-SE: 90"))
    assert (ok.headers.get("Session-Expires"), ok.headers.get("Require")) == ("90;refresher=uac", "timer")
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    timeline = h.run_until(100.0)
    # RFC 4028 §10: BYE at 90 - min(32, 90/3) = 60 s after the 2xx.
    assert [t for t, e in timeline][:2] == [60.0, 60.0]
    assert others([e for t, e in timeline]) == [CallEnded(call_id="call-1", reason=EndReason.SESSION_EXPIRED)]
    assert statuses([e for t, e in timeline])[0] == "BYE"


def test_session_timer_we_refresh_with_update_when_caller_lacks_timer():
    h = Harness()
    (ok,) = sent(h.call(extra="Allow: INVITE, ACK, BYE, UPDATE"))
    assert ok.headers.get("Session-Expires") == "1800;refresher=uas" and ok.headers.get("Require") is None
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    timeline = h.run_until(900.0)
    (update,) = sent([e for t, e in timeline])
    assert [t for t, e in timeline] == [900.0]
    assert (update.method, update.headers.get("Session-Expires"), update.headers.get("CSeq")) == (
        "UPDATE", "1800;refresher=uac", "1 UPDATE")
    via = update.headers.get("Via")
    ok = (f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {update.headers.get('From')}\r\nTo: {update.headers.get('To')}\r\n"
          f"Call-ID: call-1\r\nCSeq: 1 UPDATE\r\nSession-Expires: 1800;refresher=uac\r\nContent-Length: 0\r\n\r\n")
    assert h.send(ok.encode(), 900.2) == []
    # The next refresh is half an interval after this one.
    assert [t for t, e in h.run_until(1800.3) if not isinstance(e, Transmit) or b"UPDATE" in e.data[:10]] == [1800.2]


def test_no_session_timer_when_nobody_can_refresh():
    h = Harness()
    (ok,) = sent(h.call())
    assert ok.headers.get("Session-Expires") is None


def test_200_ok_stays_lean_for_the_pjsua2_invite():
    import pathlib

    data = (pathlib.Path(__file__).parent / "sip_torture" / "captured_pjsua2_invite.sip").read_bytes()
    h = Harness()
    events = h.send(data, 0.0, source=("127.0.0.1", 5097))
    call_id = events[1].call_id
    h.ua.answer(call_id, ANSWER, 0.0)
    (ok,) = h.ua.events()
    headers = len(ok.data) - len(ANSWER)
    assert headers < 600, ok.data.decode()
    assert ok.destination == ("127.0.0.1", 5097)


def test_invite_without_sdp_gets_our_offer_and_the_ack_answers():
    h = Harness()
    events = h.send(message("INVITE"), 0.0)
    assert events[1].offer is None
    h.ua.answer("call-1", ANSWER, 0.1)
    (ok,) = sent(h.ua.events())
    assert ok.body == ANSWER
    ack = message("ACK", branch="z9hG4bK-ack1", to_tag=first_token(), body=SDP)
    assert h.send(ack, 0.2) == [CallConfirmed(call_id="call-1", answer=SDP)]


def test_error_responses_over_tcp_are_not_retransmitted():
    h = Harness()
    events = h.send(message("INVITE", body=b"x", content_type="text/plain"), 0.0, transport="tcp")
    assert statuses(events) == [415]
    # Over TCP the error response is not retransmitted (§17.2.1: timer G is UDP only).
    assert [t for t, e in h.run_until(100.0)] == []


def confirmed_call(**kwargs) -> Harness:
    h = Harness()
    h.call(**kwargs)
    h.send(message("ACK", branch="z9hG4bK-ack1", to_tag=h.tag), 0.1)
    return h


def test_update_with_sdp_is_a_modification_answered_in_its_200():
    h = confirmed_call()
    update = message("UPDATE", branch="z9hG4bK-up1", cseq=2, to_tag=h.tag, body=SDP)
    events = h.send(update, 5.0)
    assert statuses(events) == [] and others(events) == [SessionModified(call_id="call-1", offer=SDP)]
    h.ua.answer_modification("call-1", ANSWER, 5.1)
    (ok,) = sent(h.ua.events())
    assert (ok.status, ok.headers.get("CSeq"), ok.body, ok.headers.get("Contact")) == (
        200, "2 UPDATE", ANSWER, "<sip:eko@192.0.2.10:5060>")


def test_bye_while_a_reinvite_is_pending_terminates_it_with_487():
    h = confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 1.0)
    events = h.send(message("BYE", branch="z9hG4bK-bye1", cseq=3, to_tag=h.tag), 1.1)
    assert [(m.status, m.headers.get("CSeq")) for m in sent(events)] == [(200, "3 BYE"), (487, "2 INVITE")]
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.REMOTE_BYE)]
    assert h.ua.answer_modification("call-1", ANSWER, 1.2) is False


def test_cancel_of_a_reinvite_keeps_the_call():
    h = confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 1.0)
    events = h.send(message("CANCEL", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag), 1.1)
    assert [(m.status, m.headers.get("CSeq")) for m in sent(events)] == [(200, "2 CANCEL"), (487, "2 INVITE")]
    assert others(events) == []
    assert h.ua.call_ids == ["call-1"]


def test_refresh_answered_481_ends_the_call():
    h = confirmed_call(extra="Allow: INVITE, ACK, BYE, UPDATE")
    (update,) = sent([e for t, e in h.run_until(900.0)])
    gone = (f"SIP/2.0 481 Call/Transaction Does Not Exist\r\nVia: {update.headers.get('Via')}\r\n"
            f"From: {update.headers.get('From')}\r\nTo: {update.headers.get('To')}\r\nCall-ID: call-1\r\n"
            f"CSeq: 1 UPDATE\r\nContent-Length: 0\r\n\r\n").encode()
    events = h.send(gone, 900.1)
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.REFRESH_FAILED)]
    (bye,) = sent(events)
    assert (bye.method, bye.headers.get("CSeq")) == ("BYE", "2 BYE")


def test_reinvite_2xx_without_ack_ends_the_call():
    h = confirmed_call()
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 10.0)
    h.ua.answer_modification("call-1", ANSWER, 10.0)
    h.ua.events()
    ended = [(t, e) for t, e in h.run_until(50.0) if not isinstance(e, Transmit)]
    assert ended == [(42.0, CallEnded(call_id="call-1", reason=EndReason.NO_ACK))]


@pytest.mark.parametrize("settings, message_text", [
    ({"host": ""}, "host must be a host name or address, not ''"),
    ({"host": "h", "t1": 0.5, "t2": 0.1}, r"t2 \(0.1\) must not be below t1 \(0.5\)"),
    ({"host": "h", "user_agent": "a\r\nb"}, "user_agent must be one line"),
])
def test_settings_are_validated_in_the_constructor(settings, message_text):
    with pytest.raises(ValueError, match=message_text):
        UserAgentSettings(**settings)


def test_responses_copy_every_via_and_stamp_only_the_top():
    h = Harness()
    data = message("OPTIONS", via="10.1.1.1:5060").replace(
        b"Max-Forwards", b"Via: SIP/2.0/UDP 10.2.2.2:5080;branch=z9hG4bK-uac, SIP/2.0/TCP 10.3.3.3\r\nMax-Forwards")
    events = h.send(data, 0.0, source=("10.1.1.1", 5060))
    (ok,) = sent(events)
    assert ok.headers.get_all("Via") == [
        "SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK-inv1",
        "SIP/2.0/UDP 10.2.2.2:5080;branch=z9hG4bK-uac",
        "SIP/2.0/TCP 10.3.3.3",
    ]
    assert events[0].destination == ("10.1.1.1", 5060)


def test_unsupported_request_uri_scheme_is_416():
    h = Harness()
    events = h.send(message("INVITE").replace(b"INVITE sip:eko@192.0.2.10:5060", b"INVITE im:eko@example.net"), 0.0)
    assert [(r.status, r.reason) for r in sent(events)] == [(416, "unsupported URI scheme 'im' in Request-URI")]


def test_a_pending_reinvite_gets_487_when_the_session_expires():
    # §15.1.2: requests still pending when the session ends get a final response.
    h = confirmed_call(extra="Supported: timer\nSession-Expires: 90")
    h.send(message("INVITE", branch="z9hG4bK-re1", cseq=2, to_tag=h.tag, body=SDP), 1.0)
    timeline = h.run_until(60.0)
    assert [(t, statuses([e])[0] if isinstance(e, Transmit) else e) for t, e in timeline] == [
        (60.0, 487), (60.0, CallEnded(call_id="call-1", reason=EndReason.SESSION_EXPIRED)), (60.0, "BYE")]
    assert h.ua.answer_modification("call-1", ANSWER, 60.1) is False


def test_timers_overdue_together_fire_in_rfc_order():
    # Called late, past both the 2xx retransmission and the 64·T1 give-up: only the BYE goes.
    h = Harness()
    h.call()
    h.run_until(31.5)
    events = h.tick(32.7)
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.NO_ACK)]
    assert statuses(events) == ["BYE"]


def test_a_via_header_without_a_value_is_dropped_silently():
    h = Harness()
    events = h.send(message("OPTIONS").replace(b"Via: SIP/2.0/UDP 192.0.2.20:5070;rport;branch=z9hG4bK-inv1",
                                               b"Via: ,"), 0.0)
    assert events == [MessageRejected(description="unparseable message: Via header without a value",
                                      source=PEER, status=None)]
