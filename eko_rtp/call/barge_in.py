"""Barge-in: the caller speaks over an interruptible phrase, and the phrase stops.

Theory of operation: a script marks a ``say`` interruptible; while it plays, its
sources (a cached phrase, a live TTS stream, or both for ``say_hybrid``) are
registered here as one :class:`Playing`. The call's ears report the voice activity
detector's decisions to :meth:`BargeIn.on_speech` synchronously, from the receive
hub: on ``SpeechStarted`` every registered playback is interrupted at once, which
cancels its sources; the playout queue skips cancelled sources at the frame clock's
next tick, so the caller hears silence from the next frame on (sequence numbers and
timestamps go on: the stream itself never stops). The waiting ``say`` wakes, learns
that it was interrupted and how much was played, and its live TTS stream (if any)
is cancelled by ``say`` itself. A key pressed (DTMF) interrupts the same way
(:meth:`BargeIn.on_key`): a caller who answers "1" need not hear the end of "press
1 for yes".
"""

from __future__ import annotations

import attrs
import trio

from eko_rtp.codec.frame import FRAME_SECONDS
from eko_rtp.media.vad import SpeechEnded, SpeechStarted


@attrs.frozen(kw_only=True)
class Playback:
    """How a ``say`` went: ``interrupted`` by the caller's voice, after ``played`` seconds."""

    interrupted: bool = False
    played: float = 0.0


class Playing:
    """The sources of one ``say`` in progress."""

    __slots__ = ("sources", "interrupted")

    def __init__(self, sources: list) -> None:
        self.sources = sources
        self.interrupted = False

    def interrupt(self) -> None:
        self.interrupted = True
        for source in self.sources:
            source.cancel()

    def result(self) -> Playback:
        return Playback(interrupted=self.interrupted,
                        played=round(sum(source.frames_played for source in self.sources) * FRAME_SECONDS, 3))


class BargeIn:
    """One call's interruptible playbacks and the caller's voice activity."""

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = (
        "_playing", "speaking", "speech_started_at", "speech_ended_at", "interruptions", "_listeners", "_quiet",
        "wants_voice_activity",
    )

    def __init__(self) -> None:
        self._playing: set[Playing] = set()
        self.speaking = False
        self.speech_started_at: float | None = None  # the last SpeechStarted's ``at``
        self.speech_ended_at: float | None = None
        self.interruptions = 0
        self._listeners = 0
        self._quiet: trio.Event | None = None  # made when speech starts, set when it ends
        # Whether anyone needs the VAD's decisions now: an interruptible phrase, a
        # listener, or speech in progress (its end must be heard, see
        # :meth:`wait_for_quiet`). An attribute kept up to date by every change, not
        # a method: the ears read it for every inbound packet.
        self.wants_voice_activity = False

    @property
    def listeners(self) -> int:
        """Scripts waiting in ``call.listen()``: they want the VAD's view too."""
        return self._listeners

    @listeners.setter
    def listeners(self, count: int) -> None:
        self._listeners = count
        self._wants_changed()

    def _wants_changed(self) -> None:
        self.wants_voice_activity = bool(self._playing) or self._listeners > 0 or self.speaking

    async def wait_for_quiet(self, limit: float) -> None:
        """Return once the caller is not speaking (at most ``limit`` s): an interruptible
        phrase does not start over a caller still talking (turn taking)."""
        if self.speaking and self._quiet is not None:
            with trio.move_on_after(limit):
                await self._quiet.wait()

    def register(self, playing: Playing) -> None:
        self._playing.add(playing)
        self.wants_voice_activity = True

    def unregister(self, playing: Playing) -> None:
        self._playing.discard(playing)
        self._wants_changed()

    def on_key(self) -> None:
        """A key was pressed: it interrupts like speech (the digit itself goes to the script)."""
        self._interrupt()

    def _interrupt(self) -> None:
        if self._playing:
            self.interruptions += 1
            for playing in list(self._playing):
                playing.interrupt()
            self._playing.clear()
            self._wants_changed()

    def on_speech(self, event: SpeechStarted | SpeechEnded) -> None:
        """The ears' voice activity: speech starting interrupts whatever may be interrupted."""
        if isinstance(event, SpeechStarted):
            self.speaking = True
            self._quiet = trio.Event()
            self.speech_started_at = event.at
            self.wants_voice_activity = True
            self._interrupt()
        else:
            self.speaking = False
            if self._quiet is not None:
                self._quiet.set()  # its waiters hold it: the call need not
                self._quiet = None
            self.speech_ended_at = event.at
            self._wants_changed()
