"""Fuzzing the UA core with whole call sequences: bad input never escapes, and the core stays sane.

A fake peer drives one :class:`UserAgent` through calls built from valid messages
whose fields are mutated (call, tags, branch, CSeq, body, extra headers) or damaged
byte by byte, answers the requests the core sends (BYE, UPDATE, REFER, REGISTER)
with any status and any challenge, and lets time pass, firing every deadline as the
shell does. A fake shell reacts to the events the way ``server/server.py`` does
(offer/answer through ``MediaSession``, rejects, hang-ups, transfers, a registration).
After every step:

- nothing raised (the UA promises that bad input never escapes ``receive``, and the
  shell counts any exception from ``handle_timers`` as an internal error);
- every event is of a type ``events.Event`` names; each call's events make sense
  (one ``IncomingCall``, at most one ``CallEnded`` after it, nothing else outside);
- everything transmitted is one SIP message, framed exactly (no header injection, a
  right Content-Length), to a real port; our parser reads all of it, unless it is a
  response that copies (RFC 3261 §8.2.6.2) the headers of a request that did not parse;
- ``next_deadline()`` is None or finite, and after ``handle_timers(now)`` none is
  left at or before ``now`` (the shell's timer loop would spin on it).

At the end the shell hangs every call up, stops the registration, and lets two
hours pass with every peer silent: the core must then hold no call and no
transaction (nothing leaks).
"""

from __future__ import annotations

import math
import random
import typing

import hypothesis
from hypothesis import strategies as st

from eko_rtp.media import sdp
from eko_rtp.media.negotiation import MediaSession
from eko_rtp.sip import events as sip_events
from eko_rtp.sip.admission import Admission, AdmissionSettings
from eko_rtp.sip.digest import DigestCredentials
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer
from eko_rtp.sip.message import Request, Response, parse_message_untrusted
from eko_rtp.sip.registration import RegistrationSettings
from eko_rtp.sip.session_timer import SessionTimerSettings
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

from auth_grammar import challenge_values
from fuzzing import FUZZ
from sdp_grammar import sdp_bodies
from sip_grammar import EXTRA_HEADERS, assemble, messages, mutate, mutations, spell, styles

KNOWN_EVENTS = typing.get_args(sip_events.Event)
CALL_EVENTS = (sip_events.CallConfirmed, sip_events.SessionModified, sip_events.InfoDtmf,
               sip_events.TransferUpdate)
US = "192.0.2.10"
PEERS = [("192.0.2.20", 5070), ("192.0.2.21", 5060)]
CALL_IDS = ["call-1", "call-2"]
OUR_CALL_IDS, ANY_CALL_IDS = st.sampled_from(CALL_IDS), st.sampled_from(CALL_IDS + ["call-x"])
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n" \
      b"a=rtpmap:101 telephone-event/8000\r\n"
# The caller's requests, ACK twice as likely (every answered INVITE wants one); REFER
# and PRACK we do not implement (501).
METHOD_CHOICES = st.sampled_from(["INVITE", "ACK", "ACK", "BYE", "CANCEL", "UPDATE", "INFO", "NOTIFY", "OPTIONS",
                                  "REFER", "PRACK"])
