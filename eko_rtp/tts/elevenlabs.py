"""ElevenLabs streaming text-to-speech for live calls.

Theory of operation: one streamed request per utterance through the shared
:class:`~eko_rtp.tts.elevenlabs_client.ElevenLabsClient` (the one client that
speaks the ElevenLabs API, also used by ``eko-rtp cache build``), with the voice,
model and timing of :class:`~eko_rtp.tts.settings.TtsSettings`.

Time budget: the first audio byte must arrive by ``start + first_byte_timeout``
(absolute, across retries) or the speech fails with :class:`TtsTimeout`; the
caller would otherwise hear dead air. Failures before the first byte that the
provider marks as transient (429, 5xx, a connection refused or reset) are retried
with exponential backoff inside that budget; once a byte has gone to the caller
nothing is retried (the caller has heard part of the sentence), and a stream that
breaks or stalls for ``stall_timeout`` raises :class:`TtsStreamBroken`.
Cancellation closes the response, which closes the connection mid-body, so the
provider stops generating.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from eko_rtp.tts.backend import RenderIdentity
from eko_rtp.tts.elevenlabs_api import RetryPolicy, SpeechApi
from eko_rtp.tts.elevenlabs_client import ElevenLabsClient
from eko_rtp.tts.errors import TtsNoApiKey
from eko_rtp.tts.settings import OUTPUT_FORMAT, TtsSettings

# httpx's own timeout, a backstop behind the first-byte and stall deadlines.
HTTP_TIMEOUT = 30.0


class ElevenLabsBackend:
    """The paid, streaming backend. Its client owns an ``httpx.AsyncClient`` unless given one."""

    name = "elevenlabs"
    paid = True

    def __init__(self, settings: TtsSettings, *, client: httpx.AsyncClient | None = None):
        self.settings = settings
        self._client = None
        if settings.api_key:
            api = SpeechApi(
                api_key=settings.api_key,
                base_url=settings.base_url,
                voice_id=settings.voice_id,
                model_id=settings.model_id,
                optimize_streaming_latency=settings.optimize_streaming_latency,
                voice_settings=settings.voice_settings,
            )
            policy = RetryPolicy(
                retries=settings.retries, first_backoff=settings.retry_backoff, max_backoff=settings.retry_backoff_max
            )
            self._client = ElevenLabsClient(api, policy, timeout=HTTP_TIMEOUT, http=client)

    @property
    def retries_done(self) -> int:
        return self._client.retries_done if self._client is not None else 0

    def render_identity(self) -> RenderIdentity:
        settings: dict[str, object] = {"optimize_streaming_latency": self.settings.optimize_streaming_latency}
        if self.settings.voice_settings is not None:
            settings["voice_settings"] = dict(self.settings.voice_settings)
        return RenderIdentity(
            voice=self.settings.voice_id, model=self.settings.model_id, output_format=OUTPUT_FORMAT, settings=settings
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """µ-law chunks of ``text`` as ElevenLabs streams them."""
        if self._client is None:
            raise TtsNoApiKey("ElevenLabs: no API key configured (set tts api_key or ELEVENLABS_API_KEY)")
        chunks = self._client.stream(
            text, first_byte_timeout=self.settings.first_byte_timeout, stall_timeout=self.settings.stall_timeout
        )
        # aclosing: a cancelled speech closes the HTTP stream now, not when the GC finds it.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
