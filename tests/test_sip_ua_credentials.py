"""The UA core's requests meet a server that asks who we are: digest answers and registration, explicit time."""

from __future__ import annotations

import hashlib
import random

from eko_rtp.sip.digest import DigestCredentials
from eko_rtp.sip.events import CallEnded, EndReason, RegistrationChanged
from eko_rtp.sip.message import Request, parse_message_untrusted
from eko_rtp.sip.registration import RegistrationSettings
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings
from test_sip_transfer import response_to
from test_sip_useragent import SEED, ANSWER, SDP, message, sent

REGISTRAR = ("192.0.2.30", 5060)
CREDENTIALS = DigestCredentials(username="eko", password="secret")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def fields(header: str) -> dict[str, str]:
    """The parameters of a Digest credentials header, unquoted."""
    assert header.startswith("Digest ")
    out = {}
    for part in header[len("Digest "):].split(", "):
        name, _, value = part.partition("=")
        out[name] = value.strip('"')
    return out


def expected_response(request: Request, header: str) -> str:
    """RFC 7616 §3.4.1 for MD5 and qop=auth, computed here from the request as sent."""
    digest = fields(header)
    ha1 = md5(f"eko:{digest['realm']}:secret")
    ha2 = md5(f"{request.method}:{digest['uri']}")
    return md5(f"{ha1}:{digest['nonce']}:{digest['nc']}:{digest['cnonce']}:auth:{ha2}")


def challenge(request: Request, status: int, *, nonce: str = "n1", stale: bool = False) -> bytes:
    header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    value = f'Digest realm="trunk.example", nonce="{nonce}", qop="auth", algorithm=MD5'
    if stale:
        value += ", stale=true"
    return response_to(request, status, "Unauthorized", extra=f"{header}: {value}")


class Agent:
    def __init__(self, credentials=CREDENTIALS):
        self.ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(SEED), credentials=credentials)

    def send(self, data: bytes, now: float, source=("192.0.2.20", 5070)) -> list:
        self.ua.receive(data, source=source, transport="udp", connection=None, now=now)
        return self.ua.events()

    def tick(self, now: float) -> list:
        self.ua.handle_timers(now)
        return self.ua.events()

    def run_until(self, until: float) -> list[tuple[float, object]]:
        """Fire every timer at its deadline up to ``until``: (time, event) pairs."""
        out = []
        for _ in range(100):
            deadline = self.ua.next_deadline()
            if deadline is None or deadline > until:
                return out
            out += [(deadline, event) for event in self.tick(deadline)]
        raise AssertionError("timers did not settle")


def confirmed(agent: Agent) -> str:
    agent.send(message("INVITE", body=SDP), 0.0)
    agent.ua.answer("call-1", ANSWER, 0.0)
    (ok,) = sent(agent.ua.events())
    tag = ok.to.tag
    agent.send(message("ACK", branch="z9hG4bK-ack1", to_tag=tag), 0.1)
    return tag


def test_bye_challenged_401_is_sent_again_with_credentials_then_ends_the_call():
    agent = Agent()
    confirmed(agent)
    agent.ua.hangup("call-1", 1.0)
    events = agent.ua.events()
    assert CallEnded(call_id="call-1", reason=EndReason.LOCAL_BYE) in events
    (bye,) = sent(events)
    assert "Authorization" not in bye.headers
    (again,) = sent(agent.send(challenge(bye, 401), 1.1))
    assert (again.method, again.cseq.number) == ("BYE", bye.cseq.number + 1)  # §22.2: a new request
    assert again.vias[0].branch != bye.vias[0].branch
    header = again.headers.get("Authorization")
    digest = fields(header)
    assert (digest["username"], digest["realm"], digest["nonce"], digest["uri"], digest["nc"]) == (
        "eko", "trunk.example", "n1", "sip:alice@192.0.2.20:5070", "00000001")
    assert digest["response"] == expected_response(again, header)
    assert agent.send(response_to(again, 200, "OK"), 1.2) == [] and agent.ua.call_ids == []


def test_a_second_challenge_with_the_same_nonce_is_not_answered_again():
    agent = Agent()
    confirmed(agent)
    agent.ua.hangup("call-1", 1.0)
    (bye,) = sent(agent.ua.events())
    (again,) = sent(agent.send(challenge(bye, 401), 1.1))
    # The same nonce again: our credentials were refused; the BYE is over (no loop).
    assert sent(agent.send(challenge(again, 401), 1.2)) == []
    assert agent.ua.call_ids == []