MID_CALL_METHODS = st.sampled_from(["INFO", "INVITE", "UPDATE", "NOTIFY", "OPTIONS", "INFO", "NOTIFY", "BYE"])
NATURAL_BODIES = {"INVITE": "sdp", "UPDATE": "sdp", "INFO": "dtmf", "NOTIFY": "sipfrag"}
BODIES = {
    "sdp": st.one_of(st.just(SDP), sdp_bodies),
    "dtmf": st.sampled_from([(b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay"),
                             (b"Signal=10", "application/dtmf-relay"), (b"#", "application/dtmf"),
                             (b"Signal=x", "application/dtmf-relay"), (b"\xff", "application/dtmf")]),
    "sipfrag": st.sampled_from([(b"SIP/2.0 100 Trying\r\n", "message/sipfrag"), (b"SIP/2.0 200 OK", "message/sipfrag"),
                                (b"SIP/2.0 486 Busy Here\r\n", "message/sipfrag;version=2.0"),
                                (b"garbage", "message/sipfrag"), (b"SIP/2.0 180 Ringing", "text/plain")]),
}
EXTRA_GOOD = {name: strategies[0] for name, strategies in EXTRA_HEADERS.items()}
EXTRA_ANY = {name: st.one_of(*strategies) for name, strategies in EXTRA_HEADERS.items()}
extra_fields = st.lists(st.sampled_from(sorted(EXTRA_HEADERS)), max_size=2)
NOTIFY_HEADERS = st.sampled_from([[("Event", "refer"), ("Subscription-State", "active;expires=60")],
                                  [("Event", "refer;id=1"), ("Subscription-State", "terminated;reason=noresource")],
                                  [("Event", "refer"), ("Subscription-State", "terminated")],
                                  [("Event", "dialog")], []])
STATUSES = st.one_of(st.sampled_from([200, 401, 407, 100, 180, 202, 408, 423, 481, 486, 500, 503, 603]),
                     st.integers(100, 699))
RESPONSE_EXTRAS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["WWW-Authenticate", "Proxy-Authenticate"]), challenge_values),
    st.tuples(st.just("Contact"), st.sampled_from(["<sip:eko@192.0.2.10:5060>;expires=60",
                                                   "<sip:eko@192.0.2.10>;expires=0", "<sip:other@h>;expires=30",
                                                   "<sip:eko@192.0.2.10:5060>;expires=x", "*"])),
    st.tuples(st.sampled_from(["Expires", "Min-Expires", "Retry-After", "Min-SE"]),
              st.sampled_from(["0", "1", "60", "3600", "4294967295", "x", ""])),
    st.tuples(st.just("Session-Expires"), st.sampled_from(["90;refresher=uac", "1800;refresher=uas", "90", "x"])),
), max_size=3)
CSEQ_MOVES = st.sampled_from(["next", "next", "same", "lower", "far"])
VIA_PARAMETERS = st.sampled_from(["", ";rport", ";rport;x=1"])
CONTACTS = st.sampled_from(["<sip:alice@192.0.2.20:5070>", "<sip:alice@192.0.2.20:5070;transport=tcp>",
                            "<sip:alice@[2001:db8::1]>", "<sip:alice@phone.example.org>",
                            "<sip:alice@192.0.2.20:65535>"])
BODY_KINDS = st.sampled_from(["none", "sdp", "sdp", "dtmf", "sipfrag"])
INCOMING_CALL_ACTIONS = st.sampled_from(["answer", "answer", "answer", "reject", "hangup", "later"])
REJECT_STATUSES = st.sampled_from([486, 404, 480, 603])
TRANSFER_TARGETS = st.sampled_from(["sip:tech@192.0.2.30", "sip:queue@example.org;transport=tcp",
                                    "tel:+33612345678"])
SHELL_ACTIONS = st.sampled_from(["answer", "hangup", "transfer", "register", "unregister", "drain", "health"])
STEPS = ["request"] * 6 + ["response"] * 3 + ["time", "time", "shell", "shell", "retransmit", "garbage"]
ADMISSIONS = st.sampled_from([None, None, None, "refuse", "drop", "accept"])
TIME_STEPS = st.sampled_from([0.5, 0.1, 2.0, 4.0, 16.0, 33.0, 61.0, 100.0, 1000.0])


