"""SDP parsing and offer/answer: tables of offers as real peers send them."""

from __future__ import annotations

import os
import random

import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.media.sdp import (
    Codec,
    Direction,
    MediaPlan,
    RtpMap,
    SdpError,
    SdpOrigin,
    apply_answer,
    build_offer,
    negotiate_answer,
    negotiate_reanswer,
    parse_sdp_untrusted,
)

ORIGIN = SdpOrigin(session_id=4242, version=1, address="10.0.0.5")
LOCAL = {"local_address": "10.0.0.5", "local_port": 20000, "origin": ORIGIN}


def test_under_pure_python_every_body_is_parsed_in_python():
    """tests/test_stream.py runs this file again with EKO_RTP_PURE_PYTHON=1: then these
    tests are the Python parser's, without the compiled one of media/_sdp.c."""
    from eko_rtp.media import sdp

    if not os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("the compiled parse, when built, is compared with Python in tests/test_sdp_scan.py")
    assert sdp._parse is None and sdp.PARSE == "python"


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


# Captured from pjsua2 2.15.1 (makeCall with default settings, null audio device):
# speex first, PCMU after GSM, telephone-event at 16k, 8k (121) and 32k, a=rtcp.
PJSUA2_OFFER = crlf("""
v=0
o=- 4004596915 4004596915 IN IP4 192.0.2.2
s=pjmedia
b=AS:84
t=0 0
a=X-nat:0
m=audio 4000 RTP/AVP 96 97 98 99 3 0 8 9 120 121 122
c=IN IP4 192.0.2.2
b=TIAS:64000
a=rtcp:4001 IN IP4 192.0.2.2
a=sendrecv
a=rtpmap:96 speex/16000
a=rtpmap:97 speex/8000
a=rtpmap:98 speex/32000
a=rtpmap:99 iLBC/8000
a=fmtp:99 mode=30
a=rtpmap:3 GSM/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:120 telephone-event/16000
a=fmtp:120 0-16
a=rtpmap:121 telephone-event/8000
a=fmtp:121 0-16
a=rtpmap:122 telephone-event/32000
a=fmtp:122 0-16
a=ssrc:1101808991 cname:38e99b916def5cf8
""")

# Captured from sipp's built-in uac scenario (sipp -sn uac): PCMU only. sipp ends
# lines with CRLF; this copy uses bare LF to show those are tolerated too.
SIPP_OFFER = b"""v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

FRENCH_TRUNK_OFFER = crlf("""
v=0
o=- 1700000000 1700000001 IN IP4 91.121.0.10
s=-
c=IN IP4 91.121.0.10
t=0 0
m=audio 31000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=maxptime:40
a=rtcp-mux
a=sendrecv
""")


def test_parse_pjsua2_offer():
    offer = parse_sdp_untrusted(PJSUA2_OFFER)
    assert offer.origin == SdpOrigin(session_id=4004596915, version=4004596915, address="192.0.2.2")
    (audio,) = offer.media
    assert (audio.media, audio.port, audio.protocol) == ("audio", 4000, "RTP/AVP")
    assert audio.formats == ("96", "97", "98", "99", "3", "0", "8", "9", "120", "121", "122")
    assert audio.connection_address == "192.0.2.2"
    assert (audio.rtcp_port, audio.rtcp_address, audio.rtcp_mux) == (4001, "192.0.2.2", False)
    assert audio.fmtps == {99: "mode=30", 120: "0-16", 121: "0-16", 122: "0-16"}
    assert audio.direction is Direction.SENDRECV
    assert audio.rtpmap(121) == RtpMap(payload_type=121, encoding="telephone-event", clock_rate=8000)
    assert audio.line == 7


def test_answer_pjsua2_offer():
    plan, body = negotiate_answer(parse_sdp_untrusted(PJSUA2_OFFER), **LOCAL)
    assert plan == MediaPlan(
        codec=Codec(name="PCMU", payload_type=0),
        telephone_event_payload_type=121,
        remote_rtp=("192.0.2.2", 4000),
        remote_rtcp=("192.0.2.2", 4001),
        rtcp_mux=False,
        send_audio=True,
        receive_audio=True,
    )
    assert body == crlf("""
