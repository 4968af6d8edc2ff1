"""What a call hears: the caller's audio in order, its voice activity, and who gets it.

Theory of operation: the media stream hands every inbound audio packet (the
negotiated codec's payload type; telephone-events are kept out) to
:meth:`CallerAudio.feed`, synchronously, from the receive hub. The packet goes
through the call's :class:`~eko_rtp.media.reorder.ReorderBuffer` (a 60 ms window:
late and missing packets become counted silence), and each 20 ms frame that comes
out goes, in order, to:

- the voice activity detector (:mod:`eko_rtp.media.vad`), whose speech start and
  end events go to the call at once (barge-in is decided in the same step, so the
  frame clock's next tick already plays silence). The detector is the costly part
  (a few µs a frame: docs/BENCHMARKS.md), so it only hears frames while
  ``vad_wanted.wants_voice_activity`` says someone needs its decisions (an
  interruptible phrase is playing, or a script listens: the call's
  :class:`~eko_rtp.call.barge_in.BargeIn` keeps that attribute up to date, so
  asking costs no call per packet); frames it skipped count as unvoiced when it
  hears again;
- the speech recognizer's channel, when one is open, in batches of
  ``ASR_BATCH_FRAMES`` (100 ms: one websocket message per 20 ms frame cost the
  client most of a core at a few hundred calls, docs/BENCHMARKS.md); a batch is
  sent early when the VAD hears speech end, and at the end of the call. Bounded: a
  recognizer that falls behind loses batches, counted in ``asr_frames_dropped``.
  A recognizer that only queues the batches for another process (the relay,
  eko_rtp/asr/relay_client.py) diverts them to a synchronous sink
  (:meth:`AsrAudio.divert`): each batch goes there from this step, with no task of
  the call to wake for it (a task step per batch per call was a measurable share of
  the media core, docs/BENCHMARKS.md);
- the script's ``audio_in`` subscribers (a ring of ``FRAMES_KEPT`` frames: a slow
  reader loses the oldest, counted in ``frames_dropped``);
- the call's recorder, when recording is on.

While nobody needs the caller's audio (no VAD decision wanted, no recognizer, no
reader, no recording: a call between questions without speech recognition) the
packets are only counted by the stream; the reorder buffer starts afresh when
someone needs audio again, so no stale gap turns into a burst of silence.

Nothing here blocks or awaits in :meth:`feed`; nothing is buffered without bound.
Frames are the codec's payload as it came (no transcoding): G.711 µ-law or A-law.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import AsyncIterator, Callable, Protocol

import trio

from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS
from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE
from eko_rtp.media.reorder import ReorderBuffer
from eko_rtp.media.rtp import RtpError, payload_bounds_untrusted
from eko_rtp.media.vad import PER_FRAME_PATH, SpeechEnded, SpeechStarted, VoiceActivityDetector

log = logging.getLogger("eko_rtp.call")

FRAMES_KEPT = 50  # 1 s of audio for a script reading call.audio_in
ASR_BATCH_FRAMES = 5  # frames per message to the recognizer (100 ms)
ASR_FRAMES_KEPT = 250  # 5 s of audio waiting for the recognizer's connection

SpeechEvent = SpeechStarted | SpeechEnded
_NO_AUDIO = memoryview(b"")


class VadDemand(Protocol):
    """Who says whether the VAD's decisions are needed now (a call's BargeIn)."""

    wants_voice_activity: bool


class AsrSink(Protocol):
    """Where diverted recognizer batches go, synchronously."""

    def send_nowait(self, batch: bytes) -> None:
        """Take a batch; raise ``trio.WouldBlock`` when it had to be dropped."""

    def close(self) -> None:
        """No more batches: the call's audio ended."""


class AsrAudio:
    """The caller's audio for one recognizer: batches to read (``async for``, ``receive_nowait``),
    or to divert to a synchronous sink."""

    __slots__ = ("_receive", "_ears")

    def __init__(self, receive: trio.MemoryReceiveChannel, ears: "CallerAudio"):
        self._receive = receive
        self._ears = ears

    def __aiter__(self):
        return self._receive.__aiter__()

    def receive_nowait(self) -> bytes:
        return self._receive.receive_nowait()

    def divert(self, sink: AsrSink) -> None:
        """From now on every batch goes to ``sink`` as it is made; those already waiting go first,
        in order. ``sink.close()`` says the audio ended (at once if it already has)."""
        self._ears._divert_asr(self._receive, sink)