class Peer:
    """What the caller's side knows: its calls' CSeqs and branches, our tags, the requests we sent it."""

    def __init__(self) -> None:
        self.cseq = {call_id: 1 for call_id in CALL_IDS}
        self.invites: dict[str, tuple[str, int] | None] = {call_id: None for call_id in CALL_IDS}  # branch, CSeq
        self.answered: set[str] = set()  # calls whose INVITE got our 2xx, not ACKed yet
        self.established: set[str] = set()  # calls the peer ACKed our 2xx in
        self.branches: dict[str, list[str]] = {call_id: [] for call_id in CALL_IDS}
        self.local_tags: dict[str, list[str]] = {call_id: [] for call_id in CALL_IDS}
        self.our_requests: list[Request] = []
        self.sent: list[tuple[bytes, tuple[str, int], str]] = []
        self.counter = 0

    def learn(self, message: Request | Response) -> None:
        """Note what a message we (the UA) transmitted tells the peer."""
        if isinstance(message, Request):
            self.our_requests = (self.our_requests + [message])[-8:]
            if message.call_id in self.local_tags and message.from_ is not None and message.from_.tag:
                if message.from_.tag not in self.local_tags[message.call_id]:
                    self.local_tags[message.call_id].append(message.from_.tag)
        elif (message.call_id in self.local_tags and message.to is not None and message.to.tag
              and message.cseq is not None and message.cseq.method == "INVITE" and message.status < 300):
            # Our tag, as our provisional or 2xx response to an INVITE gives it.
            tags = self.local_tags[message.call_id]
            if message.to.tag not in tags:
                tags.append(message.to.tag)
            if message.status >= 200:
                self.answered.add(message.call_id)

    def natural_method(self, call_id: str) -> str:
        """What the caller's phone would send next in this call: INVITE, ACK, then mid-call requests."""
        if call_id in self.answered:
            return "ACK"
        if call_id in self.established:
            return "MID-CALL"
        return "INVITE"

    def sent_request(self, call_id: str, method: str) -> None:
        if method == "ACK" and call_id in self.answered:
            self.answered.discard(call_id)
            self.established.add(call_id)
        elif method in ("BYE", "CANCEL"):
            self.answered.discard(call_id)
            self.established.discard(call_id)

    def new_branch(self, call_id: str) -> str:
        self.counter += 1
        branch = f"z9hG4bK-{self.counter}"
        self.branches[call_id].append(branch)
        return branch


@st.composite
def peer_requests(draw, peer: Peer, method: str | None = None, call_id: str | None = None) -> bytes:
    """A request of the caller's, in one of its calls, with fields mutated the way real peers get them wrong.

    ``method`` and ``call_id`` when a scripted flow says which. Every choice's first
    value (where hypothesis starts, and shrinks to) is the usual one.
    """
    if call_id is None:
        call_id = draw(ANY_CALL_IDS if draw(st.integers(0, 9)) == 9 else OUR_CALL_IDS)
    # Mostly what the call's state calls for (so calls get established, modified,
    # transferred), else any method.
    if method is None:
        method = peer.natural_method(call_id) if draw(st.integers(0, 2)) != 2 else "ANY"
    if method == "MID-CALL":
        method = draw(MID_CALL_METHODS)
    elif method == "ANY":
        method = draw(METHOD_CHOICES)
    peer.sent_request(call_id, method)
    tags = peer.local_tags.get(call_id, [])
    invite = peer.invites.get(call_id)
    # To tag: ours (in-dialog), none (initial INVITE, CANCEL), or one we never gave.
    initial = method in ("INVITE", "CANCEL", "OPTIONS") and not (tags and draw(st.integers(0, 3)) == 3)
    if not initial and tags and draw(st.integers(0, 7)) != 7:
        to_tag = draw(st.sampled_from(tags))
    else:
        to_tag = "not-ours" if draw(st.integers(0, 5)) == 5 else None
    if method in ("ACK", "CANCEL") and invite is not None and draw(st.integers(0, 7)) != 7:
        # §9.1, §17.1.1.3: they carry the INVITE's CSeq number; a CANCEL its branch too
        # (an ACK for a 2xx is a transaction of its own, but some peers reuse the branch).
        invite_branch, number = invite
        reuse_branch = method == "CANCEL" or draw(st.integers(0, 3)) == 3
        branch = invite_branch if reuse_branch else peer.new_branch(call_id)
    else:
        # CSeq: the next, the same (a retransmission), or out of order.
        current = peer.cseq.get(call_id, 1)
        move = draw(CSEQ_MOVES)
        number = {"next": current + 1, "same": current, "lower": max(0, current - 1), "far": 2**31 - 1}[move]
        if call_id in peer.cseq and move == "next":
            peer.cseq[call_id] = number
        branches = peer.branches.get(call_id, [])
        if branches and (move == "same" or draw(st.integers(0, 5)) == 5):
            branch = draw(st.sampled_from(branches))  # a retransmission, or a branch reused by mistake
        else:
            branch = peer.new_branch(call_id) if call_id in peer.branches else "z9hG4bK-x"
        if method == "INVITE" and call_id in peer.invites:
            peer.invites[call_id] = (branch, number)
    cseq_method = "INVITE" if method == "ACK" and draw(st.integers(0, 9)) == 9 else method
    fields = [
        ("Via", f"SIP/2.0/UDP 192.0.2.20:5070;branch={branch}" + draw(VIA_PARAMETERS)),
        ("Max-Forwards", "70"),
        ("From", f'"Alice" <sip:alice@example.org>;tag=caller-{call_id}'),
        ("To", "<sip:eko@192.0.2.10>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{number} {cseq_method}"),
        ("Contact", draw(CONTACTS)),
    ]
    # The body the method usually carries (an INVITE's may be absent: offerless), or another.
    kind = NATURAL_BODIES.get(method, "none") if draw(st.integers(0, 3)) != 3 else draw(BODY_KINDS)
    body, content_type = b"", None
    if kind == "sdp":
        body, content_type = draw(BODIES["sdp"]), "application/sdp"
    elif kind != "none":
        body, content_type = draw(BODIES[kind])
    if method == "NOTIFY":
        fields += draw(NOTIFY_HEADERS)
    if content_type:
        fields.append(("Content-Type", content_type))
    for name in draw(extra_fields):
        fields.append((name, draw(EXTRA_ANY[name] if draw(st.integers(0, 3)) == 3 else EXTRA_GOOD[name])))
    data = assemble(f"{method} sip:eko@192.0.2.10:5060 SIP/2.0", spell(fields, draw(styles)), body, "right")
    return mutate(data, draw(mutations)) if draw(st.integers(0, 3)) == 3 else data