def test_a_stale_nonce_is_answered_with_the_new_one():
    agent = Agent()
    confirmed(agent)
    agent.ua.hangup("call-1", 1.0)
    (bye,) = sent(agent.ua.events())
    (again,) = sent(agent.send(challenge(bye, 401), 1.1))
    (third,) = sent(agent.send(challenge(again, 401, nonce="n2", stale=True), 1.2))
    assert fields(third.headers.get("Authorization"))["nonce"] == "n2"


def test_without_credentials_a_challenge_is_the_final_answer():
    agent = Agent(credentials=None)
    confirmed(agent)
    agent.ua.hangup("call-1", 1.0)
    (bye,) = sent(agent.ua.events())
    assert sent(agent.send(challenge(bye, 407), 1.1)) == []
    assert agent.ua.call_ids == []


def registration(agent: Agent, now: float = 0.0) -> Request:
    agent.ua.start_registration(RegistrationSettings(registrar="sip:trunk.example", aor="sip:eko@trunk.example",
                                                     contact="sip:eko@192.0.2.10:5060", expires=120),
                                destination=REGISTRAR, transport="udp", now=now)
    events = agent.ua.events()
    (register,) = sent(events)
    assert events[0].destination == REGISTRAR
    assert [e.summary for e in events if isinstance(e, RegistrationChanged)] == ["registering to sip:trunk.example"]
    return register


def test_registration_answers_the_challenge_refreshes_with_the_nonce_and_unregisters():
    agent = Agent()
    register = registration(agent)
    assert (register.method, register.uri, register.cseq.number) == ("REGISTER", "sip:trunk.example", 1)
    (authorized,) = sent(agent.send(challenge(register, 401), 0.1, source=REGISTRAR))
    assert authorized.cseq.number == 2 and authorized.call_id == register.call_id
    header = authorized.headers.get("Authorization")
    assert fields(header)["response"] == expected_response(authorized, header)
    events = agent.send(response_to(authorized, 200, "OK", extra="Contact: <sip:eko@192.0.2.10:5060>;expires=60"),
                        0.2, source=REGISTRAR)
    (changed,) = [e for e in events if isinstance(e, RegistrationChanged)]
    assert changed.registered and changed.summary == "registered to sip:trunk.example (expires in 60 s)"
    # The refresh at half the granted minute reuses the nonce: nc 2, no new challenge needed.
    timeline = agent.run_until(30.2)
    refresh, *retransmissions = sent([event for _, event in timeline])
    assert [t for t, _ in timeline][0] == 30.2 and all(bytes(r) == bytes(refresh) for r in retransmissions)
    digest = fields(refresh.headers.get("Authorization"))
    assert (refresh.cseq.number, digest["nonce"], digest["nc"]) == (3, "n1", "00000002")
    agent.send(response_to(refresh, 200, "OK", extra="Contact: <sip:eko@192.0.2.10:5060>;expires=60"), 30.3,
               source=REGISTRAR)
    # Stopping removes the binding (§10.2.2).
    assert agent.ua.stop_registration(40.0)
    (bye_bye,) = sent(agent.ua.events())
    assert bye_bye.headers.get("Expires") == "0" and bye_bye.cseq.number == 4
    events = agent.send(response_to(bye_bye, 200, "OK"), 40.1, source=REGISTRAR)
    assert [e.state for e in events if isinstance(e, RegistrationChanged)] == ["unregistered"]


def test_a_refused_registration_backs_off_and_tries_again():
    agent = Agent(credentials=None)
    register = registration(agent)
    events = agent.send(response_to(register, 403, "Forbidden"), 0.1, source=REGISTRAR)
    (changed,) = [e for e in events if isinstance(e, RegistrationChanged)]
    assert not changed.registered and changed.last_status == 403
    timeline = agent.run_until(5.1)
    assert timeline[0][0] == 5.1  # retry_initial after the 403
    (again,) = sent([event for _, event in timeline])
    assert again.method == "REGISTER" and again.cseq.number == 2


def test_a_registrar_that_never_answers_is_a_failure_after_timer_f():
    agent = Agent(credentials=None)
    registration(agent)
    timeline = agent.run_until(40.0)
    changes = [(t, e) for t, e in timeline if isinstance(e, RegistrationChanged)]
    # Timer F (64·T1 = 32 s) ends the REGISTER: a failure like a 408, then the backoff.
    assert [(t, e.last_status, e.registered) for t, e in changes][0] == (32.0, 408, False)
    assert changes[1][1].state == "registering" and changes[1][0] == 37.0  # retry_initial later


def test_parse_of_what_we_send_is_clean():
    agent = Agent()
    register = registration(agent)
    assert parse_message_untrusted(bytes(register), transport="udp").method == "REGISTER"
