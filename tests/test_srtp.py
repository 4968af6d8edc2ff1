"""A call's SRTP (media/srtp.py) against pylibsrtp's public classes, as a second, independent peer."""

from __future__ import annotations

import mmap
import os
import random

import pytest
from pylibsrtp import Policy, Session

from eko_rtp.media.rtcp import build_sender_report, ntp_from_unix
from eko_rtp.media.rtp import RtpSender
from eko_rtp.media.sdes import (
    SUPPORTED_SUITES,
    CryptoSuite,
    Mki,
    SrtpKeys,
    choose_answer,
    format_crypto,
    parse_crypto_untrusted,
)
from eko_rtp.media.srtp import MAX_PACKET, SUITE_PROFILES, CallSrtp, DropReason, SrtpCounters, SrtpError

SUITES = sorted(SUPPORTED_SUITES, key=lambda suite: suite.value)
PAYLOAD = bytes(range(160))


def peer_session(master: bytes, suite: CryptoSuite, *, outbound: bool) -> Session:
    """The other end, made only with pylibsrtp's documented classes."""
    return Session(Policy(
        key=master,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND,
        srtp_profile=SUITE_PROFILES[suite],
    ))


class Call:
    """A call negotiated by SDES: the peer offers one suite, we answer; both ends keyed from the SDP text."""

    def __init__(self, suite: CryptoSuite, *, mki: str = "", counters: SrtpCounters | None = None):
        rng = random.Random(suite.value)
        self.peer_master = rng.randbytes(suite.master_length)
        offer = format_crypto(tag=1, suite=suite, master=self.peer_master) + mki
        answer = choose_answer([offer], rng=os.urandom)
        self.ours = CallSrtp(answer.keys, counters=counters)
        # The peer reads our key from the answer's line, as it would from the SDP.
        our_master = parse_crypto_untrusted(answer.attribute_value).master
        self.peer_in = peer_session(our_master, suite, outbound=False)
        self.peer_out = peer_session(self.peer_master, suite, outbound=True)
        self.peer_sender = RtpSender(payload_type=0)

    def peer_packet(self) -> tuple[bytes, bytes]:
        """(plain RTP, SRTP) of the peer's next packet."""
        plain = bytes(self.peer_sender.header_for_next_frame(False)) + PAYLOAD
        return plain, self.peer_out.protect(plain)


def report(ssrc: int = 0x1234) -> bytes:
    return build_sender_report(ssrc=ssrc, ntp_time=ntp_from_unix(1_700_000_000.0), rtp_timestamp=160,
                               packet_count=1, octet_count=160, report_blocks=(), cname="eko@test")


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.value)
def test_every_supported_suite_runs_in_the_pylibsrtp_wheel(suite):
    # SUPPORTED_SUITES in media/sdes.py is what we offer and accept: each one must
    # work here, AEAD_AES_128_GCM included (libsrtp built with OpenSSL).
    call = Call(suite)
    sender = RtpSender(payload_type=0)
    header = sender.header_for_next_frame(True)
    plain = bytes(header) + PAYLOAD
    protected = call.ours.protect_frame(header, PAYLOAD)
    assert len(protected) == len(plain) + suite.rtp_tag_length
    assert call.peer_in.unprotect(bytes(protected)) == plain


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.value)
def test_interop_both_ways_rtp_and_rtcp(suite):
    call = Call(suite)
    # Our frames as the frame clock sends them: the reused header and a view into a memory map.
    audio = mmap.mmap(-1, 160 * 3)
    audio.write(os.urandom(160 * 3))
    frames = memoryview(audio)
    sender = RtpSender(payload_type=0)
    for index in range(3):
        header = sender.header_for_next_frame(index == 0)
        payload = frames[160 * index: 160 * (index + 1)]
        expected = bytes(header) + bytes(payload)
        protected = call.ours.protect_frame(header, payload)
        assert isinstance(protected, memoryview)
        assert bytes(protected[:12]) == bytes(header)  # the RTP header stays in the clear
        assert bytes(protected[12:172]) != bytes(payload)
        assert call.peer_in.unprotect(bytes(protected)) == expected
    assert call.peer_in.unprotect(call.ours.protect(bytes(sender.header_for_next_frame()) + PAYLOAD))[12:] == PAYLOAD

    for _ in range(3):
        plain, datagram = call.peer_packet()
        assert call.ours.unprotect(datagram) == plain
        assert call.ours.unprotect(memoryview(datagram)) is None  # a replay, whatever the buffer type

    ours = report(sender.ssrc)
    assert call.peer_in.unprotect_rtcp(call.ours.protect_rtcp(ours)) == ours
    theirs = report(call.peer_sender.ssrc)
    assert call.ours.unprotect_rtcp(call.peer_out.protect_rtcp(theirs)) == theirs
    assert call.ours.rtp_drops[DropReason.REPLAY] == 3
    assert sum(call.ours.rtcp_drops.values()) == 0


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.value)
def test_a_tampered_packet_and_a_replayed_one_are_dropped_and_counted(suite):
    counters = SrtpCounters()
    call = Call(suite, counters=counters)
    plain, datagram = call.peer_packet()
    for position in (4, 12, len(datagram) - 1):  # header, payload, tag
        tampered = bytearray(datagram)
        tampered[position] ^= 0x01
        assert call.ours.unprotect(bytes(tampered)) is None
    assert call.ours.unprotect(datagram) == plain
    assert call.ours.unprotect(datagram) is None
    later_plain, later = call.peer_packet()
    assert call.ours.unprotect(later) == later_plain  # the call goes on
    expected = {DropReason.AUTHENTICATION: 3, DropReason.REPLAY: 1, DropReason.MKI: 0, DropReason.MALFORMED: 0,
                DropReason.OTHER: 0}
    assert call.ours.rtp_drops == expected
    assert counters.rtp == expected

    rtcp = call.peer_out.protect_rtcp(report(call.peer_sender.ssrc))
    tampered = bytearray(rtcp)
    tampered[10] ^= 0x80
    assert call.ours.unprotect_rtcp(bytes(tampered)) is None
    assert call.ours.unprotect_rtcp(rtcp) == report(call.peer_sender.ssrc)
    assert call.ours.unprotect_rtcp(rtcp) is None
    assert call.ours.rtcp_drops[DropReason.AUTHENTICATION] == 1
    assert call.ours.rtcp_drops[DropReason.REPLAY] == 1
    assert counters.rtcp == call.ours.rtcp_drops