class PythonEarsCore:
    """What :meth:`feed` reads per packet, and ``feed`` and ``_hear``: the base of :class:`CallerAudio`.

    ``EarsCore`` is this or its compiled twin (call/_ears.c), which tests/test_ears.py
    holds to the same behaviour. What is not per packet is the subclass's, and the
    two methods only call it: a codec change (``_switch_codec``), speech events
    (``_speech``), a full recognizer batch (``_send_batch``) and a gap to wait out
    (``_watch_gap``). The payload's bounds come from
    :func:`~eko_rtp.media.rtp.payload_bounds_untrusted`, the packet's order from the
    :class:`~eko_rtp.media.reorder.ReorderBuffer`, the voice activity from the
    detector: the twins call the same ones.
    """

    __slots__ = ("_vad", "_vad_wanted", "_recorder", "_codec", "_reorder", "_last_frame_time", "_ring",
                 "_ring_ready", "_asr", "_asr_batch", "frames", "packets_invalid", "frames_dropped", "closed",
                 "_gap_watched", "_idle")

    def feed(self, sequence: int, datagram: bytes | None, codec: str, now: float) -> None:
        """One inbound RTP packet that arrived by ``now``: its datagram, or None when it
        carries no audio (an RFC 4733 event, comfort noise): that takes its sequence
        number and adds no audio."""
        if self.closed:
            return
        vad = self._vad
        if vad is not None and self._vad_wanted is not None and not self._vad_wanted.wants_voice_activity:
            vad = None  # asked once a packet, inline: a call per packet was a measurable share
        if vad is None and self._asr is None and self._ring is None and self._recorder is None:
            self._idle = True
            return
        if datagram is None:
            payload = _NO_AUDIO
        else:
            try:
                start, end = payload_bounds_untrusted(datagram)  # CSRCs, extension, padding
            except RtpError:
                self.packets_invalid += 1
                return
            # A slice of the datagram: bytes the VAD and the recognizer's batch read as
            # they are (a view would have to be copied for the VAD's decoding anyway).
            payload = datagram[start:end]
        if codec != self._codec or self._idle:
            self._idle = False
            self._switch_codec(codec)
        reorder = self._reorder
        frames = reorder.push(sequence, payload)
        if frames:
            self._hear(frames, now, vad)
        if reorder.held and not self._gap_watched:
            self._watch_gap()

    def _hear(self, frames: list, now: float, vad: VoiceActivityDetector | None) -> None:
        asr = self._asr
        ring = self._ring
        recorder = self._recorder
        count = len(frames)
        for index, frame in enumerate(frames):
            self.frames += 1
            # The frame's start: frames released together came one period apart.
            at = max(now - (count - index) * FRAME_SECONDS, self._last_frame_time + FRAME_SECONDS)
            self._last_frame_time = at
            if vad is not None:
                event = vad.feed(frame, self._codec, at)
                if event is not None:
                    self._speech(event)
            if asr is not None:
                batch = self._asr_batch
                batch += frame
                if len(batch) >= ASR_BATCH_FRAMES * FRAME_BYTES:
                    self._send_batch()
                    asr = self._asr
            if ring is not None:
                if len(ring) >= FRAMES_KEPT:
                    ring.popleft()
                    self.frames_dropped += 1
                ring.append(bytes(frame))
            if recorder is not None:
                recorder.caller_frame(frame)
        if ring is not None and self._ring_ready is not None:
            self._ring_ready.set()


# The compiled twin (call/_ears.c) when it was built, else the class above; both pass
# tests/test_ears.py. EKO_RTP_PURE_PYTHON=1 takes the Python one (to compare).
EarsCore: type = PythonEarsCore
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.call import _ears
    except ImportError:
        pass
    else:
        _ears.bind(payload_bounds_untrusted, RtpError, FRAMES_KEPT, ASR_BATCH_FRAMES * FRAME_BYTES, _NO_AUDIO)
        EarsCore = _ears.EarsCore

# What the start line says runs the caller's audio: the ears and the detector, both
# compiled, or Python.
HEARING = "compiled" if EarsCore is not PythonEarsCore and PER_FRAME_PATH == "compiled" else "python"


