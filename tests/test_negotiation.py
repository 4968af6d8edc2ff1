"""One call's offer/answer state across INVITE, ACK and re-INVITEs: a table, then the flows."""

from __future__ import annotations

import base64
import itertools

import pytest

from eko_rtp.media import sdes
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


# -- SRTP with SDES keys (issue 19) ---------------------------------------------------

AES_80 = sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80
GCM = sdes.CryptoSuite.AEAD_AES_128_GCM
LAB = sdes.SrtpPolicy(mode=sdes.SrtpMode.OPTIONAL)


def srtp_session(policy: sdes.SrtpPolicy = LAB, signalling: str = "tls") -> MediaSession:
    return MediaSession(local_address="10.0.0.5", local_port=20000, session_id=4242, srtp=policy,
                        signalling=signalling)


def secure_offer(crypto: sdes.CryptoOffer, direction: str = "sendrecv", profile: str = "RTP/SAVP") -> bytes:
    lines = "\n".join(crypto.lines)
    return offer(direction).replace(b"RTP/AVP", profile.encode()).replace(
        f"a={direction}".encode(), crlf(f"{lines}\na={direction}").rstrip(b"\r\n"))


def crypto_lines(body: bytes) -> list[str]:
    return [line for line in body.decode().split("\r\n") if line.startswith("a=crypto:")]


def test_a_savp_offer_is_answered_savp_with_one_crypto_line_of_our_preferred_suite():
    theirs = sdes.make_offer(preference=(AES_80, GCM))  # their order: ours puts GCM first
    result = srtp_session().invite(secure_offer(theirs))
    assert b"m=audio 20000 RTP/SAVP 8 101\r\n" in result.body
    [line] = crypto_lines(result.body)
    assert line.startswith("a=crypto:2 AEAD_AES_128_GCM inline:")
    keys = result.plan.srtp_keys
    assert keys.suite is GCM and keys.receive_master == theirs.attributes[1].master
    assert line == f"a=crypto:{sdes.format_crypto(tag=2, suite=GCM, master=keys.send_master)}"


def test_the_suite_preference_is_the_policys():
    theirs = sdes.make_offer(preference=(GCM, AES_80))
    policy = sdes.SrtpPolicy(preference=(AES_80,))
    result = srtp_session(policy).invite(secure_offer(theirs))
    assert result.plan.srtp_keys.suite is AES_80 and crypto_lines(result.body)[0].startswith("a=crypto:2 ")


def test_a_clear_offer_stays_clear_when_srtp_is_optional():
    result = srtp_session().invite(offer())
    assert b"RTP/AVP 8 101" in result.body and result.plan.srtp_keys is None and not crypto_lines(result.body)


@pytest.mark.parametrize(("mode", "body", "message"), [
    (sdes.SrtpMode.OFF, "secure", "the offer's audio is RTP/SAVP (SRTP) and media.srtp is off"),
    (sdes.SrtpMode.REQUIRED, "clear", "media.srtp is required: the offer has no active RTP/SAVP audio stream"),
])
def test_the_mode_refuses_the_other_profile_with_488_saying_why(mode, body, message):
    media = srtp_session(sdes.SrtpPolicy(mode=mode))
    sent = secure_offer(sdes.make_offer()) if body == "secure" else offer()
    with pytest.raises(SdpError) as caught:
        media.invite(sent)
    assert (caught.value.status, str(caught.value)) == (488, message)
    assert media.state is S.IDLE


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_keys_over_insecure_signalling_are_refused_unless_allowed(transport):
    with pytest.raises(SdpError) as caught:
        srtp_session(signalling=transport).invite(secure_offer(sdes.make_offer()))
    assert (caught.value.status, str(caught.value)) == (
        488, f"SDES keys over {transport.upper()} refused (media.srtp_over_insecure_signalling is false): "
             "a=crypto keys travel only over TLS")
    allowed = sdes.SrtpPolicy(insecure_signalling=True)
    assert srtp_session(allowed, signalling=transport).invite(secure_offer(sdes.make_offer())).plan.srtp_keys


def test_over_insecure_signalling_a_clear_stream_beside_the_secure_one_is_taken():
    both = secure_offer(sdes.make_offer()) + b"m=audio 31002 RTP/AVP 0\r\n"
    result = srtp_session(signalling="udp").invite(both)
    assert result.plan.srtp_keys is None
    assert b"m=audio 0 RTP/SAVP 8\r\n" in result.body and b"m=audio 20000 RTP/AVP 0\r\n" in result.body