def test_a_packet_keyed_otherwise_fails_authentication():
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    stranger = peer_session(os.urandom(30), CryptoSuite.AES_CM_128_HMAC_SHA1_80, outbound=True)
    assert call.ours.unprotect(stranger.protect(bytes(RtpSender(payload_type=0).header_for_next_frame()) + PAYLOAD)) is None
    assert call.ours.rtp_drops[DropReason.AUTHENTICATION] == 1


def test_reordering_within_the_window_passes_and_older_is_a_replay():
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    packets = [call.peer_packet() for _ in range(200)]
    for plain, datagram in packets[1:60]:
        assert call.ours.unprotect(datagram) == plain
    assert call.ours.unprotect(packets[0][1]) == packets[0][0]  # late by 59 packets: inside 128
    for plain, datagram in packets[60:200]:
        assert call.ours.unprotect(datagram) == plain
    assert call.ours.unprotect(packets[30][1]) is None  # 170 packets back: outside the window
    assert call.ours.rtp_drops[DropReason.REPLAY] == 1


def test_the_sequence_number_wraps_without_a_drop():
    # The rollover counter (RFC 3711 §3.3.1) carries both contexts past 65535.
    call = Call(CryptoSuite.AEAD_AES_128_GCM)
    sender = RtpSender(payload_type=0)
    for _ in range(66_000):
        header = sender.header_for_next_frame()
        assert call.peer_in.unprotect(bytes(call.ours.protect_frame(header, PAYLOAD)))[:12] == header
        plain, datagram = call.peer_packet()
        assert call.ours.unprotect(datagram) is not None
    assert sum(call.ours.rtp_drops.values()) == 0


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.value)
def test_unprotect_view_is_the_plaintext_in_the_threads_receive_buffer(suite):
    # The stream reads each packet in place; what is kept is copied (media/reorder.py).
    call, other = Call(suite), Call(suite)
    plain, datagram = call.peer_packet()
    view = call.ours.unprotect_view(datagram)
    assert type(view) is memoryview and not view.readonly and bytes(view) == plain
    assert call.ours.unprotect_view(datagram) is None  # a replay, dropped and counted as ever
    assert call.ours.rtp_drops[DropReason.REPLAY] == 1
    other_plain, other_datagram = other.peer_packet()
    other_view = other.ours.unprotect_view(other_datagram)
    # Every call of the thread unprotects into one buffer: the next packet overwrites the view.
    assert other_view.obj is view.obj and bytes(view[:len(other_plain)]) == other_plain


def test_the_threads_calls_share_one_send_and_one_receive_buffer():
    import threading

    calls = [Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80) for _ in range(2)]
    header = RtpSender(payload_type=0).header_for_next_frame(False)
    sent = [call.ours.protect_frame(header, PAYLOAD).obj for call in calls]
    received = [call.ours.unprotect_view(call.peer_packet()[1]).obj for call in calls]
    assert sent[0] is sent[1] and received[0] is received[1] and sent[0] is not received[0]
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(calls[0].ours.protect_frame(
        RtpSender(payload_type=0).header_for_next_frame(False), PAYLOAD).obj))
    thread.start()
    thread.join()
    # A CallSrtp keeps the buffers of the thread that made it; another thread's calls have their own.
    assert elsewhere[0] is sent[0]
    made_elsewhere = []
    thread = threading.Thread(target=lambda: made_elsewhere.append(Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80).ours))
    thread.start()
    thread.join()
    assert made_elsewhere[0].protect_frame(header, PAYLOAD).obj is not sent[0]


