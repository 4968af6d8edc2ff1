"""Bad input never escapes UserAgent.receive: mutated call flows under hypothesis."""

from __future__ import annotations

import random

import hypothesis
from hypothesis import strategies as st

from eko_rtp.sip.call_state import AWAITING_ACK, ESTABLISHED, LIVE
from eko_rtp.sip.events import IncomingCall, MessageRejected, SessionModified, Transmit
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

from test_sip_useragent import SDP, message

TAG = f"{random.Random(3).getrandbits(64):016x}"
FLOW = [
    message("INVITE", body=SDP, extra="Supported: timer\nSession-Expires: 90\nRecord-Route: <sip:p@h;lr>"),
    message("CANCEL"),
    message("ACK", branch="z9hG4bK-a", to_tag=TAG),
    message("INVITE", branch="z9hG4bK-re", cseq=2, to_tag=TAG, body=SDP),
    message("UPDATE", branch="z9hG4bK-up", cseq=3, to_tag=TAG, extra="Session-Expires: 100;refresher=uas"),
    message("INFO", branch="z9hG4bK-in", cseq=4, to_tag=TAG, body=b"Signal=1\r\nDuration=100\r\n",
            content_type="application/dtmf-relay"),
    message("OPTIONS", branch="z9hG4bK-op"),
    message("BYE", branch="z9hG4bK-by", cseq=5, to_tag=TAG),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\n"
    b"To: <sip:c@d>;tag=2\r\nCall-ID: call-1\r\nCSeq: 1 BYE\r\n\r\n",
]
def scanned_deadline(ua: UserAgent) -> float | None:
    """The earliest deadline by scanning every transaction and call (what the deadline structure must agree with)."""
    deadlines = [tx.next_deadline() for tx in (*ua._server.values(), *ua._client.values())]
    for call in ua._calls.values():
        # The sub-states of a call exist exactly where its lifecycle state says.
        assert (call.ack is not None) == (call.state in AWAITING_ACK), call.state
        assert call.offer is None or call.state in LIVE, call.state
        if call.ack is not None:
            deadlines += [call.ack.backoff.due, call.ack.give_up_at]
        if call.timer is not None and call.state in LIVE:
            deadlines.append(call.timer.expiry_due(call.refreshed_at))
            if call.timer.we_refresh and call.refresh is None and call.state in ESTABLISHED:
                deadlines.append(call.timer.refresh_due(call.refreshed_at))
    present = [deadline for deadline in deadlines if deadline is not None]
    return min(present) if present else None


MUTATIONS = b" \t\r\n:;,<>\"%@=[]0aZ\x00\xff"


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.data())
def test_mutated_flows_never_raise(data):
    ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(3))
    now = 0.0
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        raw = bytearray(data.draw(st.sampled_from(FLOW), label="message"))
        for _ in range(data.draw(st.integers(0, 4), label="mutations")):
            index = data.draw(st.integers(0, len(raw) - 1))
            raw[index] = data.draw(st.sampled_from(MUTATIONS))
        transport = data.draw(st.sampled_from(["udp", "tcp"]))
        now += data.draw(st.sampled_from([0.0, 0.3, 5.0, 40.0]))
        for _ in range(50):  # fire every deadline up to now, in order, as a shell would
            deadline = ua.next_deadline()
            if deadline is None or deadline > now:
                break
            ua.handle_timers(deadline)
        ua.receive(bytes(raw), source=("192.0.2.20", 5070), transport=transport, now=now)
        for event in ua.events():
            assert isinstance(event, (Transmit, MessageRejected)) or event.call_id
            if isinstance(event, IncomingCall):
                action = data.draw(st.sampled_from(["answer", "reject", "hangup", "none"]))
                if action == "answer":
                    ua.answer(event.call_id, SDP, now)
                elif action == "reject":
                    ua.reject(event.call_id, 486, now)
                elif action == "hangup":
                    ua.hangup(event.call_id, now)
            elif isinstance(event, SessionModified):
                ua.answer_modification(event.call_id, SDP, now)
        ua.events()
        assert ua.next_deadline() == scanned_deadline(ua)
