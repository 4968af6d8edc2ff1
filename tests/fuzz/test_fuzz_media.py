"""Fuzzing the media cores: SDP and offer/answer, RTP, RTCP, DTMF.

Each parser of network input may raise only its module's error (SdpError, RtpError,
RtcpError, DtmfError); what the offer/answer code writes must be read back by our
own parser; a call's offer/answer state survives any sequence of bodies.
"""

from __future__ import annotations

import random
import struct

import hypothesis
from hypothesis import strategies as st

from eko_rtp.media import sdp
from eko_rtp.media.dtmf import (
    DtmfDetector,
    DtmfError,
    parse_dtmf_relay_untrusted,
    parse_info_dtmf_untrusted,
    parse_telephone_event_untrusted,
    peek_telephone_event_untrusted,
)
from eko_rtp.media.negotiation import MediaSession, NegotiationState
from eko_rtp.media.rtcp import RtcpError, ReportBlock, build_receiver_report, build_sender_report, parse_rtcp_untrusted
from eko_rtp.media.rtp import (
    HEADER_SIZE,
    ReceiverStatistics,
    RtpError,
    RtpSender,
    is_rtcp,
    parse_rtp_untrusted,
    payload_bounds_untrusted,
    peek_rtp_untrusted,
)

from fuzzing import FUZZ, only_raises
from sdp_grammar import sdp_bodies
from sip_grammar import mutate, mutations

LOCAL = "192.0.2.10"
sdp_inputs = st.one_of(sdp_bodies, st.builds(mutate, sdp_bodies, mutations), st.binary(max_size=300))


def parse_sdp(body: bytes) -> sdp.SessionDescription | None:
    try:
        return sdp.parse_sdp_untrusted(body)
    except sdp.SdpError as error:
        assert error.status == 400, error
        return None


# ---- SDP and offer/answer ---------------------------------------------------------------


@FUZZ
@hypothesis.given(sdp_inputs, st.sampled_from([None, "PCMU", "PCMA"]))
def test_sdp_offers_are_answered_or_refused(body, preferred):
    offer = parse_sdp(body)
    if offer is None:
        return
    origin = sdp.SdpOrigin(session_id=7, version=1, address=LOCAL)
    try:
        plan, answer = sdp.negotiate_answer(offer, local_address=LOCAL, local_port=5000, origin=origin,
                                            preferred_codec=preferred)
    except sdp.SdpError as error:
        assert error.status in (400, 488), error
        return
    # RFC 3264 §6: one m= line per offered one, in order; ours is read by our own parser.
    ours = sdp.parse_sdp_untrusted(answer)
    assert len(ours.media) == len(offer.media)
    assert [m.media for m in ours.media] == [m.media for m in offer.media]
    active = [m for m in ours.media if m.port != 0]
    assert len(active) == 1 and active[0].port == 5000 and ours.origin == origin
    assert plan.codec.name in sdp.SUPPORTED_CODECS
    assert f"a=rtpmap:{plan.codec.payload_type} {plan.codec.name}/8000".encode() in answer
    assert plan.send_audio <= (plan.remote_rtp is not None)


@FUZZ
@hypothesis.given(sdp_inputs)
def test_answers_to_our_offer(body):
    answer = parse_sdp(body)
    if answer is None:
        return
    with only_raises(sdp.SdpError):
        plan = sdp.apply_answer(answer)
        assert plan.codec.name in sdp.SUPPORTED_CODECS


# Mostly bodies from the grammar (an offer the session can answer), sometimes none (an
# offerless INVITE, an ACK without answer), sometimes damaged.
session_bodies = st.one_of(sdp_bodies, sdp_bodies, st.none(), st.just(b""), sdp_inputs)
session_steps = st.tuples(session_bodies, st.lists(st.tuples(st.sampled_from(["ack", "reinvite"]), session_bodies),
                                                   max_size=8)).map(lambda first: [("invite", first[0]), *first[1]])


@FUZZ
@hypothesis.given(session_steps)
def test_media_session_survives_any_bodies(steps):
    """A call's offer/answer state: bad SDP raises SdpError and leaves the state as it was (RFC 3264 §8)."""
    media = MediaSession(local_address=LOCAL, local_port=5000, session_id=42)
    for kind, body in steps:
        state, origin, plan = media.state, media.origin, media.plan
        # As the shell drives it: invite first and once, a re-INVITE once established.
        if kind == "reinvite" and state is not NegotiationState.ACTIVE:
            continue
        try:
            if kind == "invite":
                result = media.invite(body)
            elif kind == "ack":
                result = media.ack(body)
            else:
                result = media.reinvite(body)
        except sdp.SdpError as error:
            assert error.status in (400, 488), error
            assert (media.state, media.origin, media.plan) == (state, origin, plan)
            if kind == "invite":
                return  # the call is refused
            continue
        assert media.state is not NegotiationState.ERROR
        # RFC 3264 §8: one session id; the version grows by one exactly when our SDP changed.
        assert media.origin.session_id == 42 and media.origin.version - origin.version in (0, 1)
        if result is not None and result.body:
            ours = sdp.parse_sdp_untrusted(result.body)
            assert ours.origin == media.origin


