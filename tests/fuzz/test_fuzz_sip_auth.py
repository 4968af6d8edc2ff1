"""Fuzzing what the trunk and the caller's phone tell our own requests: digest challenges, sipfrag, registration.

``parse_challenges_untrusted`` may raise only DigestError, and what the digest client
answers must fit in a header (it echoes realm, nonce and opaque); the sipfrag
parser only SipParseError; the registration state machine, driven by any final
responses and timers as the UA drives it, never raises and never stalls.
"""

from __future__ import annotations

import math

import hypothesis
from hypothesis import strategies as st

from eko_rtp.sip.digest import DigestClient, DigestCredentials, DigestError, parse_challenges_untrusted
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import Via
from eko_rtp.sip.message import Headers, parse_message_untrusted
from eko_rtp.sip.refer import parse_sipfrag_status_untrusted
from eko_rtp.sip.registration import Registration, RegistrationSettings

from auth_grammar import challenge_values
from fuzzing import FUZZ, only_raises
from sip_grammar import mutate, mutations, value_text

header_values = st.one_of(challenge_values, st.builds(lambda v, m: mutate(v.encode(), m).decode("utf-8", "replace"),
                                                      challenge_values, mutations), value_text)


@FUZZ
@hypothesis.given(st.lists(header_values, min_size=1, max_size=3), st.booleans(),
                  st.sampled_from([None, "sip.example.org"]))
def test_digest_challenges_are_answered_or_refused(values, proxy, realm):
    try:
        challenges = parse_challenges_untrusted(values, proxy=proxy)
    except DigestError:
        return
    client = DigestClient(DigestCredentials(username="eko", password="secret", realm=realm), cnonce=lambda: "c0ffee")
    for _ in range(3):  # the same challenges again: a refusal, not a loop
        answer = client.answer(challenges, method="REGISTER", uri="sip:192.0.2.40")
        headers = [answer] if answer else []
        headers += client.preauthorize(method="INVITE", uri="sip:192.0.2.40")
        for name, value in headers:
            # It goes back to the network in a header: one line, which our parser reads.
            assert name == ("Proxy-Authorization" if proxy else "Authorization")
            request = (f"OPTIONS sip:192.0.2.40 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx\r\n"
                       f"From: <sip:eko@h>;tag=1\r\nTo: <sip:eko@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
                       f"{name}: {value}\r\nContent-Length: 0\r\n\r\n").encode()
            assert parse_message_untrusted(request, transport="udp").headers.get(name) == value


sipfrags = st.one_of(
    st.builds(lambda line, rest: (line + rest).encode("utf-8"),
              st.sampled_from(["SIP/2.0 100 Trying", "SIP/2.0 200 OK", "SIP/2.0 486", "sip/2.0 603 Decline",
                               "SIP/2.0 99 x", "SIP/2.0 700 x", "SIP/2.1 200 OK", "\r\nSIP/2.0 180 Ringing",
                               "SIP/2.0 200 é", "SIP/2.0  200 OK", "SIP/2.0 2000 OK"]),
              st.sampled_from(["", "\r\n", "\n", "\r\nContent-Type: x\r\n", "\r", "\x00"])),
    st.binary(max_size=80),
    st.just(b"SIP/2.0 200 OK\r\n" + b"x" * 5000),
)


@FUZZ
@hypothesis.given(sipfrags)
def test_sipfrag(body):
    with only_raises(SipParseError):
        status, reason = parse_sipfrag_status_untrusted(body)
        assert 100 <= status <= 699 and "\r" not in reason and "\n" not in reason and len(reason) <= 80


final_statuses = st.one_of(st.sampled_from([200, 202, 401, 407, 408, 423, 500, 503, 603]), st.integers(200, 699))
response_headers = st.lists(st.one_of(
    st.tuples(st.just("Contact"), st.sampled_from([
        "<sip:eko@192.0.2.10:5060>;expires=60", "<sip:eko@192.0.2.10>;expires=0", "<sip:other@h>;expires=30",
        "<sip:eko@192.0.2.10:5060>;expires=x", "*", "<sip:eko@192.0.2.10:5060>;expires=4294967296",
        "<sip:eko@192.0.2.10:5060;transport=udp>;expires=30, <sip:x@y>", "<sip:eko@192.0.2.10:5061>;expires=10",
        "garbage <", "<sip:eko@192.0.2.10:5060;user=phone>;expires=5"])),
    st.tuples(st.sampled_from(["Expires", "Min-Expires", "Retry-After"]),
              st.sampled_from(["0", "1", "60", "3600", "86401", "4294967295", "99999999999", "x", "", "5 (busy)",
                               "5;duration=1"])),
), max_size=4)


@FUZZ
@hypothesis.given(st.lists(st.one_of(
    st.tuples(st.just("final"), final_statuses, response_headers),
    st.tuples(st.just("timeout"), st.just(408), st.just([])),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 5.0, 29.0, 31.0, 60.0, 3600.0]), st.just([])),
    st.tuples(st.just("stop"), st.just(0), st.just([])),
), max_size=25), st.sampled_from([1, 60, 3600]))
def test_registration_survives_any_responses(steps, expires):
    registration = Registration(
        RegistrationSettings(registrar="sip:192.0.2.40", aor="sip:eko@example.org",
                             contact="sip:eko@192.0.2.10:5060", expires=expires),
        call_id="reg-1@192.0.2.10", from_tag="t1")
    def send_if(due: bool) -> None:
        if due:
            # The UA builds the REGISTER it must send: one our parser reads.
            request = registration.build_request(via=Via(transport="UDP", host="192.0.2.10", port=5060,
                                                         parameters=(("branch", "z9hG4bK1"),)))
            parse_message_untrusted(bytes(request), transport="udp")

    now = 0.0
    send_if(registration.start(now))
    for kind, value, fields in steps:
        if kind in ("final", "timeout"):
            if registration.awaiting_response:  # the UA drops a response with nothing in flight
                headers = Headers(fields) if kind == "final" else None
                send_if(registration.receive_final(status=value, headers=headers, now=now))
        elif kind == "wait":
            until = now + value
            for _ in range(1000):  # fire each deadline at its time, as the UA's timer heap does
                deadline = registration.next_deadline()
                assert deadline is None or math.isfinite(deadline)
                if deadline is None or deadline > until:
                    break
                now = max(now, deadline)
                send_if(registration.handle_timer(now))
                after = registration.next_deadline()
                assert after is None or after > now, "a timer that stays due would spin the UA"
            now = max(now, until)
        else:
            send_if(registration.stop(now))
        status = registration.status
        assert status.state.value != "error", status
        assert registration.describe(now)
        assert status.requested >= 1 and (status.interval is None or status.interval >= 0)
