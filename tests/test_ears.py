"""The call's ears: packets in, ordered frames out to the VAD, the recognizer, audio_in and the recorder."""

from __future__ import annotations

import collections
import os
import struct

import pytest
import trio
import trio.testing

from eko_rtp.call import ears as ears_module
from eko_rtp.call.barge_in import BargeIn
from eko_rtp.call.ears import ASR_BATCH_FRAMES, ASR_FRAMES_KEPT, FRAMES_KEPT, CallerAudio
from eko_rtp.media.vad import SpeechEnded, SpeechStarted, VadSettings, VoiceActivityDetector

LOUD, QUIET = 0x10, 0xFF  # µ-law: a loud sample, and silence


class LoudIsSpeech:
    """A classifier for tests: a frame is speech when its first linear sample is loud."""

    def is_speech(self, pcm: bytearray) -> bool:
        return abs(int.from_bytes(pcm[0:2], "little", signed=True)) > 1000


def rtp(sequence: int, payload) -> bytes:
    """An RTP datagram carrying ``payload`` (the ears read the payload through the RTP core)."""
    return struct.pack("!BBHII", 0x80, 0, sequence & 0xFFFF, sequence * 160 & 0xFFFFFFFF, 0x1234) + bytes(payload)


def frame(byte: int) -> bytes:
    return bytes([byte]) * 160


def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector(VadSettings(gate_dbfs=None, min_speech_ms=60, hangover_ms=100, warmup_ms=0),
                                 classifier=LoudIsSpeech())


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def caller_frame(self, payload) -> None:
        self.frames.append(bytes(payload))


async def test_packets_out_of_order_reach_every_reader_in_order():
    recorder = Recorder()
    ears = CallerAudio(vad=None, on_speech=lambda event: None, recorder=recorder)
    asr = ears.open_asr_channel()
    reader = ears.frames_in()
    payloads = {n: bytes([n]) * 160 for n in range(6)}
    for sequence in (0, 2, 1, 3, 5, 4):  # 1 and 4 come late but within the window
        ears.feed(sequence, rtp(sequence, memoryview(payloads[sequence])), "PCMU", sequence * 0.02)
    ears.close()
    heard = [chunk async for chunk in reader]
    sent_to_asr = [chunk async for chunk in asr]
    assert heard == recorder.frames == [payloads[n] for n in range(6)]
    # The recognizer gets 100 ms batches, and what is left when the call ends.
    assert sent_to_asr == [b"".join(payloads[n] for n in range(5)), payloads[5]]
    assert ears.frames == 6


async def test_voice_activity_reaches_the_call_only_while_someone_wants_it():
    events = []
    demand = BargeIn()  # a script in call.listen() wants the VAD; none does at first
    ears = CallerAudio(vad=vad(), on_speech=events.append, vad_wanted=demand)
    sequence = 0
    for byte, count, want in ((LOUD, 10, False), (QUIET, 10, False), (LOUD, 5, True), (QUIET, 10, True)):
        demand.listeners = int(want)
        for _ in range(count):
            ears.feed(sequence, rtp(sequence, frame(byte)), "PCMU", sequence * 0.02)
            sequence += 1
    # Speech while nobody wanted the VAD: nothing. Then 3 loud frames start speech
    # (60 ms), and 5 quiet frames (100 ms hangover) end it. A packet's frame started
    # a period before it arrived: packet 20 came at 0.40 s, so its frame is at 0.38 s.
    assert events == [SpeechStarted(at=pytest.approx(0.38)),
                      SpeechEnded(at=pytest.approx(0.48), duration=pytest.approx(0.10))]


