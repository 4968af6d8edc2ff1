"""Admission, sans-I/O: trust by source address, per-source INVITE rate, the calls cap, on explicit time.

Then the UA core with an admission policy: exact answers to requests from trusted and
untrusted sources, the 503s of overload and of an unhealthy server, and which
P-Asserted-Identity reaches the shell (RFC 3325).
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from eko_rtp.sip.admission import (
    TRUST_VERDICTS_KEPT,
    Admission,
    AdmissionSettings,
    Refusal,
    RefusalReports,
    UntrustedAction,
    Verdict,
    parse_networks,
)
from eko_rtp.sip.events import CallerIdentity, IncomingCall, RequestRefused, Transmit
from eko_rtp.sip.message import parse_message_untrusted
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

LOOPBACK = ["127.0.0.0/8", "::1/128"]
TRUNK = ("192.0.2.20", 5070)  # inside TRUNK_NETWORKS
STRANGER = ("203.0.113.9", 5060)  # outside
TRUNK_NETWORKS = ["192.0.2.0/24", "2001:db8::/32"]
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


def settings(**overrides) -> AdmissionSettings:
    values = {"trusted_networks": TRUNK_NETWORKS, "invite_rate_per_source": 2.0, "invite_burst": 3}
    values.update(overrides)
    return AdmissionSettings(**values)


# ---- trust ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, trusted",
    [
        ("192.0.2.20", True),
        ("192.0.2.255", True),
        ("192.0.3.1", False),
        ("2001:db8::5", True),
        ("[2001:db8::5]", True),  # as a Via or a URI would bracket it
        ("2001:db9::5", False),
        ("::ffff:192.0.2.7", True),  # a dual-stack socket's view of an IPv4 peer
        ("::ffff:203.0.113.9", False),
        ("fe80::1%eth0", False),
        ("trunk.example", False),  # never a name: nothing we could have listed
        ("", False),
    ],
)
def test_trust_is_the_source_address_in_the_trusted_networks(host, trusted):
    assert Admission(settings()).trusted(host) is trusted


def test_a_reload_judges_trust_again():
    admission = Admission(settings())
    assert admission.trusted("192.0.2.20") and not admission.trusted("198.51.100.7")  # remembered now
    admission.reconfigure(settings(trusted_networks=["198.51.100.0/24"]))
    assert not admission.trusted("192.0.2.20") and admission.trusted("198.51.100.7")


def test_the_trust_remembered_is_bounded():
    admission = Admission(settings())
    for number in range(2 * TRUST_VERDICTS_KEPT + 10):  # a spoofed flood from many hosts
        assert not admission.trusted(str(ipaddress.IPv4Address("203.0.0.0") + number))
        assert len(admission._trust) <= TRUST_VERDICTS_KEPT
    assert admission.trusted("192.0.2.20") and not admission.trusted("203.0.113.9")


def test_the_default_trusts_loopback_only():
    admission = Admission(AdmissionSettings(trusted_networks=LOOPBACK))
    assert [admission.trusted(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "10.0.0.1", "::2")] == [
        True, True, True, False, False]


@pytest.mark.parametrize(
    "values, message",
    [
        (["10.1.2.3/8"], "'10.1.2.3/8' has host bits set: write '10.0.0.0/8' (or the address alone)"),
        (["trunk.example"], "'trunk.example' is not a network like 192.0.2.0/24 or 2001:db8::/32"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not a network like 192.0.2.0/24 or 2001:db8::/32"),
        ([24], "expected CIDR strings like '192.0.2.0/24', got 24"),
    ],
)
def test_bad_networks_are_named(values, message):
    with pytest.raises(ValueError) as caught:
        parse_networks(values)
    assert str(caught.value) == message


def test_an_address_alone_is_a_network_of_one():
    assert parse_networks(["192.0.2.4", " ::1 "]) == (ipaddress.ip_network("192.0.2.4/32"),
                                                       ipaddress.ip_network("::1/128"))


# ---- judging: (action, source, request) -> verdict --------------------------------


@pytest.mark.parametrize(
    "action, host, initial_invite, expected",
    [
        ("refuse", "192.0.2.20", True, (Verdict.ADMIT, None)),
        ("refuse", "192.0.2.20", False, (Verdict.ADMIT, None)),
        ("refuse", "203.0.113.9", True, (Verdict.FORBID, Refusal.UNTRUSTED)),
        ("refuse", "203.0.113.9", False, (Verdict.FORBID, Refusal.UNTRUSTED)),
        ("drop", "203.0.113.9", True, (Verdict.DROP, Refusal.UNTRUSTED)),
        ("drop", "203.0.113.9", False, (Verdict.DROP, Refusal.UNTRUSTED)),
        ("drop", "192.0.2.20", True, (Verdict.ADMIT, None)),
        ("accept", "203.0.113.9", True, (Verdict.ADMIT, None)),
        ("accept", "203.0.113.9", False, (Verdict.ADMIT, None)),
    ],
)
def test_first_request_verdicts(action, host, initial_invite, expected):
    admission = Admission(settings(untrusted_action=action))
    assert admission.judge(host, initial_invite=initial_invite, now=0.0) == expected


def test_a_sources_invites_are_a_token_bucket_on_explicit_time():
    admission = Admission(settings())  # burst 3, 2 a second
    table = [
        # (now, expected verdict of an initial INVITE from the trunk)
        (0.0, Verdict.ADMIT), (0.0, Verdict.ADMIT), (0.0, Verdict.ADMIT),  # the burst
        (0.0, Verdict.BUSY),
        (0.25, Verdict.BUSY),  # half a token
        (0.5, Verdict.ADMIT),  # one token after 0.5 s at 2 a second
        (0.5, Verdict.BUSY),
        (10.0, Verdict.ADMIT), (10.0, Verdict.ADMIT), (10.0, Verdict.ADMIT),  # refilled to the burst, no more
        (10.0, Verdict.BUSY),
    ]
    assert [admission.judge("192.0.2.20", initial_invite=True, now=now)[0] for now, _ in table] == [
        verdict for _, verdict in table]
    # Other requests of a trusted source are never counted; another source has its own bucket.
    assert admission.judge("192.0.2.20", initial_invite=False, now=10.0) == (Verdict.ADMIT, None)
    assert admission.judge("192.0.2.21", initial_invite=True, now=10.0) == (Verdict.ADMIT, None)


def test_an_untrusted_source_gets_one_403_per_token_then_silence():
    admission = Admission(settings(invite_burst=2, invite_rate_per_source=1.0))
    verdicts = [admission.judge("203.0.113.9", initial_invite=method == "INVITE", now=now)[0]
                for now, method in [(0.0, "INVITE"), (0.0, "OPTIONS"), (0.0, "INVITE"), (0.5, "INVITE"),
                                    (1.0, "REGISTER")]]
    assert verdicts == [Verdict.FORBID, Verdict.FORBID, Verdict.DROP, Verdict.DROP, Verdict.FORBID]


def test_dropping_keeps_nothing_about_the_source():
    admission = Admission(settings(untrusted_action="drop"))
    for index in range(100):
        admission.judge(f"203.0.113.{index}", initial_invite=True, now=0.0)
    assert admission.sources == 0


def test_the_source_table_is_bounded_and_forgets_idle_sources():
    admission = Admission(settings(max_sources=3, invite_burst=2, invite_rate_per_source=1.0))
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        admission.judge(host, initial_invite=True, now=0.0)
        admission.judge(host, initial_invite=True, now=0.0)  # empty now
    assert admission.sources == 3
    # A fourth source pushes out the least recently seen one, whose bucket starts full again.
    admission.judge("192.0.2.4", initial_invite=True, now=0.0)
    assert admission.sources == 3
    assert admission.judge("192.0.2.1", initial_invite=True, now=0.0) == (Verdict.ADMIT, None)
    assert admission.judge("192.0.2.3", initial_invite=True, now=0.0) == (Verdict.BUSY, Refusal.RATE)
    # Sources whose bucket refilled (idle for burst / rate seconds) are forgotten as new ones come.
    admission.judge("192.0.2.9", initial_invite=True, now=60.0)
    admission.judge("192.0.2.10", initial_invite=True, now=60.0)
    assert admission.sources <= 3


def test_a_clock_going_back_refills_nothing():
    admission = Admission(settings(invite_burst=1))
    assert admission.judge("192.0.2.20", initial_invite=True, now=100.0)[0] is Verdict.ADMIT
    assert admission.judge("192.0.2.20", initial_invite=True, now=50.0)[0] is Verdict.BUSY
    assert admission.judge("192.0.2.20", initial_invite=True, now=100.4)[0] is Verdict.BUSY
    assert admission.judge("192.0.2.20", initial_invite=True, now=100.5)[0] is Verdict.ADMIT


def test_reconfigure_keeps_the_buckets_within_the_new_burst():
    admission = Admission(settings(invite_burst=10))
    admission.judge("192.0.2.20", initial_invite=True, now=0.0)  # 9 left
    admission.reconfigure(settings(invite_burst=2, invite_rate_per_source=0.001))
    verdicts = [admission.judge("192.0.2.20", initial_invite=True, now=0.0)[0] for _ in range(3)]
    assert verdicts == [Verdict.ADMIT, Verdict.ADMIT, Verdict.BUSY]


def test_room_for_calls():
    admission = Admission(settings(max_calls=2))
    assert [admission.room_for_call(active) for active in (0, 1, 2, 3)] == [True, True, False, False]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_calls": 0}, "'max_calls' must be >= 1: 0"),
        ({"invite_burst": 0}, "'invite_burst' must be >= 1: 0"),
        ({"invite_rate_per_source": 0}, "'invite_rate_per_source' must be > 0: 0.0"),
        ({"untrusted_action": "ignore"}, "'ignore' is not a valid UntrustedAction"),
    ],
)
def test_settings_are_validated(overrides, message):
    with pytest.raises(ValueError) as caught:
        settings(**overrides)
    assert str(caught.value) == message


def test_refusals_are_reported_once_per_reason_per_interval():
    reports = RefusalReports(interval=10.0)
    table = [
        (0.0, Refusal.UNTRUSTED, 0), (1.0, Refusal.UNTRUSTED, None), (2.0, Refusal.RATE, 0),
        (5.0, Refusal.UNTRUSTED, None), (10.0, Refusal.UNTRUSTED, 2), (19.9, Refusal.UNTRUSTED, None),
        (30.0, Refusal.UNTRUSTED, 1), (30.0, Refusal.RATE, 0),
    ]
    outcomes = []
    for now, reason, _ in table:
        report = reports.note(reason, now)
        outcomes.append(None if report is None else report.unreported)
    assert outcomes == [expected for _, _, expected in table]


# ---- the UA core with admission --------------------------------------------------------


def request(method: str, *, call_id: str = "call-1", branch: str = "z9hG4bK-1", cseq: int = 1,
            to_tag: str | None = None, extra: str = "", body: bytes = b"", sent_by: str = "192.0.2.20:5070",
            from_user: str = "alice") -> bytes:
    lines = [
        f"{method} sip:eko@192.0.2.10:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by};rport;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@example.org>;tag=caller1",
        "To: <sip:eko@192.0.2.10>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.20:5070>",
        *([line for line in extra.split("\n") if line]),
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Core:
    def __init__(self, **overrides):
        self.ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(7),
                            admission=Admission(settings(**overrides)))

    def send(self, data: bytes, now: float = 0.0, source=TRUNK) -> list:
        self.ua.receive(data, source=source, transport="udp", now=now)
        return self.ua.events()


def answers(events) -> list:
    return [parse_message_untrusted(e.data, transport="udp") for e in events if isinstance(e, Transmit)]


def refusals(events) -> list[RequestRefused]:
    return [e for e in events if isinstance(e, RequestRefused)]


def test_an_untrusted_invite_gets_a_stateless_403_and_never_becomes_a_call():
    core = Core()
    events = core.send(request("INVITE", body=SDP, sent_by="203.0.113.9:5060"), source=STRANGER)
    (forbidden,) = answers(events)
    assert (forbidden.status, forbidden.reason) == (403, "Forbidden")
    assert [e.destination for e in events if isinstance(e, Transmit)] == [STRANGER]
    assert refusals(events) == [RequestRefused(method="INVITE", source=STRANGER, reason="untrusted", status=403,
                                               report=True)]
    assert not any(isinstance(e, IncomingCall) for e in events) and core.ua.call_ids == []
    # Stateless (§8.2.7): no 100 Trying before, no retransmission after, no timer left.
    assert core.ua.next_deadline() is None
    # The retransmission is judged again: the same 403 (while within the rate), counted, not reported.
    again = core.send(request("INVITE", body=SDP, sent_by="203.0.113.9:5060"), 0.5, source=STRANGER)
    assert [a.status for a in answers(again)] == [403]
    assert refusals(again)[0].report is False


@pytest.mark.parametrize("method", ["OPTIONS", "REGISTER", "BYE", "CANCEL", "MESSAGE"])
def test_an_untrusted_source_is_refused_whatever_it_starts(method):
    core = Core()
    events = core.send(request(method, sent_by="203.0.113.9:5060"), source=STRANGER)
    assert [a.status for a in answers(events)] == [403]
    assert [r.reason for r in refusals(events)] == ["untrusted"]


def test_drop_is_silence_even_for_garbage():
    core = Core(untrusted_action="drop")
    for data in (request("INVITE", body=SDP, sent_by="203.0.113.9:5060"), request("OPTIONS"),
                 b"INVITE sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n", b"\x00\x01garbage"):
        events = core.send(data, source=STRANGER)
        assert answers(events) == [] and [r.status for r in refusals(events)] == [None]


def test_garbage_from_an_untrusted_source_is_never_answered():
    core = Core()  # refuse: 403 for requests, but a malformed one gets nothing
    events = core.send(request("OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"), source=STRANGER)
    assert answers(events) == []
    assert refusals(events) == [RequestRefused(method="unparseable message", source=STRANGER, reason="untrusted",
                                               status=None, report=True)]
    # From the trunk, the same message is answered 400 as before.
    events = core.send(request("OPTIONS").replace(b"CSeq: 1", b"CSeq: one"))
    assert [e.data[:12] for e in events if isinstance(e, Transmit)] == [b"SIP/2.0 400 "]


def test_requests_of_a_call_are_served_whatever_their_source():
    core = Core()
    core.send(request("INVITE", body=SDP))
    core.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = answers(core.ua.events())
    tag = ok.to.tag
    # The phone sends its ACK and BYE straight from its own address (no Record-Route).
    phone = ("198.51.100.7", 5060)
    assert [e.__class__.__name__ for e in core.send(request("ACK", to_tag=tag, branch="z9hG4bK-a"), 0.1, phone)] == [
        "CallConfirmed"]
    assert [a.status for a in answers(core.send(request("OPTIONS", to_tag=tag, branch="z9hG4bK-o", cseq=2), 0.2,
                                                phone))] == [200]
    events = core.send(request("BYE", to_tag=tag, branch="z9hG4bK-b", cseq=3), 0.3, phone)
    assert [a.status for a in answers(events)] == [200] and refusals(events) == []
    # An in-dialog request matching no call of ours is refused like any stranger's.
    stray = core.send(request("BYE", to_tag="nosuchtag", branch="z9hG4bK-c", cseq=4), 0.4, phone)
    assert [a.status for a in answers(stray)] == [403]


def test_the_cancel_of_a_trusted_invite_is_served_from_anywhere():
    core = Core()
    core.send(request("INVITE", body=SDP, branch="z9hG4bK-inv"))
    events = core.send(request("CANCEL", branch="z9hG4bK-inv"), 0.1, ("198.51.100.7", 5060))
    assert [a.status for a in answers(events)] == [200, 487]


def test_a_trusted_source_over_its_rate_gets_503_with_retry_after():
    core = Core(invite_burst=2, invite_rate_per_source=1.0)
    statuses = []
    for index in range(3):
        events = core.send(request("INVITE", call_id=f"c{index}", branch=f"z9hG4bK-{index}", body=SDP), 0.0)
        statuses.append([a.status for a in answers(events)])
    assert statuses == [[100], [100], [503]]
    busy = answers(events)[0]
    assert busy.headers.get("Retry-After") == "5"
    assert refusals(events) == [RequestRefused(method="INVITE", source=TRUNK, reason="rate", status=503, report=True)]
    assert core.ua.call_ids == ["c0", "c1"]
    # Its retransmission is absorbed by the transaction: the same 503, no token taken, no new event.
    again = core.send(request("INVITE", call_id="c2", branch="z9hG4bK-2", body=SDP), 0.2)
    assert [a.status for a in answers(again)] == [503] and refusals(again) == []
    # OPTIONS are never rate limited.
    assert [a.status for a in answers(core.send(request("OPTIONS", call_id="o", branch="z9hG4bK-o"), 0.3))] == [200]


def test_max_calls_answers_503_before_any_call_and_options_say_so():
    core = Core(max_calls=1)
    core.send(request("INVITE", call_id="c1", branch="z9hG4bK-1", body=SDP))
    events = core.send(request("INVITE", call_id="c2", branch="z9hG4bK-2", body=SDP), 0.1)
    assert [(a.status, a.headers.get("Retry-After")) for a in answers(events)] == [(503, "5")]
    assert [r.reason for r in refusals(events)] == ["max_calls"] and core.ua.call_ids == ["c1"]
    (probe,) = answers(core.send(request("OPTIONS", call_id="o1", branch="z9hG4bK-o1"), 0.2))
    assert (probe.status, probe.headers.get("Retry-After")) == (503, "5")
    core.ua.reject("c1", 486, 0.3)
    core.ua.events()
    (probe,) = answers(core.send(request("OPTIONS", call_id="o2", branch="z9hG4bK-o2"), 0.4))
    assert probe.status == 200


def test_unhealthy_answers_503_to_new_calls_and_probes_but_not_within_a_call():
    core = Core()
    core.send(request("INVITE", body=SDP))
    core.ua.answer("call-1", ANSWER, 0.0)
    tag = answers(core.ua.events())[0].to.tag
    core.ua.set_health("all 2 RTP port pairs of media.rtp_ports are in use")
    events = core.send(request("INVITE", call_id="c2", branch="z9hG4bK-2", body=SDP), 0.1)
    assert [(a.status, a.headers.get("Retry-After")) for a in answers(events)] == [(503, "5")]
    assert [r.reason for r in refusals(events)] == ["unhealthy"]
    assert [a.status for a in answers(core.send(request("OPTIONS", call_id="o1", branch="z9hG4bK-o1"), 0.2))] == [503]
    in_dialog = core.send(request("OPTIONS", to_tag=tag, branch="z9hG4bK-o2", cseq=2), 0.3)
    assert [a.status for a in answers(in_dialog)] == [200]
    core.ua.set_health(None)
    assert [a.status for a in answers(core.send(request("OPTIONS", call_id="o3", branch="z9hG4bK-o3"), 0.4))] == [200]


def test_unhealthy_without_an_admission_policy_too():
    ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(7))
    ua.set_health("the phrase cache lacks greet")
    ua.receive(request("OPTIONS"), source=STRANGER, transport="udp", now=0.0)
    assert [a.status for a in answers(ua.events())] == [503]


PAI = "P-Asserted-Identity: <sip:+33612345678@trunk.example;user=phone>"


@pytest.mark.parametrize(
    "source, extra, expected",
    [
        # RFC 3325 §5, §8: believed from the Trust Domain only.
        (TRUNK, PAI, ("sip:+33612345678@trunk.example;user=phone", "+33612345678", False)),
        (STRANGER, PAI, (None, None, False)),
        # RFC 3323 §4.2: privacy values that hide who calls, ";"-separated, any case.
        (TRUNK, PAI + "\nPrivacy: id", ("sip:+33612345678@trunk.example;user=phone", "+33612345678", True)),
        (TRUNK, "Privacy: none", (None, None, False)),
        (TRUNK, "Privacy: session", (None, None, False)),
        (TRUNK, "Privacy: header;ID;critical", (None, None, True)),
        (TRUNK, "Privacy: user", (None, None, True)),
        (STRANGER, PAI + "\nPrivacy: id", (None, None, True)),
    ],
)
def test_the_asserted_identity_is_believed_from_trusted_sources_only(source, extra, expected):
    core = Core(untrusted_action="accept")
    events = core.send(request("INVITE", body=SDP, extra=extra, from_user="0611112222"), source=source)
    (incoming,) = [e for e in events if isinstance(e, IncomingCall)]
    asserted_uri, asserted_user, withheld = expected
    assert incoming.caller == CallerIdentity(from_uri="sip:0611112222@example.org", from_user="0611112222",
                                             display_name=None, asserted_uri=asserted_uri,
                                             asserted_user=asserted_user, withheld=withheld)