@st.composite
def peer_responses(draw, peer: Peer) -> bytes:
    """A response to one of the requests we sent (BYE, UPDATE, REFER, REGISTER), any status, maybe challenged."""
    request = draw(st.sampled_from(peer.our_requests))
    status = draw(STATUSES)
    headers = request.headers
    to = headers.get("To") or ""
    if request.to is not None and request.to.tag is None and status > 100:
        to += ";tag=registrar"
    fields = [("Via", headers.get("Via") or ""), ("From", headers.get("From") or ""), ("To", to),
              ("Call-ID", headers.get("Call-ID") or ""), ("CSeq", headers.get("CSeq") or "")]
    if status in (401, 407) and draw(st.integers(0, 4)) != 4:
        # A challenge (RFC 3261 §22.2, §22.3), the digest client's input.
        fields.append(("WWW-Authenticate" if status == 401 else "Proxy-Authenticate", draw(challenge_values)))
    fields += draw(RESPONSE_EXTRAS)
    data = assemble(f"SIP/2.0 {status} Whatever", spell(fields, draw(styles)), b"", "right")
    return mutate(data, draw(mutations)) if draw(st.integers(0, 4)) == 4 else data


class Shell:
    """The server's reactions to UA events (server/server.py), with the checks of the module docstring."""

    def __init__(self, data: st.DataObject, ua: UserAgent, peer: Peer):
        self.data, self.ua, self.peer = data, ua, peer
        self.media: dict[str, MediaSession] = {}
        self.open_calls: set[str] = set()
        self.offered: dict[str, bytes | None] = {}  # offers of the calls not answered or refused yet
        self.confirmed: set[str] = set()  # calls whose ACK came
        self.input_parsed = True  # whether the message the UA is reacting to parses
        self.unhealthy = False
        self.ports = iter(range(10000, 60000, 2))

    def flush(self, now: float) -> None:
        for _ in range(20):  # answering may produce events, which may be answered...
            batch = self.ua.events()
            if not batch:
                return
            for event in batch:
                self.check(event)
                self.react(event, now)
        raise AssertionError("the UA kept producing events for 20 rounds")

    def check(self, event: object) -> None:
        assert isinstance(event, KNOWN_EVENTS), event
        if isinstance(event, sip_events.Transmit):
            host, port = event.destination
            assert isinstance(host, str) and host and 1 <= port <= 65535, event.destination
            # One message, cut exactly: nothing the peer sent can split it or hide a second.
            framer = StreamFramer()
            assert framer.feed(event.data) == [event.data] and framer.pending == 0, event.data
            if event.data.startswith(b"SIP/2.0 ") and not self.input_parsed:
                assert int(event.data[8:11]) >= 400, event.data  # refused, whatever it copies
                try:
                    self.peer.learn(parse_message_untrusted(event.data, transport=event.transport))
                except SipParseError:
                    pass  # it copies From, To, Call-ID or CSeq that did not parse either
            else:
                self.peer.learn(parse_message_untrusted(event.data, transport=event.transport))
        elif isinstance(event, sip_events.IncomingCall):
            assert event.call_id not in self.open_calls, f"second IncomingCall for {event.call_id}"
            self.open_calls.add(event.call_id)
        elif isinstance(event, sip_events.CallEnded):
            assert event.call_id in self.open_calls, f"CallEnded for {event.call_id} without IncomingCall"
            self.open_calls.discard(event.call_id)
        elif isinstance(event, CALL_EVENTS):
            assert event.call_id in self.open_calls, f"{type(event).__name__} outside call {event.call_id}"

    def react(self, event: object, now: float) -> None:
        ua, draw = self.ua, self.data.draw
        if isinstance(event, sip_events.IncomingCall):
            action = draw(INCOMING_CALL_ACTIONS, label="shell")
            if action == "later":
                self.offered[event.call_id] = event.offer
            elif action == "answer":
                self.answer(event.call_id, event.offer, now)
            elif action == "reject":
                assert ua.reject(event.call_id, draw(REJECT_STATUSES), now)
            elif action == "hangup":
                assert ua.hangup(event.call_id, now)
        elif isinstance(event, sip_events.CallEnded):
            self.media.pop(event.call_id, None)
            self.offered.pop(event.call_id, None)
            self.confirmed.discard(event.call_id)
        elif isinstance(event, sip_events.CallConfirmed):
            self.confirmed.add(event.call_id)
            media = self.media.get(event.call_id)
            if media is not None:
                try:
                    media.ack(event.answer)
                except sdp.SdpError:
                    ua.hangup(event.call_id, now)
        elif isinstance(event, sip_events.SessionModified):
            media = self.media.get(event.call_id)
            if media is None or draw(st.integers(0, 5)) == 5:
                ua.reject_modification(event.call_id, 488, now)
                return
            try:
                negotiated = media.reinvite(event.offer)
            except sdp.SdpError as error:
                ua.reject_modification(event.call_id, error.status, now)
                return
            assert ua.answer_modification(event.call_id, negotiated.body, now)

    def answer(self, call_id: str, offer: bytes | None, now: float) -> None:
        media = MediaSession(local_address=US, local_port=next(self.ports), session_id=1)
        try:
            negotiated = media.invite(offer)
        except sdp.SdpError as error:
            assert self.ua.reject(call_id, error.status, now)
            return
        self.media[call_id] = media
        assert self.ua.answer(call_id, negotiated.body, now)

    def act(self, now: float) -> None:
        """Something the script or the operator does: answer late, hang up, transfer, (un)register."""
        ua, draw = self.ua, self.data.draw
        call_ids = ua.call_ids
        if self.confirmed and draw(st.integers(0, 2)) != 2:
            action, call_ids = "transfer", sorted(self.confirmed)  # what Eko's script does most
        else:
            action = draw(SHELL_ACTIONS)
        if action in ("answer", "hangup", "transfer") and call_ids:
            call_id = draw(st.sampled_from(call_ids))
            if action == "answer" and call_id in self.offered:
                self.answer(call_id, self.offered.pop(call_id), now)
            elif action == "hangup":
                ua.hangup(call_id, now)
            elif action == "transfer":
                ua.transfer(call_id, draw(TRANSFER_TARGETS), now)
        elif action == "register" and ua.registration is None:
            ua.start_registration(RegistrationSettings(registrar="sip:192.0.2.40", aor="sip:eko@example.org",
                                                       contact="sip:eko@192.0.2.10:5060", expires=60),
                                  destination=("192.0.2.40", 5060), transport="udp", now=now)
        elif action == "unregister":
            ua.stop_registration(now)
        elif action == "drain":
            ua.set_accepting(not ua.accepting)
        elif action == "health":
            self.unhealthy = not self.unhealthy
            ua.set_health("no RTP ports" if self.unhealthy else None)


