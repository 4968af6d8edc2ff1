"""One call's offer/answer state across INVITE, ACK and re-INVITEs: a table, then the flows."""

from __future__ import annotations

import itertools

import pytest

from eko_rtp.media.negotiation import (
    NO_MEDIA,
    TRANSITIONS,
    MediaSession,
    NegotiationError,
    NegotiationInput,
    NegotiationState,
)
from eko_rtp.media.sdp import Codec, SdpError, parse_sdp_untrusted
from test_sdp import FRENCH_TRUNK_OFFER, crlf

S, I = NegotiationState, NegotiationInput


def session() -> MediaSession:
    return MediaSession(local_address="10.0.0.5", local_port=20000, session_id=4242)


def offer(direction: str = "sendrecv", codecs: str = "8 0 101", address: str = "91.121.0.10",
          port: int = 31000) -> bytes:
    return crlf(f"""
v=0
o=- 1 1 IN IP4 {address}
s=-
c=IN IP4 {address}
t=0 0
m=audio {port} RTP/AVP {codecs}
a=rtpmap:101 telephone-event/8000
a={direction}
""")


def answer_to(our_offer: bytes, *, codec: int = 0, port: int = 32000) -> bytes:
    origin = parse_sdp_untrusted(our_offer).origin
    assert origin.address == "10.0.0.5"
    return crlf(f"""
v=0
o=- 9 9 IN IP4 192.0.2.7
s=-
c=IN IP4 192.0.2.7
t=0 0
m=audio {port} RTP/AVP {codec} 101
a=rtpmap:101 telephone-event/8000
a=sendrecv
""")


# Drive a session into each state by legal inputs.
def in_state(state: NegotiationState) -> MediaSession:
    media = session()
    if state is S.IDLE:
        return media
    if state is S.OFFERED:
        media.invite(None)
        return media
    if state is S.ACTIVE:
        media.invite(offer())
        return media
    media.state = S.ERROR
    return media


def apply(media: MediaSession, event: NegotiationInput):
    if event is I.INVITE_WITH_OFFER:
        return media.invite(offer())
    if event is I.INVITE_WITHOUT_OFFER:
        return media.invite(None)
    if event is I.REINVITE_WITH_OFFER:
        return media.reinvite(offer())
    if event is I.REINVITE_WITHOUT_OFFER:
        return media.reinvite(None)
    if event is I.ACK_WITH_ANSWER:
        return media.ack(answer_to(media.local_body or offer(address="10.0.0.5")))
    return media.ack(None)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(list(S), list(I))))
def test_every_state_and_input(state, event):
    media = in_state(state)
    expected = TRANSITIONS.get((state, event))
    if event is I.ACK_WITH_ANSWER and state is S.ACTIVE:
        expected = S.ACTIVE  # an SDP in an ACK we did not ask for is read as an ACK without one
    if expected is None:
        with pytest.raises(NegotiationError) as caught:
            apply(media, event)
        assert str(caught.value) == f"offer/answer: {_label(state, event)} is not allowed in state {state.value}"
        assert media.state is S.ERROR
    else:
        apply(media, event)
        assert media.state is expected


def _label(state, event):
    if event is I.ACK_WITH_ANSWER and state is not S.OFFERED:
        return I.ACK_WITHOUT_ANSWER.value  # only an offer of ours makes an ACK's SDP an answer
    return event.value


def test_invite_offer_answered_with_the_trunks_first_codec():
    media = session()
    result = media.invite(FRENCH_TRUNK_OFFER)
    assert result.plan.codec == Codec(name="PCMA", payload_type=8) and result.changed
    assert result.plan.remote_rtp == ("91.121.0.10", 31000) and result.plan.send_audio
    assert b"o=- 4242 1 IN IP4 10.0.0.5\r\n" in result.body and media.local_body == result.body


def test_hold_and_resume_keep_the_codec_and_bump_the_version_only_on_change():
    media = session()
    media.invite(offer(codecs="8 0 101"))
    held = media.reinvite(offer("sendonly", codecs="0 8 101"))  # PCMU first now: the codec must stay PCMA
    assert held.plan.codec.name == "PCMA" and not held.plan.send_audio and held.changed
    assert b"o=- 4242 2 IN IP4" in held.body and b"a=recvonly" in held.body
    again = media.reinvite(offer("sendonly", codecs="0 8 101"))  # a session refresh: nothing changes
    assert b"o=- 4242 2 IN IP4" in again.body and not again.changed
    resumed = media.reinvite(offer())
    assert resumed.plan.send_audio and b"o=- 4242 3 IN IP4" in resumed.body


def test_moved_address_moves_the_plan():
    media = session()
    media.invite(offer())
    moved = media.reinvite(offer(address="91.121.0.11", port=31002))
    assert moved.plan.remote_rtp == ("91.121.0.11", 31002) and moved.changed


def test_offerless_invite_then_the_ack_answers():
    media = session()
    ours = media.invite(None)
    assert ours.plan == NO_MEDIA and not ours.changed and media.state is S.OFFERED
    assert b"m=audio 20000 RTP/AVP 0 8 101\r\n" in ours.body
    result = media.ack(answer_to(ours.body, codec=8))
    assert result.plan.codec.name == "PCMA" and result.plan.remote_rtp == ("192.0.2.7", 32000)
    assert media.state is S.ACTIVE and media.ack(None) is None


def test_offerless_reinvite_offers_with_the_next_version():
    media = session()
    media.invite(offer())
    ours = media.reinvite(None)
    assert b"o=- 4242 2 IN IP4 10.0.0.5\r\n" in ours.body and media.state is S.OFFERED
    assert ours.plan.send_audio  # the plan in force until the answer comes


def test_a_bad_reoffer_keeps_the_session_as_it_was():
    media = session()
    first = media.invite(offer())
    with pytest.raises(SdpError) as caught:
        media.reinvite(offer(codecs="18"))
    assert caught.value.status == 488
    assert media.state is S.ACTIVE and media.plan == first.plan and media.local_body == first.body


def test_an_unusable_answer_in_the_ack_is_an_sdp_error():
    media = session()
    ours = media.invite(None)
    with pytest.raises(SdpError):
        media.ack(answer_to(ours.body, codec=18))
