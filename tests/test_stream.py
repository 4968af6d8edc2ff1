"""One call's RTP stream on real loopback sockets: frames, headers, and a live talkspurt.

The frame loop (StreamCore.send_due) has a compiled twin (media/_stream.c): the
server runs it when it was built, and the last test runs this file, test_rtp.py,
test_stream_guard.py and test_shared_port.py again on the Python twins."""

import os
import pathlib
import socket
import struct
import subprocess
import sys

import pytest

from eko_rtp.media import sdp
from eko_rtp.media.playout import LiveSource, PlayoutQueue
from eko_rtp.media.ports import PortPair
from eko_rtp.codec.g711 import ULAW_TO_ALAW
from eko_rtp.media import stream as stream_module
from eko_rtp.media.stream import MediaCounters, MediaStream

SILENCE = b"\xff" * 160


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class Peer:
    def __init__(self) -> None:
        self.sock = _socket()
        self.sock.settimeout(2)

    def packet(self) -> tuple[int, int, int, bytes]:
        data = self.sock.recv(2048)
        first, second, sequence, timestamp = struct.unpack_from("!BBHI", data)
        return second >> 7, sequence, timestamp, data[12:]


def _stream(peer: Peer, codec: str = "PCMU") -> MediaStream:
    plan = sdp.MediaPlan(codec=sdp.Codec(name=codec, payload_type=0 if codec == "PCMU" else 8),
                         telephone_event_payload_type=101,
                         remote_rtp=peer.sock.getsockname(), remote_rtcp=None, rtcp_mux=True,
                         send_audio=True, receive_audio=True)
    return MediaStream(pair=PortPair(port=0, rtp=_socket(), rtcp=_socket()), plan=plan,
                       queue=PlayoutQueue(SILENCE), counters=MediaCounters(), on_dtmf=lambda digit: None,
                       cname="test")


def test_live_audio_starts_its_talkspurt_at_once_and_keeps_20_ms_after():
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)  # frame 0: silence, the queue is empty
        assert stream.send_due(100.020) == 100.040  # frame 1: silence
        live = LiveSource()
        live.on_first_frame = lambda: stream.start_talkspurt(100.027)
        stream.queue.enqueue(live)
        live.push(b"\x01" * 160)  # 7 ms after frame 1: it leaves now, not at 100.040
        live.push(b"\x02" * 160)
        assert stream.next_due == 100.047
        assert stream.send_due(100.040) == 100.047  # the old slot sends nothing now
        assert stream.send_due(100.047) == 100.067
        packets = [peer.packet() for _ in range(4)]
    finally:
        stream.pair.close()
        peer.sock.close()
    markers = [marker for marker, _, _, _ in packets]
    sequences = [sequence for _, sequence, _, _ in packets]
    stamps = [stamp for _, _, stamp, _ in packets]
    payloads = [payload for _, _, _, payload in packets]
    assert payloads == [SILENCE, SILENCE, b"\x01" * 160, b"\x02" * 160]
    assert markers == [0, 0, 1, 0]  # the live audio starts a talkspurt (RFC 3551 §4.1)
    assert [(b - a) & 0xFFFF for a, b in zip(sequences, sequences[1:])] == [1, 1, 1]
    # Timestamps are sampling instants: 20 ms, then the 7 ms the talkspurt waited, then 20 ms.
    assert [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:])] == [160, 56, 160]


def test_a_schedule_moved_on_counts_the_pause_in_its_timestamps():
    """The clock's balancing shift (FrameClock.balancing_shift) moves a new call's frames
    later, once: the timestamps follow, so the receiver sees a pause, not a late packet."""
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)  # frame 0 leaves with the 200 OK
        stream.shift_schedule(0.013)  # the wheel's fullest bucket is 13 ms on
        assert round(stream.next_due, 6) == 100.033
        assert round(stream.send_due(100.020), 6) == 100.033  # nothing due at the old phase
        assert round(stream.send_due(100.033), 6) == 100.053
        assert round(stream.send_due(100.053), 6) == 100.073
        packets = [peer.packet() for _ in range(3)]
        try:
            stream.shift_schedule(-0.001)
        except ValueError as error:
            assert "only later" in str(error)
        else:
            raise AssertionError("a schedule moved earlier")
    finally:
        stream.pair.close()
        peer.sock.close()
    stamps = [stamp for _, _, stamp, _ in packets]
    sequences = [sequence for _, sequence, _, _ in packets]
    assert [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:])] == [160 + 13 * 8, 160]
    assert [(b - a) & 0xFFFF for a, b in zip(sequences, sequences[1:])] == [1, 1]  # no packet missing
    assert [marker for marker, _, _, _ in packets] == [0, 0, 0]