def with_mki(datagram: bytes, mki: bytes, trailing: int) -> bytes:
    """The datagram as a peer keyed with an MKI sends it: the MKI before the last ``trailing`` octets."""
    cut = len(datagram) - trailing
    return datagram[:cut] + mki + datagram[cut:]


# The octets after the MKI (RFC 3711 §3.1, §3.4; RFC 7714 §8.1, §9.1): the tag for
# AES-CM, nothing for the AEAD suite (its tag is part of the ciphertext, before the MKI).
TRAILING = {
    CryptoSuite.AES_CM_128_HMAC_SHA1_80: (10, 10),
    CryptoSuite.AES_CM_128_HMAC_SHA1_32: (4, 10),
    CryptoSuite.AEAD_AES_128_GCM: (0, 0),
}


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.value)
def test_a_peer_key_with_an_mki_is_checked_and_cut_out(suite):
    call = Call(suite, mki="|2^31|258:2")
    assert call.ours.keys.receive_mki == Mki(value=258, length=2)
    rtp_trailing, rtcp_trailing = TRAILING[suite]
    plain, datagram = call.peer_packet()
    assert call.ours.unprotect(with_mki(datagram, b"\x01\x02", rtp_trailing)) == plain
    _, another = call.peer_packet()
    assert call.ours.unprotect(with_mki(another, b"\x01\x03", rtp_trailing)) is None
    assert call.ours.unprotect(another) is None  # no MKI at all: the tag is read in the wrong place
    assert call.ours.rtp_drops[DropReason.MKI] >= 1

    theirs = report(call.peer_sender.ssrc)
    rtcp = call.peer_out.protect_rtcp(theirs)
    assert call.ours.unprotect_rtcp(with_mki(rtcp, b"\x01\x02", rtcp_trailing)) == theirs
    assert call.ours.unprotect_rtcp(with_mki(call.peer_out.protect_rtcp(theirs), b"\xff\x02", rtcp_trailing)) is None
    assert call.ours.rtcp_drops[DropReason.MKI] == 1


@pytest.mark.parametrize("datagram", [b"", b"\x80", bytes(12), bytes(21), bytes(MAX_PACKET + 1)],
                         ids=["empty", "one octet", "header only", "shorter than header and tag", "too long"])
def test_what_cannot_be_srtp_is_malformed(datagram):
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    assert call.ours.unprotect(datagram) is None
    assert call.ours.rtp_drops[DropReason.MALFORMED] == 1
    assert call.ours.unprotect_rtcp(datagram) is None
    assert call.ours.rtcp_drops[DropReason.MALFORMED] == 1


def test_garbage_of_a_plausible_length_is_dropped():
    call = Call(CryptoSuite.AEAD_AES_128_GCM)
    rng = random.Random(7)
    for _ in range(200):
        assert call.ours.unprotect(bytes([0x80]) + rng.randbytes(rng.randrange(27, 400))) is None
        assert call.ours.unprotect_rtcp(bytes([0x80, 0xC8]) + rng.randbytes(rng.randrange(30, 400))) is None
    assert sum(call.ours.rtp_drops.values()) == 200
    assert sum(call.ours.rtcp_drops.values()) == 200


def test_protecting_a_packet_too_long_is_our_bug():
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    with pytest.raises(SrtpError, match="exceeds 2048"):
        call.ours.protect_frame(bytes(12), bytes(MAX_PACKET))
    with pytest.raises(SrtpError, match="exceeds 2048"):
        call.ours.protect_rtcp(bytes(MAX_PACKET + 1))


def test_the_outbound_context_refuses_to_send_an_index_twice():
    # libsrtp's sender-side replay check: a header sent twice would reuse the keystream.
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    header = RtpSender(payload_type=0).header_for_next_frame()
    call.ours.protect_frame(header, PAYLOAD)
    with pytest.raises(SrtpError, match="cannot protect an RTP packet: replay check failed"):
        call.ours.protect_frame(header, PAYLOAD)


def test_close_frees_the_contexts_once():
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    call.ours.close()
    call.ours.close()


def test_a_closed_call_raises_instead_of_reaching_freed_sessions():
    call = Call(CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    _, datagram = call.peer_packet()
    call.ours.close()
    header = RtpSender(payload_type=0).header_for_next_frame(False)
    for use in (lambda: call.ours.protect_frame(header, PAYLOAD), lambda: call.ours.protect_rtcp(report()),
                lambda: call.ours.unprotect_view(datagram), lambda: call.ours.unprotect_rtcp(datagram)):
        with pytest.raises(TypeError):
            use()


def test_keys_must_be_srtp_keys():
    with pytest.raises(TypeError, match="SrtpKeys"):
        CallSrtp(b"\x00" * 30)
    keys = SrtpKeys(suite=CryptoSuite.AEAD_AES_128_GCM, send_master=bytes(28), receive_master=b"\x01" * 28)
    CallSrtp(keys).close()