def parses(data: bytes, transport: str) -> bool:
    try:
        parse_message_untrusted(data, transport=transport, max_message_size=8192)
    except SipParseError:
        return False
    return True


def advance(ua: UserAgent, shell: Shell, now: float, until: float, lateness: float = 0.0) -> float:
    """Fire every deadline up to ``until``, ``lateness`` after its time, as the shell's timer loop does."""
    for _ in range(10_000):
        deadline = ua.next_deadline()
        assert deadline is None or math.isfinite(deadline), deadline
        if deadline is None or deadline > until:
            return max(now, until)
        now = max(now, deadline + lateness)
        shell.input_parsed = True  # what the timers send was built from parsed requests
        ua.handle_timers(now)
        after = ua.next_deadline()
        assert after is None or after > now, f"handle_timers({now}) left a deadline at {after}: the shell would spin"
        shell.flush(now)
    raise AssertionError("more than 10 000 timer rounds")


def make_user_agent(seed: int, admission: str | None = None) -> UserAgent:
    """A UA with credentials for our requests, and (``admission``: what strangers get) the
    admission of a server whose only trusted peers are the first caller and the registrar,
    with one call at a time and a small INVITE budget."""
    settings = UserAgentSettings(host=US, max_message_size=8192,
                                 session_timer=SessionTimerSettings(session_expires=120, min_se=90))
    policy = None
    if admission is not None:
        policy = Admission(AdmissionSettings(trusted_networks=("192.0.2.20/32", "192.0.2.40/32"),
                                             untrusted_action=admission, max_calls=2, invite_rate_per_source=0.5,
                                             invite_burst=2))
    return UserAgent(settings, rng=random.Random(seed), admission=policy,
                     credentials=DigestCredentials(username="eko", password="secret"))