async def test_a_slow_reader_loses_the_oldest_frames_and_a_full_recognizer_channel_drops_the_newest():
    ears = CallerAudio(vad=None, on_speech=lambda event: None)
    reader = ears.frames_in()
    asr = ears.open_asr_channel()
    total = max(FRAMES_KEPT, ASR_FRAMES_KEPT) + 10
    for sequence in range(total):
        ears.feed(sequence, rtp(sequence, bytes([sequence % 256]) * 160), "PCMU", sequence * 0.02)
    assert ears.frames_dropped == total - FRAMES_KEPT
    batched = total // ASR_BATCH_FRAMES * ASR_BATCH_FRAMES  # the rest waits in the open batch
    assert ears.asr_frames_dropped == batched - ASR_FRAMES_KEPT
    kept = list(ears._ring)
    assert [chunk[0] for chunk in kept] == [n % 256 for n in range(total - FRAMES_KEPT, total)]
    queued = []
    while True:
        try:
            queued.append(asr.receive_nowait())
        except trio.WouldBlock:
            break
    assert b"".join(queued) == b"".join(bytes([n % 256]) * 160 for n in range(ASR_FRAMES_KEPT))


async def test_a_gap_the_caller_never_fills_is_given_up_after_the_patience(autojump_clock):
    recorder = Recorder()
    ears = CallerAudio(vad=None, on_speech=lambda event: None, recorder=recorder)
    async with trio.open_nursery() as nursery:
        ears.watch_gaps(nursery, 0.060)
        ears.feed(0, rtp(0, frame(1)), "PCMU", 0.0)
        ears.feed(2, rtp(2, frame(3)), "PCMU", 0.04)  # 1 is lost, and the caller pauses after 2
        assert len(recorder.frames) == 1
        await trio.sleep(0.059)
        assert len(recorder.frames) == 1
        await trio.sleep(0.002)
        assert recorder.frames == [frame(1), frame(QUIET), frame(3)]  # the gap as silence
        ears.close()
    assert ears.reorder.packets_concealed == 1


async def test_a_codec_change_starts_a_new_ordering_in_the_new_codecs_silence():
    recorder = Recorder()
    ears = CallerAudio(vad=None, on_speech=lambda event: None, recorder=recorder)
    ears.feed(100, rtp(100, frame(1)), "PCMU", 0.0)
    ears.feed(7, rtp(7, frame(2)), "PCMA", 0.02)  # a re-INVITE moved to A-law, from a new sequence
    ears.feed(9, rtp(9, frame(4)), "PCMA", 0.04)
    ears.flush(0.06)
    assert recorder.frames == [frame(1), frame(2), frame(0xD5), frame(4)]


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_packets_nobody_needs_are_skipped_and_hearing_starts_afresh():
    events = []
    demand = BargeIn()
    demand.listeners = 1
    ears = CallerAudio(vad=vad(), on_speech=events.append, vad_wanted=demand)
    for sequence in range(4):
        ears.feed(sequence, rtp(sequence, frame(QUIET)), "PCMU", sequence * 0.02)
    demand.listeners = 0
    for sequence in range(4, 60):  # 56 packets nobody needs: not even put in order
        ears.feed(sequence, rtp(sequence, frame(LOUD)), "PCMU", sequence * 0.02)
    assert ears.frames == 4 and events == []
    demand.listeners = 1
    for sequence in range(60, 64):  # no 56 frames of stale gap: hearing starts again here
        ears.feed(sequence, rtp(sequence, frame(LOUD)), "PCMU", sequence * 0.02)
    assert ears.frames == 8 and ears.reorder.packets_concealed == 0
    assert events == [SpeechStarted(at=pytest.approx(1.18))]


async def test_the_payload_is_read_past_csrcs_and_a_header_extension_and_no_audio_takes_its_number():
    recorder = Recorder()
    ears = CallerAudio(vad=None, on_speech=lambda event: None, recorder=recorder)
    # CC=1 and X=1: one CSRC, then a one-word extension, then the payload (RFC 3550 §5.1, §5.3.1).
    extended = (struct.pack("!BBHII", 0x90 | 1, 0, 0, 0, 0x1234) + struct.pack("!I", 0xCAFE)
                + struct.pack("!HHI", 0xBEDE, 1, 0x01020304) + frame(5))
    ears.feed(0, extended, "PCMU", 0.0)
    ears.feed(1, None, "PCMU", 0.02)  # an RFC 4733 event: no audio, no gap either
    ears.feed(2, rtp(2, frame(7)), "PCMU", 0.04)
    ears.feed(3, b"\x80\x00", "PCMU", 0.06)  # truncated: counted, not heard
    ears.flush(0.1)
    assert recorder.frames == [frame(5), frame(7)]
    assert ears.packets_invalid == 1 and ears.reorder.packets_concealed == 0


