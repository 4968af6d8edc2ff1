"""A call's speech recognition: its recognizer stream, and the utterances a script reads.

Theory of operation: once the call is answered, :meth:`CallSpeech.run` (a task of
the call's nursery) opens a recognizer stream (:class:`~eko_rtp.asr.deepgram_client.DeepgramStream`)
fed from the call's ears (:meth:`~eko_rtp.call.ears.CallerAudio.open_asr_channel`:
the caller's in-order G.711 frames, not transcoded). The stream's events come back
here synchronously: interim transcripts replace :attr:`CallSpeech.interim` (for
barge-in decisions and logs); final ones are joined until the provider marks the end
of an utterance (``speech_final``, or ``UtteranceEnd``), and the whole utterance is
queued for the script (:meth:`next_utterance`; at most ``UTTERANCES_KEPT`` wait, the
oldest dropped first).

A recognizer failure (no key, key refused, provider unreachable or gone mid-call,
unreadable replies) never ends the call: it is logged once, reported through
``on_failure`` (the metrics), and the call goes on with DTMF: :attr:`available`
turns False and waiting readers are woken with ``None``. Seconds of audio streamed
are reported through ``on_audio_seconds`` when the stream ends (per call and in
total, like TTS characters).

Endpointing: the provider's endpointing is fixed per connection (``asr.endpointing_ms``,
short, for yes/no answers). A script that waits for a longer description asks
:meth:`listen` for a longer ``endpointing``: utterances that follow each other within
the difference, or while the caller is still speaking by our own VAD, are joined.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

import attrs
import trio

# Imported with this module, at the server's start, not by the first call's CallSpeech:
# that import took milliseconds of the first INVITE's way to its 200 OK.
from eko_rtp.asr.deepgram_api import AsrSettings, Transcript, UtteranceEnd
from eko_rtp.asr.deepgram_client import DeepgramStream
from eko_rtp.asr.errors import AsrError

log = logging.getLogger("eko_rtp.call")

UTTERANCES_KEPT = 8


@attrs.frozen(kw_only=True)
class SpeechSetup:
    """The server's speech recognition: what to ask the provider, and the key (never logged)."""

    settings: AsrSettings
    api_key: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Utterance:
    """What the caller said, once the recognizer settled it."""

    text: str
    confidence: float  # the lowest of its final parts (0..1)
    heard_at: float  # trio time the last part came


class CallSpeech:
    """One call's recognizer stream and the utterances it produced."""

    def __init__(self, *, settings: AsrSettings, api_key: str, ears, on_failure: Callable[[AsrError], None],
                 on_audio_seconds: Callable[[float], None], stream_factory=None):
        if stream_factory is None:
            stream_factory = DeepgramStream
        self._settings = settings
        self._api_key = api_key
        self._ears = ears
        self._on_failure = on_failure
        self._on_audio_seconds = on_audio_seconds
        self._stream_factory = stream_factory
        # Open from the start: the frames heard between the answer and the stream's
        # first step wait here (bounded), so the recognizer hears the call from frame 0.
        self._audio = ears.open_asr_channel()
        self._parts: list[str] = []
        self._confidence = 1.0
        self._utterances: collections.deque[Utterance] = collections.deque()
        self._arrived = trio.Event()
        self.interim = ""  # the provider's latest guess at what is being said
        self.available = True  # False once the stream failed or ended
        self.failure: AsrError | None = None
        self.utterances_dropped = 0
        self.seconds_streamed = 0.0

    async def run(self) -> None:
        """Stream the caller's audio until the call ends (or the recognizer fails); never raises AsrError."""
        audio = self._audio
        stream = self._stream_factory(settings=self._settings, api_key=self._api_key, on_event=self._on_event)
        try:
            await stream.run(audio)
        except AsrError as error:
            self.failure = error
            log.warning("speech recognition failed, going on with DTMF: %s", error)
            self._on_failure(error)
        finally:
            self._ears.close_asr_channel()
            self.available = False
            self.seconds_streamed = stream.seconds_sent
            self._on_audio_seconds(self.seconds_streamed)
            self._complete()
            self._arrived.set()

    def end_audio(self) -> None:
        """The call ended: no more audio (the stream then closes cleanly, CloseStream)."""
        self._ears.close_asr_channel()

    @property
    def endpointing(self) -> float:
        """The provider's own endpointing (s): the pause that settles an utterance."""
        milliseconds = self._settings.endpointing_ms
        return 0.0 if milliseconds is None else milliseconds / 1000

    # -- what the script reads ------------------------------------------------------------

    async def next_utterance(self, deadline: float) -> Utterance | None:
        """The next utterance, or ``None`` at ``deadline`` (trio time) or once recognition stopped."""
        with trio.move_on_at(deadline):
            while not self._utterances:
                if not self.available:
                    return None
                self._arrived = trio.Event()
                await self._arrived.wait()
            return self._utterances.popleft()
        return None

    def discard_pending(self) -> None:
        """Forget what was said before now (a new question)."""
        self._utterances.clear()
        self._parts.clear()
        self._confidence = 1.0

    # -- events from the stream ------------------------------------------------------------

    def _on_event(self, event) -> None:
        if isinstance(event, Transcript):
            if not event.is_final:
                self.interim = event.text
                return
            if event.text:
                self._parts.append(event.text)
                self._confidence = min(self._confidence, event.confidence)
            if event.speech_final:
                self._complete()
        elif isinstance(event, UtteranceEnd):
            self._complete()

    def _complete(self) -> None:
        if not self._parts:
            return
        text = " ".join(self._parts)
        self._parts = []
        self.interim = ""
        if len(self._utterances) >= UTTERANCES_KEPT:
            self._utterances.popleft()
            self.utterances_dropped += 1
        self._utterances.append(Utterance(text=text, confidence=self._confidence, heard_at=trio.current_time()))
        self._confidence = 1.0
        self._arrived.set()
