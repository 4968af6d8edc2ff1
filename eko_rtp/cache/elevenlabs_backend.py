"""The ElevenLabs render backend: studio-quality pre-renders through the official SDK.

Theory of operation: the synchronous ``elevenlabs`` client asks
``POST /v1/text-to-speech/{voice_id}?output_format=ulaw_8000``, which answers
headerless G.711 µ-law at 8 kHz (PCMU's payload, what the cache stores), so
nothing is transcoded; we only trim leading silence and pad to whole frames. Each
request runs in a worker thread (``trio.to_thread.run_sync``) and the builder keeps
four in flight, so a full catalogue takes seconds, not minutes.

Retries are ours, in trio, and the SDK's are off (``max_retries=0``): a 429 or a
5xx, a dropped connection or a stream cut midway is retried with exponential
backoff (or the server's ``Retry-After``), up to ``max_attempts``; anything else
fails the phrase. A 401 means the key is wrong: no retry can fix it, so it stops
the whole build with an error the operator can act on. A phrase is stored only
once its whole body arrived, so a broken stream never leaves a partial file.
"""

from __future__ import annotations

import os

import httpx
import trio
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError

from eko_rtp.cache.audio import finish_ulaw
from eko_rtp.cache.backend import RenderError
from eko_rtp.errors import UserError

__all__ = ["DEFAULT_MODEL", "DEFAULT_VOICE", "DOLLARS_PER_1000_CHARACTERS", "ElevenLabsBackend"]

DEFAULT_MODEL = "eleven_multilingual_v2"  # pre-renders favour quality over latency
DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"  # the live TTS default: cached and live phrases share a voice
DOLLARS_PER_1000_CHARACTERS = 0.11
OUTPUT_FORMAT = "ulaw_8000"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def _api_message(error: ApiError) -> str:
    """The ``detail.message`` of an ElevenLabs error body, or the body as text."""
    body = error.body
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            return detail["message"]
        if isinstance(detail, str):
            return detail
    return str(body)[:200]


def _retry_after(error: ApiError) -> float | None:
    value = (error.headers or {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


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
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._client = ElevenLabs(api_key=api_key, base_url=base_url, timeout=timeout)

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

    def _convert(self, text: str) -> bytes:
        """One request, in a worker thread: the whole body, or an exception."""
        chunks = self._client.text_to_speech.convert(
            self.voice,
            text=text,
            model_id=self.model,
            output_format=OUTPUT_FORMAT,
            request_options={"max_retries": 0},
        )
        return b"".join(chunks)

    async def render(self, text: str) -> bytes:
        """Cached-format µ-law for ``text``, retrying what a retry can fix."""
        last_error = "no attempt made"
        for attempt in range(self.max_attempts):
            delay = min(self.max_backoff, self.first_backoff * 2**attempt)
            try:
                body = await trio.to_thread.run_sync(self._convert, text, abandon_on_cancel=True)
            except ApiError as error:
                status = error.status_code
                if status == 401:
                    raise UserError(f"ElevenLabs rejected the API key (401: {_api_message(error)}); "
                                    "check ELEVENLABS_API_KEY") from None
                if status not in RETRYABLE_STATUSES:
                    raise RenderError(f"ElevenLabs answered {status}: {_api_message(error)}") from None
                last_error = f"HTTP {status}: {_api_message(error)}"
                server_delay = _retry_after(error)
                if server_delay is not None:
                    delay = min(self.max_backoff, server_delay)
            except httpx.TransportError as error:
                # Connection refused or reset, timeout, or a body cut before its end
                # (httpx.RemoteProtocolError): nothing usable arrived.
                last_error = f"{type(error).__name__}: {error}"
            else:
                try:
                    return finish_ulaw(body)
                except ValueError as error:
                    raise RenderError(f"ElevenLabs returned unusable audio: {error}") from None
            if attempt + 1 < self.max_attempts:
                await trio.sleep(delay)
        raise RenderError(f"ElevenLabs failed {self.max_attempts} times, last: {last_error}")