v=0
o=- 4242 1 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 20000 RTP/AVP 0 121
a=rtpmap:0 PCMU/8000
a=rtpmap:121 telephone-event/8000
a=fmtp:121 0-16
a=ptime:20
a=sendrecv
""")


def test_answer_sipp_offer_without_telephone_event():
    plan, body = negotiate_answer(parse_sdp_untrusted(SIPP_OFFER), **LOCAL)
    assert plan.codec == Codec(name="PCMU", payload_type=0)
    assert plan.telephone_event_payload_type is None
    assert (plan.remote_rtp, plan.remote_rtcp) == (("127.0.0.1", 6000), ("127.0.0.1", 6001))
    assert b"m=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n" in body
    assert b"telephone-event" not in body


def test_answer_french_trunk_takes_pcma_first_and_echoes_rtcp_mux():
    plan, body = negotiate_answer(parse_sdp_untrusted(FRENCH_TRUNK_OFFER), **LOCAL)
    assert plan.codec == Codec(name="PCMA", payload_type=8)
    assert plan.rtcp_mux is True
    assert plan.remote_rtp == plan.remote_rtcp == ("91.121.0.10", 31000)
    assert body.endswith(
        b"m=audio 20000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-15\r\na=ptime:20\r\na=rtcp-mux\r\na=sendrecv\r\n"
    )
    assert len(body) < 300


@pytest.mark.parametrize(
    ("offer", "preferred", "expected"),
    [
        (FRENCH_TRUNK_OFFER, "PCMU", Codec(name="PCMU", payload_type=0)),
        (FRENCH_TRUNK_OFFER, "PCMA", Codec(name="PCMA", payload_type=8)),
        (PJSUA2_OFFER, "PCMA", Codec(name="PCMA", payload_type=8)),
        (SIPP_OFFER, "PCMA", Codec(name="PCMU", payload_type=0)),  # not offered: fall back
    ],
)
def test_preferred_codec(offer, preferred, expected):
    plan, _ = negotiate_answer(parse_sdp_untrusted(offer), preferred_codec=preferred, **LOCAL)
    assert plan.codec == expected


def _with(offer: bytes, old: bytes, new: bytes) -> bytes:
    assert old in offer
    return offer.replace(old, new)


@pytest.mark.parametrize(
    ("offer", "answer_direction", "send_audio", "receive_audio", "remote_rtp"),
    [
        (_with(SIPP_OFFER, b"a=rtpmap:0 PCMU/8000\n", b"a=rtpmap:0 PCMU/8000\na=sendonly\n"), "recvonly", False, True, ("127.0.0.1", 6000)),
        (_with(SIPP_OFFER, b"a=rtpmap:0 PCMU/8000\n", b"a=rtpmap:0 PCMU/8000\na=recvonly\n"), "sendonly", True, False, ("127.0.0.1", 6000)),
        (_with(SIPP_OFFER, b"a=rtpmap:0 PCMU/8000\n", b"a=rtpmap:0 PCMU/8000\na=inactive\n"), "inactive", False, False, ("127.0.0.1", 6000)),
        # Session-level direction, overridden by none at media level.
        (_with(SIPP_OFFER, b"t=0 0\n", b"t=0 0\na=sendonly\n"), "recvonly", False, True, ("127.0.0.1", 6000)),
        # Media level wins over session level.
        (_with(SIPP_OFFER, b"t=0 0\nm=audio 6000 RTP/AVP 0\n", b"t=0 0\na=inactive\nm=audio 6000 RTP/AVP 0\na=sendrecv\n"), "sendrecv", True, True, ("127.0.0.1", 6000)),
        # RFC 2543 hold: c=0.0.0.0 with sendrecv.
        (_with(SIPP_OFFER, b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0"), "recvonly", False, True, None),
        # Resume.
        (SIPP_OFFER, "sendrecv", True, True, ("127.0.0.1", 6000)),
    ],
)
def test_hold_directions(offer, answer_direction, send_audio, receive_audio, remote_rtp):
    plan, body = negotiate_answer(parse_sdp_untrusted(offer), **LOCAL)
    assert (plan.send_audio, plan.receive_audio, plan.remote_rtp) == (send_audio, receive_audio, remote_rtp)
    assert body.endswith(f"a={answer_direction}\r\n".encode())


def test_other_media_lines_rejected_in_order():
    offer = crlf("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=video 5002 RTP/AVP 31
m=audio 5000 RTP/SAVP 0
m=audio 5004 RTP/AVP 0
m=image 5006 udptl t38
""")
    plan, body = negotiate_answer(parse_sdp_untrusted(offer), **LOCAL)
    assert plan.remote_rtp == ("192.0.2.1", 5004)
    assert body.split(b"t=0 0\r\n")[1] == crlf("""
m=video 0 RTP/AVP 31
m=audio 0 RTP/SAVP 0
m=audio 20000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=ptime:20
a=sendrecv
m=image 0 udptl t38
""")