def test_no_early_talkspurt_behind_a_cached_phrase_or_right_before_a_slot():
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)
        live = LiveSource()
        stream.queue.enqueue(live)
        live.push(b"\x01" * 160)
        assert stream.start_talkspurt(100.0195) is False  # the next slot is 0.5 ms away
        assert stream.next_due == 100.020
        stream.pair.rtp.close()  # nothing must be sent from here on
        held = _stream(peer)
        held.start(200.0)
        filler = LiveSource()
        filler.push(b"\x03" * 160)
        held.queue.enqueue(filler)  # a live source that has audio, but audio is playing
        held.send_due(200.020)
        second = LiveSource()
        held.queue.enqueue(second)
        second.push(b"\x04" * 160)
        assert held.start_talkspurt(200.025) is False  # not silence now: it joins seamlessly
        held.pair.close()
    finally:
        stream.pair.rtcp.close()
        peer.sock.close()


def test_muxed_rtcp_read_without_a_kernel_time_is_stamped_with_the_wall_clock():
    from eko_rtp.media.rtcp import build_sender_report, ntp_from_unix

    peer = Peer()
    plan = sdp.MediaPlan(codec=sdp.Codec(name="PCMU", payload_type=0), telephone_event_payload_type=101,
                         remote_rtp=peer.sock.getsockname(), remote_rtcp=None, rtcp_mux=True,
                         send_audio=True, receive_audio=True)
    stream = MediaStream(pair=PortPair(port=0, rtp=_socket(), rtcp=_socket()), plan=plan,
                         queue=PlayoutQueue(SILENCE), counters=MediaCounters(), on_dtmf=lambda digit: None,
                         cname="test", wall_clock=lambda: 1700000000.25)
    report = build_sender_report(ssrc=0x1234, ntp_time=ntp_from_unix(1700000000.0), rtp_timestamp=0,
                                 packet_count=1, octet_count=160, report_blocks=(), cname="caller")
    try:
        # The hub samples the RTP port's arrival times: this one came without.
        stream.on_rtp(report, ("127.0.0.1", 4000), 5.0, None)
        assert stream.statistics._last_sr_arrival == 1700000000.25
        stream.on_rtp(report, ("127.0.0.1", 4000), 5.0, 1700000000.5)  # a stamped one keeps its time
        assert stream.statistics._last_sr_arrival == 1700000000.5
        assert stream.quality.reports_received == 2
    finally:
        stream.pair.close()
        peer.sock.close()


def test_audio_read_without_a_kernel_time_counts_for_loss_and_leaves_jitter_alone():
    peer = Peer()
    stream = _stream(peer)
    header = struct.Struct("!BBHII")
    caller = peer.sock.getsockname()  # the signalled address: only the caller's packets count (media/latch.py)
    try:
        for n in (0, 1, 2, 3, 4, 5, 6, 8, 9):  # 7 is lost
            packet = header.pack(0x80, 0, n, n * 160, 0x55) + SILENCE
            # One in five stamped, as the server registers the RTP port; the stamped
            # ones arrive exactly on time, so the jitter must stay 0.
            arrival = 1000.0 + n * 0.020 if n % 5 == 0 else None
            stream.on_rtp(packet, caller, 5.0, arrival)
        assert stream.statistics.cumulative_lost == 1  # unstamped packets count for loss
        assert stream.statistics.jitter == 0
        late = header.pack(0x80, 0, 10, 10 * 160, 0x55) + SILENCE
        stream.on_rtp(late, caller, 5.0, 1000.0 + 10 * 0.020 + 0.016)  # 16 ms late
        assert stream.statistics.jitter == 128 // 16  # J += (|D| - J)/16 with D = 128 units
    finally:
        stream.pair.close()
        peer.sock.close()


# -- SRTP (issue 19) -----------------------------------------------------------------

def _srtp_keys():
    from eko_rtp.media import sdes

    return sdes.SrtpKeys(suite=sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80, send_master=bytes(range(30)),
                         receive_master=bytes(range(1, 31)))


def _srtp_stream(peer: Peer, keys, counters=None) -> MediaStream:
    import attrs

    plan = sdp.MediaPlan(codec=sdp.Codec(name="PCMU", payload_type=0), telephone_event_payload_type=101,
                         remote_rtp=peer.sock.getsockname(), remote_rtcp=None, rtcp_mux=True,
                         send_audio=True, receive_audio=True)
    return MediaStream(pair=PortPair(port=0, rtp=_socket(), rtcp=_socket()), plan=attrs.evolve(plan, srtp_keys=keys),
                       queue=PlayoutQueue(SILENCE), counters=MediaCounters(), on_dtmf=lambda digit: None,
                       cname="test", srtp_counters=counters)


