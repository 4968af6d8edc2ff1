"""The ElevenLabs render backend: studio-quality pre-renders for the phrase cache.

Theory of operation: each phrase is one request through the shared
:class:`~eko_rtp.tts.elevenlabs_client.ElevenLabsClient` (the one client that
speaks the ElevenLabs API, also used for live speech), to the whole-body route
with ``output_format=ulaw_8000``: headerless G.711 µ-law at 8 kHz (PCMU's payload,
what the cache stores), so nothing is transcoded; we only trim leading silence and
pad to whole frames. The requests run in trio, and the builder keeps four in
flight, so a full catalogue takes seconds, not minutes.

A 429 or a 5xx, a dropped connection or a body cut midway is retried with
exponential backoff (or longer if the server's ``Retry-After`` asks), up to
``max_attempts``; anything else fails the phrase. A 401 means the key is wrong: no
retry can fix it, so it stops the whole build with an error the operator can act
on. A phrase is stored only once its whole body arrived, so a broken stream never
leaves a partial file.
"""

from __future__ import annotations

import os

from eko_rtp.cache.audio import finish_ulaw
from eko_rtp.cache.backend import RenderError
from eko_rtp.errors import UserError
from eko_rtp.tts.elevenlabs_api import RetryPolicy, SpeechApi
from eko_rtp.tts.elevenlabs_client import ElevenLabsClient
from eko_rtp.tts.errors import TtsAuthError, TtsError
from eko_rtp.tts.settings import COST_PER_1000_CHARACTERS, DEFAULT_BASE_URL, DEFAULT_VOICE_ID

__all__ = ["DEFAULT_MODEL", "DEFAULT_VOICE", "DOLLARS_PER_1000_CHARACTERS", "ElevenLabsBackend"]

DEFAULT_MODEL = "eleven_multilingual_v2"  # pre-renders favour quality over latency
DEFAULT_VOICE = DEFAULT_VOICE_ID  # the live TTS default: cached and live phrases share a voice
DOLLARS_PER_1000_CHARACTERS = COST_PER_1000_CHARACTERS


class ElevenLabsBackend:
    """Render phrases with ElevenLabs; see the module docstring for the retry rules."""

    name = "elevenlabs"
    dollars_per_1000_characters = DOLLARS_PER_1000_CHARACTERS

    def __init__(self, *, api_key: str, voice: str = DEFAULT_VOICE, model: str = DEFAULT_MODEL,
                 base_url: str | None = None, concurrency: int = 4, max_attempts: int = 5,
                 first_backoff: float = 0.5, max_backoff: float = 8.0, timeout: float = 60.0) -> None:
        if not api_key:
            raise UserError("ElevenLabs needs an API key: set ELEVENLABS_API_KEY")
        if concurrency < 1 or max_attempts < 1:
            raise ValueError(f"concurrency and max_attempts must be >= 1, got {concurrency}, {max_attempts}")
        self.voice = voice
        self.model = model
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        try:
            api = SpeechApi(api_key=api_key, base_url=base_url or DEFAULT_BASE_URL, voice_id=voice, model_id=model)
        except ValueError as error:  # a base URL or voice from the environment or the flags
            raise UserError(f"ElevenLabs: {error}") from None
        policy = RetryPolicy(retries=max_attempts - 1, first_backoff=first_backoff, max_backoff=max_backoff)
        self._client = ElevenLabsClient(api, policy, timeout=timeout)

    @classmethod
    def from_environment(cls, *, voice: str | None = None, model: str | None = None,
                         environ: dict[str, str] | None = None) -> ElevenLabsBackend:
        """Key and base URL from ``ELEVENLABS_API_KEY`` / ``ELEVENLABS_BASE_URL``; voice and
        model from the arguments, else ``ELEVENLABS_VOICE_ID`` / ``ELEVENLABS_MODEL_ID``."""
        environ = os.environ if environ is None else environ
        api_key = environ.get("ELEVENLABS_API_KEY", "")
        if not api_key:
            raise UserError("--backend elevenlabs needs an API key: set ELEVENLABS_API_KEY")
        return cls(
            api_key=api_key,
            voice=voice or environ.get("ELEVENLABS_VOICE_ID") or DEFAULT_VOICE,
            model=model or environ.get("ELEVENLABS_MODEL_ID") or DEFAULT_MODEL,
            base_url=environ.get("ELEVENLABS_BASE_URL") or None,
        )

    async def aclose(self) -> None:
        """Close the client's connections (the builder does not: they go with the process)."""
        await self._client.aclose()

    async def render(self, text: str) -> bytes:
        """Cached-format µ-law for ``text``, retrying what a retry can fix."""
        try:
            body = await self._client.convert(text)
        except TtsAuthError as error:
            raise UserError(f"ElevenLabs rejected the API key ({error.status}: {error.reason}); "
                            "check ELEVENLABS_API_KEY") from None
        except TtsError as error:
            if error.retryable:  # the policy gave up: every attempt failed, this way or another
                last = f"HTTP {error.status}: {error.reason}" if error.status is not None else error.reason
                raise RenderError(f"ElevenLabs failed {self.max_attempts} times, last: {last}") from None
            raise RenderError(f"ElevenLabs answered {error.status}: {error.reason}") from None
        try:
            return finish_ulaw(body)
        except ValueError as error:
            raise RenderError(f"ElevenLabs returned unusable audio: {error}") from None
