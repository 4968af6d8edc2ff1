"""What a call says next, one 20 ms frame at a time (sans-I/O).

Theory of operation: a call's outgoing audio is a queue of *sources*. The frame
clock asks :meth:`PlayoutQueue.next_frame` once per frame period and always gets a
160-byte payload: the current source's next frame, or silence when the queue is
empty or a live source has not produced its next frame yet. The stream is therefore
continuous from the 200 OK to the end of the call, which keeps the caller's jitter
buffer primed between phrases.

Sources:
- :class:`CachedSource`: zero-copy frames of a memory-mapped phrase.
- :class:`LiveSource`: frames pushed as they arrive (live TTS); while it waits for
  its next frame the queue plays silence, and it ends when ``end()`` was called and
  its frames are drained.
- :class:`SilenceSource`: a pause of a set number of frames.

A source's ``on_finished`` callback runs when its last frame has been handed out
(the shell sends it in the same synchronous step, so by the time a waiting task
runs the frame has left). ``marker`` is true on the first frame of a talkspurt
(RFC 3551 §4.1): the first audio frame after silence.
"""

from __future__ import annotations

import collections
from typing import Callable

from eko_rtp.codec.frame import FRAME_BYTES


Callback = Callable[[], None]


class Source:
    """A piece of outgoing audio; subclasses implement :meth:`take` and :attr:`exhausted`."""

    silent = False
    frames_played = 0  # frames of this source handed to the sender (barge-in reports it)

    def __init__(self, on_finished: Callback | None = None):
        self.on_finished = on_finished
        self.cancelled = False

    def take(self) -> memoryview | bytes | None:
        """The next frame; ``None`` when nothing is left; ``WAITING`` when a live source underruns."""
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """True once the last frame has been taken (so the source can finish at once)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop this source at the next frame (barge-in, the script moving on)."""
        self.cancelled = True


WAITING = b""  # sentinel: the source lives but has no frame yet


class CachedSource(Source):
    """A memory-mapped phrase, read frame by frame without copying."""

    def __init__(self, audio: memoryview, on_finished: Callback | None = None):
        super().__init__(on_finished)
        if len(audio) % FRAME_BYTES:
            raise ValueError(f"cached audio must be whole 160-byte frames, got {len(audio)} bytes")
        self._audio = audio
        self._length = len(audio)
        self._offset = 0

    @property
    def frames_played(self) -> int:
        return self._offset // FRAME_BYTES

    def take(self) -> memoryview | None:
        if self.cancelled or self._offset >= self._length:
            return None
        start = self._offset
        self._offset = start + FRAME_BYTES
        return self._audio[start : start + FRAME_BYTES]

    @property
    def exhausted(self) -> bool:
        return self.cancelled or self._offset >= self._length


class SilenceSource(Source):
    """A pause: ``frames`` frames of silence."""

    silent = True

    def __init__(self, frames: int, silence: bytes, on_finished: Callback | None = None):
        super().__init__(on_finished)
        self._left = frames
        self._silence = silence

    def take(self) -> bytes | None:
        if self.cancelled or self._left <= 0:
            return None
        self._left -= 1
        return self._silence

    @property
    def exhausted(self) -> bool:
        return self.cancelled or self._left <= 0


class LiveSource(Source):
    """Frames pushed as they arrive; silence while waiting for the next one."""

    def __init__(self, on_finished: Callback | None = None):
        super().__init__(on_finished)
        self._frames: collections.deque[bytes | memoryview] = collections.deque()
        self._ended = False
        self.underruns = 0
        self.frames_played = 0
        # Called once, when the first frame is pushed: the shell may start the
        # talkspurt at once instead of at the stream's next 20 ms slot.
        self.on_first_frame: Callback | None = None

    def push(self, frame: bytes | memoryview) -> None:
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"live frames must be {FRAME_BYTES} bytes, got {len(frame)}")
        self._frames.append(frame)
        if self.on_first_frame is not None:
            callback, self.on_first_frame = self.on_first_frame, None
            callback()

    def end(self) -> None:
        """No more frames will come: finish once the pushed ones are played."""
        self._ended = True

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def take(self) -> bytes | memoryview | None:
        if self.cancelled:
            return None
        if self._frames:
            self.frames_played += 1
            return self._frames.popleft()
        if self._ended:
            return None
        self.underruns += 1
        return WAITING

    @property
    def exhausted(self) -> bool:
        return self.cancelled or (self._ended and not self._frames)


class PlayoutQueue:
    """The sources a call will play, in order, and the silence between them."""

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = ("silence", "_sources", "_in_silence")

    def __init__(self, silence: bytes):
        if len(silence) != FRAME_BYTES:
            raise ValueError("silence must be one 160-byte frame")
        self.silence = silence
        self._sources: collections.deque[Source] = collections.deque()
        self._in_silence = True  # the first audio frame of the call starts a talkspurt

    def enqueue(self, source: Source) -> None:
        self._sources.append(source)

    def clear(self) -> None:
        """Drop everything queued (barge-in); each dropped source is finished."""
        while self._sources:
            self._finish(self._sources.popleft(), cancel=True)

    @property
    def idle(self) -> bool:
        return not self._sources

    def talkspurt_ready(self) -> bool:
        """True when the next frame would start a talkspurt from a live source that has
        audio now: silence is playing and a live source heads the queue with frames."""
        if not self._in_silence or not self._sources:
            return False
        head = self._sources[0]
        return isinstance(head, LiveSource) and not head.cancelled and head.buffered > 0

    def next_frame(self) -> tuple[bytes | memoryview, bool]:
        """The payload for the next frame period and whether it starts a talkspurt."""
        sources = self._sources
        if sources:
            # The common case, inline: a cached phrase in the middle of playing.
            source = sources[0]
            if source.__class__ is CachedSource and not source.cancelled:
                start = source._offset
                end = start + FRAME_BYTES
                if end < source._length:  # not its last frame (that one finishes it)
                    source._offset = end
                    marker = self._in_silence
                    self._in_silence = False
                    return source._audio[start:end], marker
        while sources:
            source = sources[0]
            frame = source.take()
            if frame is None:  # cancelled, or empty from the start
                self._finish(sources.popleft())
                continue
            if source.exhausted:  # its last frame is leaving now: wake the waiter now
                self._finish(sources.popleft())
            if frame is WAITING or source.silent:
                self._in_silence = True
                return self.silence, False
            marker = self._in_silence
            self._in_silence = False
            return frame, marker
        self._in_silence = True
        return self.silence, False

    @staticmethod
    def _finish(source: Source, *, cancel: bool = False) -> None:
        if cancel:
            source.cancel()
        if source.on_finished is not None:
            callback, source.on_finished = source.on_finished, None
            callback()
