"""The live TTS engine: dynamic cache first, else stream a backend frame by frame.

Theory of operation: :meth:`TtsEngine.speak` looks the text up in the dynamic cache
(key: text + the backend's render identity). A hit pushes every cached frame to the
sink at once, zero-copy, with no request and no cost. A miss streams the backend:
each chunk goes through a :class:`~eko_rtp.tts.framer.FrameAssembler`, and every
whole 160-byte frame is pushed the moment it exists, so the caller hears the first
20 ms as soon as the first chunk lands. When the stream ends normally the last
partial frame is padded, the sink is told ``end()``, and the complete render is
stored (in a worker thread: the write fsyncs). A failure is logged, counted and
re-raised as a :class:`~eko_rtp.tts.errors.TtsError` after ``end()``; a
cancellation (hang-up, barge-in) closes the backend stream at once. Neither
stores anything: only complete renders enter the cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

import attrs
import trio

from eko_rtp.cache.audio import pad_to_frames
from eko_rtp.tts.accounting import CallTtsUsage, TtsAccounting
from eko_rtp.tts.backend import TtsBackend
from eko_rtp.tts.dynamic_cache import DynamicCache, render_key
from eko_rtp.tts.elevenlabs import ElevenLabsBackend
from eko_rtp.tts.errors import TtsError
from eko_rtp.tts.espeak import EspeakBackend
from eko_rtp.tts.framer import FrameAssembler
from eko_rtp.tts.settings import TtsSettings

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where spoken frames go (the lead adapts the call's playout queue to this)."""

    def push(self, frame: bytes | memoryview) -> None:
        """Queue one 160-byte µ-law frame; must not block."""

    def end(self) -> None:
        """No more frames for this utterance (called once, unless cancelled)."""


@attrs.frozen(kw_only=True)
class Spoken:
    """What one :meth:`TtsEngine.speak` did."""

    key: str
    frames: int
    from_cache: bool
    characters_billed: int
    stored: bool
    first_frame_latency: float | None  # seconds from speak() to the first push


def select_backend(settings: TtsSettings) -> TtsBackend:
    """ElevenLabs when an API key is configured, else espeak-ng."""
    if settings.api_key:
        return ElevenLabsBackend(settings)
    return EspeakBackend(settings)


class TtsEngine:
    """Speaks text into a :class:`FrameSink`; shared by every call of the process."""

    def __init__(
        self, settings: TtsSettings, backend: TtsBackend, dynamic_cache: DynamicCache, accounting: TtsAccounting
    ):
        self.settings = settings
        self.backend = backend
        self.dynamic_cache = dynamic_cache
        self.accounting = accounting

    @classmethod
    def from_settings(cls, settings: TtsSettings, *, environ: Mapping[str, str] | None = None) -> "TtsEngine":
        """Engine with the backend chosen by :func:`select_backend` and the cache at its configured place."""
        settings = settings.from_environment(environ)
        return cls(
            settings,
            select_backend(settings),
            DynamicCache(settings.dynamic_cache_dir, settings.dynamic_cache_max_bytes),
            TtsAccounting(settings.cost_per_1000_characters),
        )

    async def aclose(self) -> None:
        await self.backend.aclose()

    def key_for(self, text: str) -> str:
        identity = self.backend.render_identity()
        return render_key(
            text=text,
            voice=identity.voice,
            model=identity.model,
            output_format=identity.output_format,
            settings=identity.settings,
        )

    async def speak(self, text: str, sink: FrameSink, *, call: CallTtsUsage | None = None) -> Spoken:
        """Say ``text`` into ``sink``; raises :class:`TtsError` (already logged) on failure."""
        if not text.strip():
            raise ValueError("TtsEngine.speak: text is empty")
        started = trio.current_time()
        key = self.key_for(text)
        cached = self.dynamic_cache.get(key)
        if cached is not None:
            self.accounting.record_cache(call, hit=True)
            frames = cached.frames()
            for frame in frames:
                sink.push(frame)
            sink.end()
            return Spoken(
                key=key,
                frames=len(frames),
                from_cache=True,
                characters_billed=0,
                stored=False,
                first_frame_latency=0.0 if frames else None,
            )
        self.accounting.record_cache(call, hit=False)
        assembler = FrameAssembler()
        audio = bytearray()
        counted = False
        pushed = 0
        first_frame_latency = None
        try:
            async with contextlib.aclosing(self.backend.stream(text)) as chunks:
                async for chunk in chunks:
                    if not counted:  # the backend accepted the text: count it, whichever backend
                        counted = True
                        self.accounting.record_spoken(call, len(text), paid=self.backend.paid)
                    audio += chunk
                    for frame in assembler.feed(chunk):
                        if first_frame_latency is None:
                            first_frame_latency = trio.current_time() - started
                        sink.push(frame)
                        pushed += 1
        except TtsError as error:
            log.warning("tts %s failed after %d frames (%s): %s", self.backend.name, pushed, key[:12], error)
            self.accounting.record_failure(call, type(error).__name__)
            sink.end()
            raise
        for frame in assembler.finish():
            if first_frame_latency is None:
                first_frame_latency = trio.current_time() - started
            sink.push(frame)
            pushed += 1
        sink.end()
        # The stored render is exactly what was pushed: the audio, its last frame padded.
        stored = await self._store(key, pad_to_frames(audio))
        return Spoken(
            key=key,
            frames=pushed,
            from_cache=False,
            characters_billed=len(text) if counted and self.backend.paid else 0,
            stored=stored,
            first_frame_latency=first_frame_latency,
        )

    async def _store(self, key: str, audio: bytes) -> bool:
        """Put the complete render in the dynamic cache; a disk error only costs the caching."""
        try:
            return await trio.to_thread.run_sync(self.dynamic_cache.put, key, audio)
        except OSError as error:
            log.warning("tts: could not store render %s in the dynamic cache: %s", key[:12], error)
            return False