# ---- RTP ---------------------------------------------------------------------------------


@st.composite
def rtp_packets(draw) -> bytes:
    """An RTP datagram whose CC, X and P bits and lengths agree, or nearly."""
    csrc_count = draw(st.integers(0, 15))
    extension = draw(st.booleans())
    padding = draw(st.booleans())
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | csrc_count
    header = struct.pack("!BBHII", first, draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)),
                         draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
    data = header + b"\x00\x00\x00\x01" * csrc_count
    if extension:
        words = draw(st.integers(0, 4))
        data += struct.pack("!HH", 0xBEDE, words + draw(st.sampled_from([0, 0, 0, 1, 200]))) + b"\x00" * 4 * words
    data += draw(st.binary(max_size=40))
    if padding:
        count = draw(st.integers(0, 8))
        data += b"\x00" * max(0, count - 1) + bytes([draw(st.sampled_from([count, 0, 255, count + 1]))])
    return data[: draw(st.integers(0, len(data)))] if draw(st.integers(0, 5)) == 0 else data


@FUZZ
@hypothesis.given(st.one_of(rtp_packets(), st.binary(max_size=80)))
def test_rtp_parsers_agree(data):
    peeked = bounds = packet = None
    with only_raises(RtpError):
        peeked = peek_rtp_untrusted(data)
    with only_raises(RtpError):
        bounds = payload_bounds_untrusted(data)
    with only_raises(RtpError):
        packet = parse_rtp_untrusted(data)
    is_rtcp(data)
    # The three readers of one datagram never disagree: the receive path peeks, then bounds.
    assert (bounds is None) == (packet is None)
    if packet is not None:
        assert peeked == (data[1], packet.sequence, packet.timestamp, packet.ssrc)
        start, end = bounds
        assert HEADER_SIZE <= start <= end <= len(data)
        assert bytes(packet.payload) == data[start:end]
    elif len(data) >= HEADER_SIZE and data[0] >> 6 == 2:
        assert peeked is not None


@FUZZ
@hypothesis.given(st.integers(0, 127), st.integers(0, 2**64), st.lists(st.tuples(st.booleans(), st.integers(0, 160),
                                                                            st.integers(0, 10**6)), max_size=20))
def test_our_rtp_headers_read_back(payload_type, seed, frames):
    """What RtpSender writes, parse_rtp_untrusted reads: sequence +1 a frame (mod 2**16), timestamps as sampled."""
    sender = RtpSender(payload_type=payload_type, rng=random.Random(seed))
    for marker, rewind, skip in frames:
        sequence, timestamp = sender.next_sequence, sender.next_timestamp
        packet = parse_rtp_untrusted(bytes(sender.header_for_next_frame(marker)) + b"\xff" * 160)
        assert (packet.marker, packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (
            marker, payload_type, sequence, timestamp, sender.ssrc)
        assert sender.next_sequence == (sequence + 1) & 0xFFFF and len(packet.payload) == 160
        sender.rewind(rewind)
        sender.skip(skip)


@st.composite
def packet_streams(draw) -> list[tuple[int, int, float | None, int | None]]:
    """(sequence, timestamp, arrival, SSRC) of a stream as networks deliver it: mostly in order,
    with losses, duplicates, reordering, wraparound, jumps and a restarted sender."""
    sequence, timestamp, arrival = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)), 0.0
    ssrc = draw(st.sampled_from([None, 1]))
    packets = []
    for step in draw(st.lists(st.sampled_from([1] * 8 + [0, 2, 5, -1, -3, 3000, 40000, -200, "ssrc"]), max_size=60)):
        if step == "ssrc":
            ssrc = draw(st.sampled_from([2, 2**32 - 1]))
            step = 1
        sequence = (sequence + step) & 0xFFFF
        timestamp = (timestamp + 160 * step) & 0xFFFFFFFF
        arrival += draw(st.sampled_from([0.02, 0.02, 0.0, 0.5, 1e5]))
        packets.append((sequence, timestamp, draw(st.sampled_from([arrival, arrival, None])), ssrc))
    return packets


@FUZZ
@hypothesis.given(st.one_of(packet_streams(), st.lists(st.tuples(
    st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.one_of(st.none(), st.floats(0, 1e6)),
    st.one_of(st.none(), st.sampled_from([1, 2, 2**32 - 1]))), max_size=60)), st.floats(0, 1e6))
def test_receiver_statistics_always_make_a_report_block(packets, now):
    statistics = ReceiverStatistics()
    for index, (sequence, timestamp, arrival, ssrc) in enumerate(packets):
        statistics.feed(sequence, timestamp, arrival, ssrc)
        if index % 7 == 0:
            statistics.note_sender_report(ntp_timestamp=timestamp << 16, arrival_time=arrival or 0.0)
        if index % 5 == 0:
            assert isinstance(statistics.report_block(now=now), ReportBlock)
    assert isinstance(statistics.report_block(now=now), ReportBlock)