class Driver:
    """One UA, its peer and its shell, stepped by hypothesis; every check of the module docstring."""

    def __init__(self, data: st.DataObject):
        self.data = data
        self.ua = make_user_agent(data.draw(st.integers(0, 3), label="seed"), data.draw(ADMISSIONS, label="admission"))
        self.lateness = data.draw(st.sampled_from([0.0, 0.003, 1.5]), label="timer lateness")
        self.peer = Peer()
        self.shell = Shell(data, self.ua, self.peer)
        self.transport = data.draw(st.sampled_from(["udp", "udp", "tcp"]), label="transport")
        self.now = 0.0

    def wait(self, seconds: float) -> None:
        self.now = advance(self.ua, self.shell, self.now, self.now + seconds, self.lateness)

    def act(self) -> None:
        self.shell.act(self.now)
        self.shell.flush(self.now)

    def send(self, raw: bytes, source: tuple[str, int] = PEERS[0], transport: str | None = None) -> None:
        transport = transport or self.transport
        self.peer.sent = (self.peer.sent + [(raw, source, transport)])[-6:]
        self.shell.input_parsed = parses(raw, transport)
        self.ua.receive(raw, source=source, transport=transport, connection=None, now=self.now)
        self.shell.flush(self.now)
        self.shell.input_parsed = True
        deadline = self.ua.next_deadline()
        assert deadline is None or math.isfinite(deadline), deadline

    def step(self, step: str) -> None:
        """One step of the free-form sequence."""
        data, peer = self.data, self.peer
        source = PEERS[1] if data.draw(st.integers(0, 9)) == 9 else PEERS[0]
        transport = self.transport
        if step == "time":
            self.wait(data.draw(TIME_STEPS, label="wait"))
            return
        if step == "shell":
            self.act()
            return
        if step == "request":
            raw = data.draw(peer_requests(peer), label="request")
        elif step == "response" and peer.our_requests:
            raw = data.draw(peer_responses(peer), label="response")
            source = ("192.0.2.40", 5060) if data.draw(st.booleans()) else source
        elif step == "retransmit" and peer.sent:
            raw, source, transport = data.draw(st.sampled_from(peer.sent), label="again")
        else:
            raw = data.draw(messages, label="garbage")
        self.send(raw, source, transport)

    def finish(self) -> None:
        """Hang everything up and let two silent hours pass: nothing may be left behind."""
        ua = self.ua
        for call_id in ua.call_ids:
            ua.hangup(call_id, self.now)
        if ua.registration is not None:
            ua.stop_registration(self.now)
        self.shell.flush(self.now)
        self.wait(7200)
        assert ua.call_ids == [], [(call.call_id, call.state) for call in ua._calls.values()]
        assert not ua._server and not ua._client, (list(ua._server), list(ua._client))
        registration = ua.registration
        assert registration is None or registration.next_deadline() is None, registration.status
        assert ua.next_deadline() is None