def test_media_level_connection_and_dynamic_pcmu():
    offer = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 7000 RTP/AVP 98\nc=IN IP4 198.51.100.7\na=rtpmap:98 pcmu/8000\n"
    plan, body = negotiate_answer(parse_sdp_untrusted(offer), **LOCAL)
    assert plan.codec == Codec(name="PCMU", payload_type=98)
    assert plan.remote_rtp == ("198.51.100.7", 7000)
    assert b"m=audio 20000 RTP/AVP 98\r\na=rtpmap:98 PCMU/8000\r\n" in body


def test_no_common_codec_is_488():
    offer = _with(SIPP_OFFER, b"RTP/AVP 0\na=rtpmap:0 PCMU/8000", b"RTP/AVP 18 9\na=rtpmap:18 G729/8000")
    with pytest.raises(SdpError) as caught:
        negotiate_answer(parse_sdp_untrusted(offer), **LOCAL)
    assert (caught.value.status, caught.value.warning) == (488, 305)  # RFC 3261 §20.43: incompatible media format
    assert str(caught.value) == (
        "SDP line 6: no codec in common: offered payload types 18 9, we accept PCMU (0) or PCMA (8) at 8000 Hz"
    )


def test_no_audio_stream_is_488():
    with pytest.raises(SdpError) as caught:
        negotiate_answer(parse_sdp_untrusted(b"v=0\nc=IN IP4 1.2.3.4\nm=audio 0 RTP/AVP 0\n"), **LOCAL)
    assert (caught.value.status, caught.value.warning, str(caught.value)) == (
        488, 399,
        "the offer has no active RTP/AVP audio stream (m=audio with a non-zero port)",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "SDP body is empty"),
        (b"\r\n\r\n", "SDP body is empty"),
        (b"hello world", "SDP line 1 ('hello world'): expected <type>=<value>"),
        (b"v=1\r\n", "SDP line 1 ('v=1'): an SDP body must start with v=0"),
        (b"o=- 1 1 IN IP4 a\r\nv=0\r\n", "SDP line 1 ('o=- 1 1 IN IP4 a'): an SDP body must start with v=0"),
        (b"v=0\r\nm=audio\r\n", "SDP line 2 ('m=audio'): expected m=<media> <port> <protocol> <format> ..."),
        (b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", "SDP line 2 ('m=audio 70000 RTP/AVP 0'): port '70000' is not a number in 0..65535"),
        (b"v=0\r\nc=IN IP4\r\n", "SDP line 2 ('c=IN IP4'): expected c=IN IP4 <address> or c=IN IP6 <address>"),
        (b"v=0\r\no=- x 1 IN IP4 h\r\n", "SDP line 2 ('o=- x 1 IN IP4 h'): session id 'x' is not a number in 0..18446744073709551615"),
        (b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n", "SDP line 3 ('a=rtpmap:0 PCMU'): expected a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]"),
        (b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:abc\r\n", "SDP line 3 ('a=rtcp:abc'): RTCP port 'abc' is not a number in 0..65535"),
        (b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=ptime:\xff\r\n", "SDP line 3 is not UTF-8 text"),
        (b"v=0\r\n" + b"a=x\r\n" * 4000, "SDP body of 20005 octets exceeds the 16384-octet limit"),
    ],
)
def test_garbage_is_400_naming_the_line(body, message):
    with pytest.raises(SdpError) as caught:
        parse_sdp_untrusted(body)
    assert (caught.value.status, str(caught.value)) == (400, message)


def test_missing_connection_is_400():
    with pytest.raises(SdpError) as caught:
        negotiate_answer(parse_sdp_untrusted(b"v=0\nt=0 0\nm=audio 4000 RTP/AVP 0\n"), **LOCAL)
    assert (caught.value.status, str(caught.value)) == (
        400,
        "SDP line 3: m=audio has no c= line, neither in it nor at session level",
    )


def test_rtcp_attribute_without_address_uses_connection():
    offer = _with(SIPP_OFFER, b"a=rtpmap:0 PCMU/8000\n", b"a=rtpmap:0 PCMU/8000\na=rtcp:6101\n")
    plan, _ = negotiate_answer(parse_sdp_untrusted(offer), **LOCAL)
    assert plan.remote_rtcp == ("127.0.0.1", 6101)


def test_ipv6_answer():
    plan, body = negotiate_answer(
        parse_sdp_untrusted(b"v=0\nc=IN IP6 2001:db8::1\nm=audio 4000 RTP/AVP 8\n"),
        local_address="2001:db8::5",
        local_port=30000,
        origin=SdpOrigin(session_id=9, version=3, address="2001:db8::5"),
    )
    assert plan.remote_rtp == ("2001:db8::1", 4000)
    assert b"o=- 9 3 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\n" in body


def test_reanswer_bumps_version_only_on_change():
    offer = parse_sdp_untrusted(SIPP_OFFER)
    _, first = negotiate_answer(offer, **LOCAL)
    plan, same, origin = negotiate_reanswer(offer, previous_answer=first, **LOCAL)
    assert (same, origin) == (first, ORIGIN)
    held = parse_sdp_untrusted(_with(SIPP_OFFER, b"t=0 0\n", b"t=0 0\na=sendonly\n"))
    plan, changed, origin = negotiate_reanswer(held, previous_answer=first, **LOCAL)
    assert origin == SdpOrigin(session_id=4242, version=2, address="10.0.0.5")
    assert changed == first.replace(b"4242 1 IN", b"4242 2 IN").replace(b"a=sendrecv", b"a=recvonly")
    assert plan.send_audio is False


def test_build_offer_and_apply_answer_round_trip():
    body = build_offer(**LOCAL)
    assert body == crlf("""
v=0
o=- 4242 1 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 20000 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")
    # The peer answers our offer with our own machinery, from its side.
    peer_origin = SdpOrigin(session_id=7, version=1, address="10.0.0.9")
    peer_plan, answer = negotiate_answer(
        parse_sdp_untrusted(body), local_address="10.0.0.9", local_port=40000, origin=peer_origin, preferred_codec="PCMA"
    )
    assert peer_plan.remote_rtp == ("10.0.0.5", 20000)
    plan = apply_answer(parse_sdp_untrusted(answer))
    assert plan == MediaPlan(
        codec=Codec(name="PCMA", payload_type=8),
        telephone_event_payload_type=101,
        remote_rtp=("10.0.0.9", 40000),
        remote_rtcp=("10.0.0.9", 40001),
        rtcp_mux=False,
        send_audio=True,
        receive_audio=True,
    )


@pytest.mark.parametrize(
    ("direction_line", "send_audio", "receive_audio"),
    [(b"a=sendrecv", True, True), (b"a=recvonly", True, False), (b"a=sendonly", False, True), (b"a=inactive", False, False)],
)
def test_apply_answer_directions(direction_line, send_audio, receive_audio):
    answer = b"v=0\nc=IN IP4 10.0.0.9\nm=audio 40000 RTP/AVP 0\n" + direction_line + b"\n"
    plan = apply_answer(parse_sdp_untrusted(answer))
    assert (plan.send_audio, plan.receive_audio) == (send_audio, receive_audio)


def test_apply_answer_with_unoffered_codec_is_488():
    with pytest.raises(SdpError) as caught:
        apply_answer(parse_sdp_untrusted(b"v=0\nc=IN IP4 10.0.0.9\nm=audio 40000 RTP/AVP 8\n"), codecs=("PCMU",))
    assert (caught.value.status, str(caught.value)) == (
        488,
        "SDP line 3: the answer chose none of the offered codecs PCMU",
    )


def test_malformed_ptime_is_ignored():
    offer = _with(SIPP_OFFER, b"a=rtpmap:0 PCMU/8000\n", b"a=rtpmap:0 PCMU/8000\na=ptime:abc\na=maxptime:40\n")
    (audio,) = parse_sdp_untrusted(offer).media
    assert (audio.ptime, audio.maxptime) == (None, 40)


def test_origin_create_and_next_version():
    rng = random.Random(7)
    origin = SdpOrigin.create(address="10.0.0.5", rng=rng)
    assert origin == SdpOrigin(session_id=random.Random(7).getrandbits(62), version=1, address="10.0.0.5")
    assert origin.next_version().version == 2 and origin.next_version().session_id == origin.session_id


def test_values_validate_in_constructor():
    with pytest.raises(ValueError, match="session_id must be a non-negative integer, not -1"):
        SdpOrigin(session_id=-1, version=0, address="h")
    with pytest.raises(ValueError, match="send_audio needs a remote_rtp address"):
        MediaPlan(
            codec=Codec(name="PCMU", payload_type=0),
            telephone_event_payload_type=None,
            remote_rtp=None,
            remote_rtcp=None,
            rtcp_mux=False,
            send_audio=True,
            receive_audio=True,
        )


@hypothesis.given(st.binary(max_size=400))
def test_random_bytes_raise_only_sdp_error(body):
    try:
        parse_sdp_untrusted(body)
    except SdpError as error:
        assert error.status == 400


_LINES = st.sampled_from(
    [b"v=0", b"c=IN IP4 1.2.3.4", b"c=IN IP4 0.0.0.0", b"m=audio 4000 RTP/AVP 0 8 101", b"m=audio 0 RTP/AVP 0",
     b"m=video 5 RTP/AVP 31", b"a=rtpmap:101 telephone-event/8000", b"a=rtpmap:8 PCMA/8000", b"a=rtcp:9",
     b"a=rtcp-mux", b"a=sendonly", b"a=inactive", b"a=fmtp:101 0-16", b"o=- 1 2 IN IP4 h", b"x=?"]
)


@hypothesis.given(st.lists(_LINES, max_size=12), st.booleans())
def test_random_line_mixes_negotiate_or_raise_sdp_error(lines, crlf_endings):
    body = (b"\r\n" if crlf_endings else b"\n").join([b"v=0", *lines])
    try:
        plan, answer = negotiate_answer(parse_sdp_untrusted(body), **LOCAL)
    except SdpError as error:
        assert error.status in (400, 488)
    else:
        assert answer.startswith(b"v=0\r\n") and plan.ptime == 20
        assert parse_sdp_untrusted(answer).media[0].port in (0, 20000)


# -- RTP/SAVP and a=crypto (issue 19) ---------------------------------------------------

SECURE_OFFER = FRENCH_TRUNK_OFFER.replace(b"RTP/AVP", b"RTP/SAVP").replace(b"a=sendrecv", (
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n"
    b"a=crypto:2 AEAD_AES_128_GCM inline:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\r\n"
    b"a=sendrecv"))


def test_crypto_values_are_kept_in_order_for_the_stream_and_out_of_its_repr():
    [media] = parse_sdp_untrusted(SECURE_OFFER).media
    assert media.protocol == "RTP/SAVP"
    assert media.crypto == ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4",
                            "2 AEAD_AES_128_GCM inline:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    assert "inline" not in repr(media) and "crypto=<2 attribute(s)>" in repr(media)


def test_more_than_32_crypto_lines_in_a_section_is_a_400():
    body = SECURE_OFFER.replace(b"a=sendrecv", b"a=crypto:9 X inline:AAAA\r\n" * 31 + b"a=sendrecv")
    with pytest.raises(SdpError) as caught:
        parse_sdp_untrusted(body)
    assert (caught.value.status, str(caught.value)) == (
        400, "SDP line 46: more than 32 a=crypto attributes in the m= section of line 6")


def test_a_savp_stream_is_only_chosen_when_allowed_and_needs_its_crypto_answer():
    offer = parse_sdp_untrusted(SECURE_OFFER)
    with pytest.raises(SdpError) as caught:
        negotiate_answer(offer, local_address="10.0.0.5", local_port=20000, origin=ORIGIN)
    assert str(caught.value) == "the offer has no active RTP/AVP audio stream (m=audio with a non-zero port)"
    with pytest.raises(ValueError, match="an RTP/SAVP stream is answered without a crypto answer"):
        negotiate_answer(offer, local_address="10.0.0.5", local_port=20000, origin=ORIGIN,
                         protocols=("RTP/SAVP",))
