"""The bench's media loop on real loopback sockets, through both of its per-packet paths:
the compiled one (eko_bench/_engine.c) and the Python one, which must send the same
packets and record the same things (the Python path also carries SRTP and events)."""

from __future__ import annotations

import multiprocessing
import socket
import struct
import time

import pytest

from eko_bench import rtp_engine
from eko_bench.rtp_engine import CallMedia, MediaLoop

AUDIO = bytes(range(256)) * 5  # 8 frames of "sound"
HEADER = struct.Struct("!BBHII")


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, rtp_engine.SO_TIMESTAMPNS, 1)
    return sock


@pytest.fixture(params=["compiled", "python"])
def path(request, monkeypatch):
    if request.param == "compiled":
        if rtp_engine._engine is None:
            pytest.skip("eko_bench/_engine.c was not built (no C compiler or Python.h), or EKO_RTP_PURE_PYTHON")
    else:
        monkeypatch.setattr(rtp_engine, "_engine", None)
    return request.param


class Call:
    """One call of a MediaLoop, started by the loop's own "send" command, and its far end."""

    def __init__(self) -> None:
        parent, child = multiprocessing.Pipe()
        self.parent = parent
        self.loop = MediaLoop(child, AUDIO)
        self.rtp, self.rtcp, self.far = _udp(), _udp(), _udp()
        self.media = CallMedia(self.rtp, self.rtcp)
        self.loop._calls[1] = self.media
        parent.send(("send", 1, self.far.getsockname(), 0, None, None))
        self.loop._commands(time.monotonic_ns())
        self.buffer = bytearray(rtp_engine._RECEIVE_SIZE)

    def frames(self, count: int) -> list[bytes]:
        slot = [self.media]
        for _ in range(count):
            self.loop._send_slot(slot)
        received = []
        deadline = time.monotonic() + 2
        while len(received) < count and time.monotonic() < deadline:
            try:
                received.append(self.far.recv(2048))
            except BlockingIOError:
                time.sleep(0.001)
        return received

    def hear(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.far.sendto(packet, self.rtp.getsockname())
        time.sleep(0.05)
        self.loop._receive(self.media, self.buffer, memoryview(self.buffer))

    def close(self) -> None:
        for sock in (self.rtp, self.rtcp, self.far):
            sock.close()
        self.parent.close()


def test_frames_follow_the_audio_with_one_sequence_and_timestamp_step_each(path):
    call = Call()
    try:
        media = call.media
        first_sequence, first_stamp, due = media.sequence, media.timestamp, media.due_ns
        packets = call.frames(10)  # the audio holds 8: the last two wrap to its start
    finally:
        call.close()
    assert len(packets) == 10 and media.sent == 10 and media.send_errors == 0
    headers = [HEADER.unpack_from(packet) for packet in packets]
    assert [header[1] for header in headers] == [0x80] + [0] * 9  # marker on the first only (RFC 3551 §4.1)
    assert [header[2] for header in headers] == [(first_sequence + n) & 0xFFFF for n in range(10)]
    assert [header[3] for header in headers] == [(first_stamp + 160 * n) & 0xFFFFFFFF for n in range(10)]
    assert len({header[4] for header in headers}) == 1
    frames = [AUDIO[160 * n:160 * (n + 1)] for n in range(8)]
    assert [packet[12:] for packet in packets] == frames + frames[:2]
    assert media.due_ns == due + 10 * rtp_engine.FRAME_NS and media.position == 2


def test_what_arrives_is_recorded_checked_and_classified(path):
    call = Call()
    call.loop._classify_sound = True
    silence = bytes([0xFF]) * 160
    packets = [
        HEADER.pack(0x80, 0, 7, 1120, 0xABCD) + silence,  # silence
        HEADER.pack(0x80, 0, 8, 1280, 0xABCD) + bytes([0x10]) * 160,  # sound
        HEADER.pack(0x81, 0, 9, 1440, 0xABCD) + bytes(4) + silence,  # one CSRC, then silence
        HEADER.pack(0x80, 200, 0, 0, 0),  # RTCP on the RTP port (RFC 5761)
        HEADER.pack(0x40, 0, 10, 1600, 0xABCD) + silence,  # version 1
        b"\x80\x00\x00",  # truncated
    ]
    try:
        before = time.time_ns()
        call.hear(packets)
        media = call.media
    finally:
        call.close()
    assert list(media.sequences) == [7, 8, 9]
    assert list(media.timestamps) == [1120, 1280, 1440]
    assert list(media.sources) == [0xABCD] * 3
    assert list(media.sound) == [0, 1, 0]
    assert (media.rtcp_received, media.malformed, media.fallback_clock) == (1, 2, 0)
    arrivals = list(media.arrivals)
    assert before <= arrivals[0] <= arrivals[1] <= arrivals[2] <= time.time_ns()  # the kernel's stamps
    assert media.first_packet_ns == arrivals[0] and media.first_sound_ns == arrivals[1]


def test_without_classifying_only_the_first_sound_is_looked_for(path):
    call = Call()
    try:
        call.hear([HEADER.pack(0x80, 0, n, 160 * n, 5) + bytes([0x10]) * 160 for n in range(3)])
        media = call.media
    finally:
        call.close()
    assert list(media.sound) == [] and media.first_sound_ns == media.arrivals[0]


def test_a_call_without_its_records_is_refused_not_crashed(path):
    class Bare(rtp_engine.MediaCore):
        pass

    call = Call()
    try:
        bare = Bare()
        bare.fd = call.rtp.fileno()
        call.far.sendto(HEADER.pack(0x80, 0, 1, 160, 5) + bytes(160), call.rtp.getsockname())
        time.sleep(0.05)
        with pytest.raises((RuntimeError, AttributeError)):
            call.loop._receive(bare, call.buffer, memoryview(call.buffer))
    finally:
        call.close()