def test_no_supported_suite_is_488_with_every_reason():
    offered = secure_offer(sdes.make_offer(preference=(sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_32,)))
    with pytest.raises(SdpError) as caught:
        srtp_session(sdes.SrtpPolicy(preference=(GCM,))).invite(offered)
    assert (caught.value.status, str(caught.value)) == (
        488, "SDP line 6: no offered crypto suite is supported: tag 1: crypto suite AES_CM_128_HMAC_SHA1_32 is not "
             "in our preference")


def test_savpf_is_not_taken():
    with pytest.raises(SdpError) as caught:
        srtp_session().invite(secure_offer(sdes.make_offer(), profile="RTP/SAVPF"))
    assert str(caught.value) == "the offer has no active RTP/AVP or RTP/SAVP audio stream (m=audio with a non-zero port)"


def test_hold_and_resume_keep_the_keys_and_the_answer():
    theirs = sdes.make_offer()
    media = srtp_session()
    first = media.invite(secure_offer(theirs))
    held = media.reinvite(secure_offer(theirs, "sendonly"))
    resumed = media.reinvite(secure_offer(theirs))
    assert crypto_lines(first.body) == crypto_lines(held.body) == crypto_lines(resumed.body)
    assert first.plan.srtp_keys == held.plan.srtp_keys == resumed.plan.srtp_keys
    assert b"o=- 4242 3 IN IP4" in resumed.body
    rekeyed = media.reinvite(secure_offer(sdes.make_offer()))  # their new key: our new key too
    assert rekeyed.plan.srtp_keys.send_master != first.plan.srtp_keys.send_master and rekeyed.changed


def test_an_encrypted_call_is_not_turned_clear_by_a_reoffer():
    media = srtp_session()
    first = media.invite(secure_offer(sdes.make_offer()))
    with pytest.raises(SdpError) as caught:
        media.reinvite(offer())
    assert str(caught.value) == ("the call is encrypted (SRTP): a re-offer without an active RTP/SAVP audio stream"
                                 " is refused")
    assert media.plan == first.plan and media.state is S.ACTIVE


def answer_with_crypto(our_offer: bytes, line: str) -> bytes:
    return answer_to(our_offer).replace(b"RTP/AVP", b"RTP/SAVP").replace(b"a=sendrecv", crlf(f"{line}\na=sendrecv")
                                                                         .rstrip(b"\r\n"))


def test_we_offer_savp_when_required_and_take_the_acks_answer():
    media = srtp_session(sdes.SrtpPolicy(mode=sdes.SrtpMode.REQUIRED))
    ours = media.invite(None)
    assert b"m=audio 20000 RTP/SAVP 0 8 101\r\n" in ours.body
    assert [line.split()[1] for line in crypto_lines(ours.body)] == [suite.value for suite in sdes.DEFAULT_PREFERENCE]
    their_master = bytes(range(30))
    result = media.ack(answer_with_crypto(ours.body, f"a=crypto:{sdes.format_crypto(tag=2, suite=AES_80, master=their_master)}"))
    keys = result.plan.srtp_keys
    assert keys.suite is AES_80 and keys.receive_master == their_master
    assert keys.send_master == media_offer_master(ours.body, 2)


def media_offer_master(body: bytes, tag: int) -> bytes:
    line = next(line for line in crypto_lines(body) if line.startswith(f"a=crypto:{tag} "))
    return base64.b64decode(line.split("inline:")[1])


def test_an_encrypted_call_offers_savp_again_and_a_clear_answer_is_refused():
    media = srtp_session()
    media.invite(secure_offer(sdes.make_offer()))
    ours = media.reinvite(None)
    assert b"RTP/SAVP" in ours.body and len(crypto_lines(ours.body)) == 3
    with pytest.raises(SdpError) as caught:
        media.ack(answer_to(ours.body))
    assert caught.value.status == 488


def test_we_offer_no_keys_over_insecure_signalling():
    media = srtp_session(sdes.SrtpPolicy(mode=sdes.SrtpMode.REQUIRED), signalling="udp")
    with pytest.raises(SdpError) as caught:
        media.invite(None)
    assert caught.value.status == 488 and "SDES keys over UDP refused" in str(caught.value)
    assert media.state is S.IDLE