class CallerAudio(EarsCore):
    """The caller's side of one call's audio, from RTP packets to 20 ms frames and events."""

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    # What the per-packet paths read is EarsCore's.
    __slots__ = ("_on_speech", "_asr_receive", "asr_frames_dropped", "speaking", "_gap_nursery", "_gap_patience")

    def __init__(self, *, vad: VoiceActivityDetector | None, on_speech: Callable[[SpeechEvent], None],
                 recorder=None, vad_wanted: VadDemand | None = None):
        self._vad = vad
        self._vad_wanted = vad_wanted  # None: always
        self._on_speech = on_speech
        self._recorder = recorder
        self._codec = "PCMU"
        self._reorder = ReorderBuffer(ULAW_SILENCE)
        self._last_frame_time = -1.0
        self._ring: collections.deque | None = None  # made by the first audio_in reader
        self._ring_ready: trio.Event | None = None
        self._asr: trio.MemorySendChannel | AsrSink | None = None  # where batches go
        self._asr_receive: trio.MemoryReceiveChannel | None = None  # the other end of that channel
        self._asr_batch = bytearray()
        self.frames = 0  # frames heard
        self.packets_invalid = 0  # audio packets whose payload bounds made no sense
        self.frames_dropped = 0  # audio_in frames a slow reader lost
        self.asr_frames_dropped = 0
        self.closed = False
        self.speaking = False  # between SpeechStarted and SpeechEnded
        # Where a task waits out a gap (watch_gaps): started only while one is open.
        self._gap_nursery: trio.Nursery | None = None
        self._gap_patience = 0.0
        self._gap_watched = False
        self._idle = False  # packets were skipped: nobody needed them

    @property
    def reorder(self) -> ReorderBuffer:
        """The reorder buffer, for its counters (late, concealed, resets)."""
        return self._reorder

    def watch_gaps(self, nursery: trio.Nursery, patience: float) -> None:
        """Hear what waits behind a gap once the caller has sent nothing for ``patience`` s.

        The reorder buffer waits for a missing packet until later ones push it out;
        a caller that pauses right after a loss (DTX, the end of a phrase) pushes
        nothing, so a task of ``nursery`` (the call's) gives up on the gap instead.
        The task is started when a gap opens and ends with it: no task, and no
        wake-ups, per call otherwise.
        """
        self._gap_nursery = nursery
        self._gap_patience = patience

    def _watch_gap(self) -> None:
        if self._gap_nursery is None:
            return
        try:
            self._gap_nursery.start_soon(self._wait_out_gap)
        except RuntimeError:
            return  # the call's nursery is closing: the call is ending
        self._gap_watched = True

    async def _wait_out_gap(self) -> None:
        try:
            heard = -1
            while self._reorder.held and self.frames != heard:
                heard = self.frames
                await trio.sleep(self._gap_patience)
            if self._reorder.held and not self.closed:
                self.flush(trio.current_time())
        finally:
            self._gap_watched = False

    def flush(self, now: float) -> None:
        """The caller paused (or the call ends): give up on gaps and hear what is held."""
        frames = self._reorder.flush()
        if frames:
            self._hear(frames, now, self._wanted_vad())

    def close(self) -> None:
        """The call ended: end the speech in progress and every reader."""
        if self.closed:
            return
        self.closed = True
        self._gap_nursery = None  # no reference from the call's state to its finished nursery
        if self._vad is not None and self.speaking:
            event = self._vad.finish()
            if event is not None:
                self._speech(event)
        self.close_asr_channel()
        if self._ring_ready is not None:
            self._ring_ready.set()

    # -- readers -----------------------------------------------------------------------

    def open_asr_channel(self) -> AsrAudio:
        """The frames from now on, for a speech recognizer (one at a time; ended at close)."""
        if self._asr is not None:
            self._asr.close()
        self._asr_batch.clear()
        send, receive = trio.open_memory_channel(ASR_FRAMES_KEPT // ASR_BATCH_FRAMES)
        if self.closed:
            send.close()
        else:
            self._asr = send
            self._asr_receive = receive
        return AsrAudio(receive, self)

    def _divert_asr(self, receive: trio.MemoryReceiveChannel, sink: AsrSink) -> None:
        current = self._asr is not None and self._asr_receive is receive
        waiting = []
        while True:
            try:
                waiting.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        receive.close()
        for batch in waiting:
            try:
                sink.send_nowait(batch)
            except trio.WouldBlock:
                self._asr_dropped(batch)
        if current:
            self._asr.close()
            self._asr = sink
            self._asr_receive = None
        else:
            sink.close()  # the audio had already ended (or another recognizer has it now)

    def close_asr_channel(self) -> None:
        """No more audio for the recognizer: what is batched goes first."""
        if self._asr is not None:
            self._send_batch()
            if self._asr is not None:
                self._asr.close()
                self._asr = None
                self._asr_receive = None

    def frames_in(self) -> AsyncIterator[bytes]:
        """The caller's 20 ms frames from now on (this call on), until the call ends."""
        if self._ring is None:
            self._ring = collections.deque()
        return self._read(self._ring)

    async def _read(self, ring: collections.deque) -> AsyncIterator[bytes]:
        while True:
            while not ring:
                if self.closed:
                    return
                self._ring_ready = trio.Event()
                await self._ring_ready.wait()
            yield ring.popleft()

    # -- internals -----------------------------------------------------------------------

    def _wanted_vad(self) -> VoiceActivityDetector | None:
        """The detector, while anyone needs its decisions."""
        vad = self._vad
        if vad is not None and self._vad_wanted is not None and not self._vad_wanted.wants_voice_activity:
            return None
        return vad

    def _switch_codec(self, codec: str) -> None:
        # A re-INVITE changed the codec, or the ears were idle: a new stream of frames,
        # in the codec's silence.
        self._codec = codec
        self._reorder = ReorderBuffer(ALAW_SILENCE if codec == "PCMA" else ULAW_SILENCE)

    def _send_batch(self) -> None:
        batch = self._asr_batch
        if not batch or self._asr is None:
            return
        try:
            self._asr.send_nowait(bytes(batch))
        except trio.WouldBlock:
            self._asr_dropped(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._asr = None
        batch.clear()

    def _asr_dropped(self, batch) -> None:
        self.asr_frames_dropped += -(-len(batch) // FRAME_BYTES)  # a short last batch is a frame too

    def _speech(self, event: SpeechEvent) -> None:
        self.speaking = isinstance(event, SpeechStarted)
        if not self.speaking:
            self._send_batch()  # the end of an utterance: no need to wait for a full batch
        try:
            self._on_speech(event)
        except Exception:
            log.exception("the call's speech handler failed")