@FUZZ
@hypothesis.given(st.data())
def test_call_sequences(data):
    """Free-form: requests mostly as the calls' states call for, responses, time, the shell, garbage."""
    driver = Driver(data)
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        driver.step(data.draw(st.sampled_from(STEPS), label="step"))
    driver.finish()


# A call as Eko's calls go, one step at a time: the caller's requests, the script's
# transfer, the phone's answers to our requests, time passing.
FLOW = ["INVITE", "ACK", "INFO", "UPDATE", "INVITE", "ACK", "transfer", "response", "NOTIFY", "NOTIFY", "INFO",
        "time", "BYE", "response", "time"]
PERTURBATIONS = st.sampled_from(["as is"] * 6 + ["drop", "twice", "mutate", "late", "garbage before", "swap"])


@FUZZ
@hypothesis.given(st.data())
def test_call_flows(data):
    """Scripted: one call's usual flow, each step perhaps dropped, repeated, damaged, delayed or swapped."""
    driver = Driver(data)
    peer, flow = driver.peer, list(FLOW)
    index = 0
    while index < len(flow):
        step, perturbation = flow[index], data.draw(PERTURBATIONS, label="perturbation")
        index += 1
        if perturbation == "drop":
            continue
        if perturbation == "swap" and index < len(flow):
            flow[index - 1], flow[index] = flow[index], step
            step = flow[index - 1]
        if perturbation == "late":
            driver.wait(data.draw(TIME_STEPS, label="wait"))
        if perturbation == "garbage before":
            driver.send(data.draw(messages, label="garbage"))
        for _ in range(2 if perturbation == "twice" else 1):
            if step == "time":
                driver.wait(data.draw(TIME_STEPS, label="wait"))
            elif step == "transfer":
                for call_id in sorted(driver.shell.confirmed):
                    driver.ua.transfer(call_id, "sip:tech@192.0.2.30", driver.now)
                driver.shell.flush(driver.now)
            elif step == "response":
                if peer.our_requests:
                    driver.send(data.draw(peer_responses(peer), label="response"))
            else:
                raw = data.draw(peer_requests(peer, method=step, call_id="call-1"), label=step)
                driver.send(mutate(raw, data.draw(mutations)) if perturbation == "mutate" else raw)
    driver.finish()


@FUZZ
@hypothesis.given(st.lists(st.tuples(st.binary(max_size=300), st.sampled_from(["udp", "tcp"])), max_size=8))
def test_random_bytes(datagrams):
    ua = make_user_agent(0)
    shell = Shell(None, ua, Peer())
    for data, transport in datagrams:
        shell.input_parsed = parses(data, transport)
        ua.receive(data, source=PEERS[0], transport=transport, now=0.0)
        for event in ua.events():
            shell.check(event)
    assert ua.call_ids == []