# ---- RTCP --------------------------------------------------------------------------------

_U32 = st.integers(0, 2**32 - 1)
report_blocks = st.builds(ReportBlock, ssrc=_U32, fraction_lost=st.integers(0, 255),
                          cumulative_lost=st.integers(-0x800000, 0x7FFFFF), extended_highest_sequence=_U32,
                          jitter=_U32, last_sender_report=_U32, delay_since_last_sender_report=_U32)
cnames = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda text: len(text.encode()) <= 255)
ours = st.one_of(
    st.builds(lambda ssrc, blocks, cname, ntp: build_sender_report(
        ssrc=ssrc, ntp_time=ntp, rtp_timestamp=1, packet_count=2, octet_count=3, report_blocks=blocks, cname=cname),
        _U32, st.lists(report_blocks, max_size=3), cnames, st.integers(0, 2**64 - 1)),
    st.builds(lambda ssrc, blocks, cname: build_receiver_report(ssrc=ssrc, report_blocks=blocks, cname=cname),
              _U32, st.lists(report_blocks, max_size=3), cnames),
)


@st.composite
def rtcp_packets(draw) -> bytes:
    """A compound RTCP packet of SR, RR, SDES, BYE and unknown packets, lengths mostly right."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        packet_type = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 207]))
        count = draw(st.integers(0, 31))
        body = draw(st.binary(max_size=24)) + b"\x00" * (4 * draw(st.integers(0, 8)))
        body += b"\x00" * (-len(body) % 4)
        words = len(body) // 4 + draw(st.sampled_from([0, 0, 0, 1, -1]))
        padding = 0x20 if draw(st.integers(0, 5)) == 0 else 0
        out += struct.pack("!BBH", 0x80 | padding | count, packet_type, max(0, words)) + body
    return out


@FUZZ
@hypothesis.given(st.one_of(ours, rtcp_packets(), st.builds(mutate, ours, mutations), st.binary(max_size=120)))
def test_rtcp_parser(data):
    with only_raises(RtcpError):
        for packet in parse_rtcp_untrusted(data):
            assert packet is not None


@FUZZ
@hypothesis.given(_U32, st.lists(report_blocks, max_size=31), cnames)
def test_our_rtcp_reports_round_trip(ssrc, blocks, cname):
    sender, description = parse_rtcp_untrusted(build_sender_report(
        ssrc=ssrc, ntp_time=1.5e9, rtp_timestamp=1, packet_count=2, octet_count=3, report_blocks=blocks, cname=cname))
    receiver, _ = parse_rtcp_untrusted(build_receiver_report(ssrc=ssrc, report_blocks=blocks, cname=cname))
    assert sender.report_blocks == tuple(blocks) == receiver.report_blocks
    assert description.chunks == ((ssrc, cname),)


# ---- DTMF --------------------------------------------------------------------------------

relay_bodies = st.one_of(
    st.builds(lambda lines, ending: ending.join(lines).encode("utf-8"),
              st.lists(st.one_of(st.sampled_from(["Signal=5", "Duration=160", "signal = #", "Signal=10", "Signal=11",
                                                  "Duration=", "Duration=9999999", "Duration=²", "Signal=²", "x",
                                                  "=", "Signal=", "Signal=a", "Signal=٣", ""]),
                                 st.text(max_size=12)), max_size=4),
              st.sampled_from(["\r\n", "\n", "\r", "\x0b", "\x1c"])),
    st.binary(max_size=60),
)


@FUZZ
@hypothesis.given(relay_bodies, st.sampled_from(["application/dtmf-relay", "application/dtmf", "text/plain"]))
def test_info_dtmf_bodies(body, media_type):
    with only_raises(DtmfError):
        digit, duration = parse_info_dtmf_untrusted(media_type, body)
        assert digit in "0123456789*#ABCD" and len(digit) == 1
        assert duration is None or 0 <= duration < 10**6
    with only_raises(DtmfError):
        parse_dtmf_relay_untrusted(body)


@FUZZ
@hypothesis.given(st.lists(st.tuples(st.binary(min_size=0, max_size=8), st.integers(0, 2**32 - 1)), max_size=30))
def test_telephone_events(packets):
    detector = DtmfDetector()
    for payload, timestamp in packets:
        event = peeked = None
        with only_raises(DtmfError):
            event = parse_telephone_event_untrusted(payload)
        with only_raises(DtmfError):
            peeked = peek_telephone_event_untrusted(b"xx" + payload, 2, 2 + len(payload))
        assert (event is None) == (peeked is None)
        if event is not None:
            assert peeked == (event.event, event.end, event.duration)
            digit = detector.feed(event=event, rtp_timestamp=timestamp)
            assert digit is None or digit in "0123456789*#ABCD"