class _Recording:
    """Stands in for the RTP socket's send calls: what each frame hands the kernel, by type."""

    def __init__(self) -> None:
        self.sent = []

    def sendto(self, data, address) -> int:
        self.sent.append((type(data), data.obj if isinstance(data, memoryview) else None, bytes(data)))
        return len(data)


def test_srtp_frames_leave_as_a_view_of_the_cipher_buffer_and_decrypt_to_the_cached_audio():
    from pylibsrtp import Policy, Session

    from eko_rtp.media.playout import CachedSource

    peer = Peer()
    keys = _srtp_keys()
    stream = _srtp_stream(peer, keys)
    audio = bytes(range(256)) * 5  # eight frames of "cached" audio, behind a memoryview
    try:
        recording = _Recording()
        stream._sendto = recording.sendto
        stream.queue.enqueue(CachedSource(memoryview(audio)[:1280]))
        stream.start(100.0)
        for n in range(1, 8):
            stream.send_due(100.0 + n * 0.020)
    finally:
        stream.close()
        stream.pair.close()
        peer.sock.close()
    receiver = Session(policy=Policy(key=keys.send_master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                     srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    assert len(recording.sent) == 8
    # One sendto of a memoryview into the context's own buffer: no bytes object made per packet.
    assert all(kind is memoryview and owner is not None for kind, owner, _ in recording.sent)
    heard = b"".join(receiver.unprotect(data)[12:] for _, _, data in recording.sent)
    assert heard == audio[:1280]
    assert all(data[12:172] != audio[n * 160:(n + 1) * 160] for n, (_, _, data) in enumerate(recording.sent))


def test_a_forged_srtp_packet_is_dropped_counted_and_never_latched():
    from pylibsrtp import Policy, Session

    from eko_rtp.media.srtp import DropReason, SrtpCounters

    peer = Peer()
    keys = _srtp_keys()
    counters = SrtpCounters()
    stream = _srtp_stream(peer, keys, counters)
    digits = []
    stream.on_dtmf = digits.append
    caller = Session(policy=Policy(key=keys.receive_master, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                   srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    key_end = struct.pack("!BBHII", 0x80, 101, 7, 8000, 0xCA11) + struct.pack("!BBH", 5, 0x80 | 10, 800)
    stranger = ("127.0.0.9", 40000)
    caller_address = peer.sock.getsockname()
    try:
        stream.start(100.0)
        stream.on_rtp(key_end + b"\x00" * 10, stranger, 100.01, None)  # a clear key under a made-up tag
        protected = caller.protect(key_end)
        stream.on_rtp(protected, caller_address, 100.02, None)  # the caller's real "5"
        stream.on_rtp(protected, caller_address, 100.03, None)  # and its replay
    finally:
        stream.close()
        stream.pair.close()
        peer.sock.close()
    assert digits == ["5"]
    assert stream.caller_source == caller_address  # the forged packet latched nothing
    assert counters.rtp[DropReason.AUTHENTICATION] == 1 and counters.rtp[DropReason.REPLAY] == 1
    assert stream.srtp_dropped == 2 and stream.counters.packets_stray == 0


class _CallerFrames:
    """Stands in for the call's recorder on the ears' side: the caller's frames as heard."""

    def __init__(self) -> None:
        self.frames = []

    def caller_frame(self, frame) -> None:
        self.frames.append(bytes(frame))


def test_srtp_audio_held_behind_a_gap_survives_the_next_calls_packets():
    # The plaintext is a view of the receive buffer every call of the thread shares:
    # audio the reorder buffer keeps past on_rtp must be its own copy, not the view.
    from pylibsrtp import Policy, Session

    from eko_rtp.call.ears import CallerAudio
    from eko_rtp.media import sdes
    from eko_rtp.media.rtp import RtpSender

    peer, other_peer = Peer(), Peer()
    keys = _srtp_keys()
    other_keys = sdes.SrtpKeys(suite=keys.suite, send_master=bytes(range(2, 32)), receive_master=bytes(range(3, 33)))
    stream, other = _srtp_stream(peer, keys), _srtp_stream(other_peer, other_keys)
    heard = _CallerFrames()
    ears = CallerAudio(vad=None, on_speech=lambda event: None, recorder=heard)
    stream.on_audio = ears.feed

    def caller_packets(master: bytes, count: int) -> list[tuple[bytes, bytes]]:
        session = Session(policy=Policy(key=master, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                        srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        sender = RtpSender(payload_type=0)
        payloads = [bytes([n + 1]) * 160 for n in range(count)]
        return [(payload, session.protect(bytes(sender.header_for_next_frame(False)) + payload))
                for payload in payloads]

    ours = caller_packets(keys.receive_master, 4)
    theirs = caller_packets(other_keys.receive_master, 1)
    caller, other_caller = peer.sock.getsockname(), other_peer.sock.getsockname()
    try:
        stream.start(100.0)
        other.start(100.0)
        for index in (0, 2, 3):  # packet 1 is late: 2 and 3 wait for it in the reorder buffer
            stream.on_rtp(ours[index][1], caller, 100.02 * (index + 1), None)
        other.on_rtp(theirs[0][1], other_caller, 100.07, None)  # another call's packet, same buffer
        stream.on_rtp(ours[1][1], caller, 100.08, None)
    finally:
        for each in (stream, other):
            each.close()
            each.pair.close()
        peer.sock.close()
        other_peer.sock.close()
    assert heard.frames == [payload for payload, _ in ours]
    assert stream.srtp_dropped == 0 and other.srtp_dropped == 0 and other.counters.packets_received == 1


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def bot_frame(self, payload) -> None:
        self.frames.append(bytes(payload))


def test_frames_due_together_leave_in_order_late_ones_counted_and_recorded():
    peer = Peer()
    stream = _stream(peer, codec="PCMA")
    stream.recorder = recorder = Recorder()
    try:
        stream.start(100.0)  # frame 0, silence: the queue is empty
        assert stream.send_due(100.0465) == 100.060  # frames 1 and 2, 26.5 and 6.5 ms late
        packets = [peer.packet() for _ in range(3)]
    finally:
        stream.pair.close()
        peer.sock.close()
    counters = stream.counters
    assert (counters.frames_sent, counters.frames_late) == (3, 2)
    assert round(counters.max_lateness, 6) == 0.0265
    assert stream.frame_index == 3
    alaw_silence = SILENCE.translate(ULAW_TO_ALAW)
    assert [payload for _, _, _, payload in packets] == [alaw_silence] * 3  # PCMA: the cached PCMU translated
    assert recorder.frames == [alaw_silence] * 3  # the recorder hears what left
    sequences = [sequence for _, sequence, _, _ in packets]
    assert [(b - a) & 0xFFFF for a, b in zip(sequences, sequences[1:])] == [1, 1]


def test_a_held_stream_sends_nothing_and_its_timestamps_keep_counting():
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)
        first = peer.packet()
        stream.sending = False  # on hold
        assert stream.send_due(100.060) == 100.080  # frames 1-3 due: none sent
        stream.sending = True
        assert stream.send_due(100.080) == 100.100
        second = peer.packet()
    finally:
        stream.pair.close()
        peer.sock.close()
    assert stream.counters.frames_sent == 2
    assert (second[1] - first[1]) & 0xFFFF == 1  # no packet missing: none was sent
    assert (second[2] - first[2]) & 0xFFFFFFFF == 4 * 160  # but 80 ms of timestamps passed


@pytest.mark.parametrize("error, counted", [
    (BlockingIOError(11, "full"), "send_drops"),  # the socket's buffer is full: that frame is lost
    (OSError(101, "Network is unreachable"), "send_errors"),
])
def test_a_failed_send_is_counted_and_the_schedule_goes_on(error, counted):
    peer = Peer()
    stream = _stream(peer)
    stream.start(100.0)
    stream.pair.close()
    peer.sock.close()

    def failing(*arguments):
        raise error

    stream._sendmsg = failing
    assert stream.send_due(100.040) == 100.060
    counters = stream.counters
    assert (getattr(counters, counted), counters.frames_sent, stream.frame_index) == (2, 1, 3)


def test_a_bug_under_the_send_goes_up_with_the_frames_before_it_sent():
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)
        sends = []

        def buggy(buffers, ancillary, flags, address):
            sends.append(bytes(buffers[1]))
            if len(sends) == 2:
                raise ZeroDivisionError("a bug, not a network error")

        stream._sendmsg = buggy
        with pytest.raises(ZeroDivisionError, match="a bug"):
            stream.send_due(100.060)
    finally:
        stream.pair.close()
        peer.sock.close()
    assert stream.frame_index == 2  # frame 1 went; frame 2 raised: it is the next one due
    assert stream.counters.frames_sent == 2
    assert stream.counters.send_errors == 0


def test_a_closed_stream_sends_nothing_and_leaves_the_wheel():
    peer = Peer()
    stream = _stream(peer)
    try:
        stream.start(100.0)
        stream.close()
        assert stream.send_due(100.100) is None
    finally:
        stream.pair.close()
        peer.sock.close()
    assert stream.counters.frames_sent == 1


def test_each_kind_of_caller_packet_goes_where_it_belongs():
    """The receive path's table: what the ears hear, what counts, what becomes a digit."""
    peer = Peer()
    digits, heard = [], []
    stream = _stream(peer)
    stream.on_dtmf = digits.append
    stream.on_audio = lambda sequence, datagram, codec, now: heard.append(
        (sequence, None if datagram is None else bytes(datagram[12:14]), codec, now))
    header = struct.Struct("!BBHII")
    caller = peer.sock.getsockname()
    event = struct.Struct("!BBH")
    packets = [
        (header.pack(0x80, 0, 1, 160, 0x55) + b"\x01\x02" + SILENCE[2:], "audio"),
        (header.pack(0x80, 13, 2, 320, 0x55) + b"\x09", "comfort noise: no audio for the ears"),
        (header.pack(0x80, 101, 3, 480, 0x55) + event.pack(5, 0x80 | 10, 800), "the end of key 5"),
        (header.pack(0x80, 0, 4, 640, 0x55)[:11], "truncated"),
        (bytes([0x40]) + header.pack(0x80, 0, 5, 800, 0x55)[1:] + SILENCE, "version 1"),
        (header.pack(0x80, 0, 6, 960, 0x55) + SILENCE, "a stranger's"),
    ]
    try:
        for number, (packet, _) in enumerate(packets):
            source = ("127.0.0.1", 9) if number == 5 else caller
            stream.on_rtp(packet, source, 10.0 + number, None)
        invalid_rtp = stream.counters.packets_invalid
        stream.on_rtp(bytes([0x80, 200]) + bytes(26), caller, 20.0, None)  # RTCP (a broken SR) on the muxed port
    finally:
        stream.pair.close()
        peer.sock.close()
    assert heard == [(1, b"\x01\x02", "PCMU", 10.0), (2, None, "PCMU", 11.0), (3, None, "PCMU", 12.0)]
    assert digits == ["5"]
    counters = stream.counters
    assert (counters.packets_received, invalid_rtp, counters.packets_stray) == (3, 2, 1)
    assert stream.statistics.received == 2 and stream.statistics.extended_highest_sequence == 3  # 1: probation
    # The RTCP went to the RTCP path: it counts as heard from the caller, and as invalid there.
    assert (counters.packets_invalid, stream.quality.reports_received) == (3, 0)
    assert (stream.caller_ssrc, stream.last_inbound) == (0x55, 20.0)


def test_the_server_runs_the_compiled_frame_loop_when_it_was_built():
    try:
        from eko_rtp.media import _stream
    except ImportError:
        pytest.skip("media/_stream.c was not built (no C compiler or Python.h)")
    if os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("EKO_RTP_PURE_PYTHON asks for the Python twins")
    assert stream_module.StreamCore is _stream.StreamCore and issubclass(MediaStream, _stream.StreamCore)
    assert stream_module.PER_PACKET_PATHS == "compiled"


def test_the_python_twins_pass_the_same_tests():
    """The compiled parts are optional: a box without a C compiler runs the Python twins,
    so they must pass the same tests. Run again here with EKO_RTP_PURE_PYTHON=1."""
    if os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("this run is the Python twins' already")
    here = pathlib.Path(__file__).resolve().parent
    files = ["test_stream.py", "test_stream_guard.py", "test_shared_port.py", "test_rtp.py", "test_vad.py",
             "test_ears.py", "test_sip_message.py", "test_sip_hostile.py", "test_sip_useragent.py", "test_sdp.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(here / name) for name in files)],
        env={**os.environ, "EKO_RTP_PURE_PYTHON": "1"}, capture_output=True, text=True, timeout=300,
        cwd=here.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_a_stream_core_never_set_up_raises_instead_of_crashing():
    """The compiled core's members start empty: a subclass that forgets one gets an
    error naming it (the Python twin: AttributeError), never a crash of the server."""
    class Bare(stream_module.StreamCore):
        pass

    bare = Bare()
    bare.t0 = 0.0
    bare.sending = True
    with pytest.raises((RuntimeError, AttributeError)):
        bare.send_due(1.0)
    bare.sending = False
    with pytest.raises((RuntimeError, AttributeError)):
        bare.send_due(2.0)
    with pytest.raises((RuntimeError, AttributeError)):
        bare.on_rtp(bytes([0x80, 0]) + bytes(170), ("127.0.0.1", 9), 1.0, None)
