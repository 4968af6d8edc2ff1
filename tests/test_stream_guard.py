"""One call's stream and its latch on real loopback sockets: who counts as the caller, where media goes.

127.0.0.2 and 127.0.0.3 are loopback too: a second and third host on one machine.
"""

from __future__ import annotations

import socket
import struct

import pytest

from eko_rtp.media import sdp
from eko_rtp.media.latch import LatchPolicy, LatchState, parse_networks
from eko_rtp.media.playout import CachedSource, PlayoutQueue
from eko_rtp.media.ports import PortPair
from eko_rtp.media.stream import MediaCounters, MediaStream

SILENCE = b"\xff" * 160
HEADER = struct.Struct("!BBHII")
ONLY_127_0_0_1 = LatchPolicy(trusted_networks=parse_networks(["127.0.0.1/32"]))


def bound(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.05)
    return sock


def received(sock: socket.socket) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(sock.recv(2048))
        except (socket.timeout, BlockingIOError):
            return packets


def audio(sequence: int, ssrc: int = 0x55) -> bytes:
    return HEADER.pack(0x80, 0, sequence, sequence * 160, ssrc) + SILENCE


def key_end(digit_event: int, sequence: int, timestamp: int, ssrc: int = 0x66) -> bytes:
    # RFC 4733 §2.3: event, E bit and volume, duration; payload type 101 as negotiated.
    return HEADER.pack(0x80, 101, sequence, timestamp, ssrc) + struct.pack("!BBH", digit_event, 0x80 | 10, 800)


class Call:
    """A stream whose SDP names ``signalled``, with the digits it delivered."""

    def __init__(self, signalled: tuple, policy: LatchPolicy = LatchPolicy()):
        self.digits: list[str] = []
        self.counters = MediaCounters()
        plan = sdp.MediaPlan(codec=sdp.Codec(name="PCMU", payload_type=0), telephone_event_payload_type=101,
                             remote_rtp=signalled, remote_rtcp=None, rtcp_mux=True, send_audio=True,
                             receive_audio=True)
        self.stream = MediaStream(pair=PortPair(port=0, rtp=bound(), rtcp=bound()), plan=plan,
                                  queue=PlayoutQueue(SILENCE), counters=self.counters,
                                  on_dtmf=self.digits.append, cname="test", latch_policy=policy)

    def close(self) -> None:
        self.stream.pair.close()


@pytest.fixture
def sockets():
    made = []

    def make(host: str = "127.0.0.1") -> socket.socket:
        sock = bound(host)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def test_a_strangers_audio_and_keys_neither_move_the_audio_nor_become_digits(sockets):
    caller, stranger = sockets(), sockets("127.0.0.2")
    call = Call(caller.getsockname())  # loopback is trusted by default: 127.0.0.2 as well
    stream = call.stream
    try:
        stream.start(100.0)
        for n in range(3):
            stream.on_rtp(audio(n), caller.getsockname(), 100.01, 1000.0)  # latched to the caller
        for n in range(3):  # an RFC 4733 "5", sent three times as its end (§2.5.1.4)
            stream.on_rtp(key_end(5, 7 + n, 4000), stranger.getsockname(), 100.02, None)
        stream.on_rtp(audio(9, ssrc=0x77), stranger.getsockname(), 100.03, 1000.03)
        stream.send_due(100.04)
        assert len(received(caller)) == 3 and received(stranger) == []  # frames 0-2 all to the caller
        assert call.digits == []
        # Only the caller's packets count: statistics (sequence 2 the highest), the inactivity timer.
        assert (stream.statistics.extended_highest_sequence, stream.last_inbound) == (2, 100.01)
        assert (stream.packets_stray, call.counters.packets_stray, call.counters.packets_received) == (4, 4, 3)
        assert (stream.latch.state, stream.caller_source) == (LatchState.SIGNALLED, caller.getsockname())
        # The caller's own key is a digit.
        for n in range(3):
            stream.on_rtp(key_end(5, 1 + n, 4000), caller.getsockname(), 100.05, None)
        assert call.digits == ["5"]
    finally:
        call.close()