class Sink:
    """A synchronous recognizer sink that takes ``room`` batches and drops the rest."""

    def __init__(self, room: int = 100):
        self.batches: list[bytes] = []
        self.room = room
        self.closed = False

    def send_nowait(self, batch: bytes) -> None:
        if len(self.batches) >= self.room:
            raise trio.WouldBlock
        self.batches.append(batch)

    def close(self) -> None:
        self.closed = True


def test_diverted_batches_reach_the_sink_in_order_those_already_waiting_first():
    ears = CallerAudio(vad=None, on_speech=lambda event: None)
    audio = ears.open_asr_channel()
    payloads = [bytes([n]) * 160 for n in range(12)]
    for sequence in range(5):  # one batch waits in the channel before the divert
        ears.feed(sequence, rtp(sequence, payloads[sequence]), "PCMU", sequence * 0.02)
    sink = Sink()
    audio.divert(sink)
    for sequence in range(5, 12):
        ears.feed(sequence, rtp(sequence, payloads[sequence]), "PCMU", sequence * 0.02)
    assert sink.batches == [b"".join(payloads[0:5]), b"".join(payloads[5:10])]
    assert not sink.closed
    ears.close()  # the call ended: the open batch goes, then the end
    assert sink.batches[2:] == [b"".join(payloads[10:12])] and sink.closed
    with pytest.raises(trio.ClosedResourceError):  # the channel is no longer read
        audio.receive_nowait()


def test_a_sink_that_drops_a_batch_is_counted_and_one_diverted_after_the_end_is_closed_at_once():
    ears = CallerAudio(vad=None, on_speech=lambda event: None)
    audio = ears.open_asr_channel()
    sink = Sink(room=1)
    audio.divert(sink)
    for sequence in range(10):
        ears.feed(sequence, rtp(sequence, bytes([sequence]) * 160), "PCMU", sequence * 0.02)
    assert len(sink.batches) == 1
    assert ears.asr_frames_dropped == ASR_BATCH_FRAMES
    ended = CallerAudio(vad=None, on_speech=lambda event: None)
    late = ended.open_asr_channel()
    ended.close()
    sink = Sink()
    late.divert(sink)
    assert sink.closed and sink.batches == []


def test_the_compiled_ears_run_when_they_were_built():
    try:
        from eko_rtp.call import _ears
    except ImportError:
        pytest.skip("call/_ears.c was not built (no C compiler or Python.h)")
    if os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("EKO_RTP_PURE_PYTHON asks for the Python twins")
    assert ears_module.EarsCore is _ears.EarsCore and issubclass(CallerAudio, _ears.EarsCore)
    assert ears_module.HEARING == "compiled"


def test_an_ears_core_never_set_up_raises_instead_of_crashing():
    """The core's members start empty: a subclass that forgets one gets an error,
    never a crash of the server."""
    class Bare(ears_module.EarsCore):
        pass

    bare = Bare()
    bare.closed = False
    bare._vad = bare._vad_wanted = bare._asr = bare._ring = bare._recorder = None
    bare.feed(0, rtp(0, frame(1)), "PCMU", 0.0)  # nobody needs the audio: skipped, nothing else read
    bare._ring = collections.deque()
    with pytest.raises((RuntimeError, AttributeError)):  # no codec, no way to switch it
        bare.feed(1, rtp(1, frame(1)), "PCMU", 0.02)
    bare._codec, bare._idle, bare._reorder = "PCMU", False, None
    with pytest.raises((RuntimeError, AttributeError)):  # no reorder buffer
        bare.feed(2, rtp(2, frame(1)), "PCMU", 0.04)
    assert not bare._ring