def test_nothing_goes_to_an_untrusted_address_until_the_ack_and_the_greeting_then_starts_whole():
    public = ("192.0.2.99", 4000)  # not ours, not loopback: the kernel would route it out, so we record instead
    call = Call(public, ONLY_127_0_0_1)
    stream = call.stream
    sent = []
    stream._sendmsg = lambda buffers, ancillary, flags, address: sent.append((address, b"".join(buffers)))
    greeting = bytes(range(160)) + bytes(range(1, 161))
    try:
        stream.queue.enqueue(CachedSource(memoryview(greeting)))
        stream.start(100.0)  # the 200 OK: frame 0 would leave now
        assert stream.send_due(100.1) == pytest.approx(100.12)
        assert sent == [] and call.counters.frames_sent == 0
        stream.on_ack()
        stream.send_due(100.12)
        stream.send_due(100.14)
        # The greeting waited rather than being cut: its first frame first, as a talkspurt's start.
        assert [(address, packet[12:]) for address, packet in sent] == [(public, greeting[:160]),
                                                                        (public, greeting[160:])]
        assert sent[0][1][1] & 0x80  # marker bit (RFC 3551 §4.1)
    finally:
        call.close()


def test_the_ack_opens_no_way_to_an_address_that_is_not_public(sockets):
    victim = sockets("127.0.0.2")  # loopback outside trusted_networks: our own host's services
    call = Call(victim.getsockname(), ONLY_127_0_0_1)
    try:
        call.stream.start(100.0)
        call.stream.on_ack()
        call.stream.send_due(101.0)
        call.stream.send_rtcp(101.0, 1700000000.0)
        assert received(victim) == [] and call.counters.frames_sent == 0
    finally:
        call.close()


def test_the_first_packet_from_the_signalled_address_opens_the_way_before_the_ack(sockets):
    caller = sockets("127.0.0.2")
    call = Call(caller.getsockname(), ONLY_127_0_0_1)
    stream = call.stream
    try:
        stream.start(100.0)
        assert received(caller) == []
        stream.on_rtp(audio(0), caller.getsockname(), 100.005, 1000.0)
        stream.send_due(100.02)
        assert len(received(caller)) == 1
    finally:
        call.close()


def test_a_caller_behind_a_nat_is_answered_where_its_packets_come_from(sockets):
    nat_face, stranger, remapped = sockets(), sockets("127.0.0.3"), sockets("127.0.0.2")
    call = Call(("10.20.30.40", 4000), ONLY_127_0_0_1)  # its SDP names its inside address
    stream = call.stream
    try:
        stream.start(100.0)
        stream.on_rtp(audio(0), nat_face.getsockname(), 100.005, 1000.0)  # the first packet after the answer
        stream.on_rtp(audio(9, ssrc=0x5EED), stranger.getsockname(), 100.006, 1000.0)  # a second one, not taken
        stream.send_due(100.02)
        assert len(received(nat_face)) == 1 and received(stranger) == []
        assert (stream.latch.state, stream.packets_stray) == (LatchState.LEARNED, 1)
        # The caller silent for more than relatch_after (2 s): a stranger's stream is still not its...
        stream.on_rtp(audio(10, ssrc=0x5EED), stranger.getsockname(), 103.0, 1000.0)
        # ... but its own (its SSRC) from where its NAT now maps it is.
        stream.on_rtp(audio(1), remapped.getsockname(), 103.005, 1000.0)
        stream.send_due(103.02)
        assert received(stranger) == [] and received(remapped)
        assert (stream.caller_source, stream.packets_stray) == (remapped.getsockname(), 2)
    finally:
        call.close()


def test_a_strangers_rtcp_keeps_no_call_alive(sockets):
    from eko_rtp.media.rtcp import build_sender_report, ntp_from_unix

    caller, stranger = sockets(), sockets("127.0.0.2")
    call = Call(caller.getsockname(), ONLY_127_0_0_1)
    report = build_sender_report(ssrc=0x1234, ntp_time=ntp_from_unix(1700000000.0), rtp_timestamp=0,
                                 packet_count=1, octet_count=160, report_blocks=(), cname="x")
    try:
        call.stream.on_rtp(report, stranger.getsockname(), 5.0, 1700000000.0)  # muxed RTCP
        call.stream.on_rtcp(report, stranger.getsockname(), 6.0, 1700000000.0)
        assert call.stream.last_inbound is None and call.stream.quality.reports_received == 0
        call.stream.on_rtcp(report, (caller.getsockname()[0], 9), 7.0, 1700000000.0)
        assert call.stream.last_inbound == 7.0 and call.stream.packets_stray == 2
    finally:
        call.close()
