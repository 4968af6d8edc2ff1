"""ElevenLabs streaming text-to-speech over httpx, in trio.

Theory of operation: one ``POST {base_url}/v1/text-to-speech/{voice_id}/stream``
per utterance, ``output_format=ulaw_8000`` (PCMU's payload as is, no transcoding),
the key in the ``xi-api-key`` header. We use ``httpx.AsyncClient`` directly rather
than the SDK's async client because the SDK sleeps between retries with
``asyncio.sleep``, which fails under trio; the request shape is the SDK's.

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
import logging
from collections.abc import AsyncIterator

import httpx
import trio

from eko_rtp.tts.backend import RenderIdentity
from eko_rtp.tts.errors import (
    TtsAuthError,
    TtsError,
    TtsNoApiKey,
    TtsRateLimited,
    TtsRequestRejected,
    TtsServerError,
    TtsStreamBroken,
    TtsTimeout,
)
from eko_rtp.tts.settings import OUTPUT_FORMAT, TtsSettings

log = logging.getLogger(__name__)


def _error_detail(response: httpx.Response) -> str:
    """``status: message`` from an ElevenLabs JSON error body, or the start of the body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:200]
    if isinstance(detail, dict):
        return f"{detail.get('status')}: {detail.get('message')}"
    return str(detail)[:200]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class ElevenLabsBackend:
    """The paid, streaming backend. Owns an ``httpx.AsyncClient`` unless given one."""

    name = "elevenlabs"
    paid = True

    def __init__(self, settings: TtsSettings, *, client: httpx.AsyncClient | None = None):
        self.settings = settings
        self._own_client = client is None
        # Our own trio deadlines govern; httpx's timeout is only a backstop.
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0))
        self.retries_done = 0

    def render_identity(self) -> RenderIdentity:
        settings: dict[str, object] = {"optimize_streaming_latency": self.settings.optimize_streaming_latency}
        if self.settings.voice_settings is not None:
            settings["voice_settings"] = dict(self.settings.voice_settings)
        return RenderIdentity(
            voice=self.settings.voice_id, model=self.settings.model_id, output_format=OUTPUT_FORMAT, settings=settings
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def _request(self, text: str) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        params: dict[str, object] = {"output_format": OUTPUT_FORMAT}
        if self.settings.optimize_streaming_latency is not None:
            params["optimize_streaming_latency"] = self.settings.optimize_streaming_latency
        body: dict[str, object] = {"text": text, "model_id": self.settings.model_id}
        if self.settings.voice_settings is not None:
            body["voice_settings"] = dict(self.settings.voice_settings)
        return self._client.stream(
            "POST",
            f"{self.settings.base_url.rstrip('/')}/v1/text-to-speech/{self.settings.voice_id}/stream",
            params=params,
            json=body,
            headers={"xi-api-key": self.settings.api_key or "", "accept": "audio/basic"},
        )

    async def _check_status(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        await response.aread()
        where = f"ElevenLabs {response.request.url.path}"
        detail = _error_detail(response)
        status = response.status_code
        if status == 401:
            raise TtsAuthError(f"{where}: API key refused (401 {detail})")
        if status == 429:
            raise TtsRateLimited(f"{where}: rate limited (429 {detail})", retry_after=_retry_after(response))
        if status >= 500:
            raise TtsServerError(f"{where}: server error ({status} {detail})")
        raise TtsRequestRejected(f"{where}: request rejected ({status} {detail})")

    async def _first_chunk(
        self, stack: contextlib.AsyncExitStack, text: str, deadline: float
    ) -> tuple[AsyncIterator[bytes], bytes]:
        """Open the stream and wait for its first audio bytes, by ``deadline``."""
        with trio.move_on_at(deadline) as scope:
            try:
                response = await stack.enter_async_context(self._request(text))
                await self._check_status(response)
                # No chunk_size: httpx would hold bytes back until it had that many.
                chunks = response.aiter_raw()
                async for first in chunks:
                    if first:
                        return chunks, first
            except httpx.TransportError as error:
                raise TtsServerError(f"ElevenLabs at {self.settings.base_url}: {type(error).__name__}: {error}") from error
            raise TtsStreamBroken(f"ElevenLabs answered 200 with no audio for {len(text)} characters")
        assert scope.cancelled_caught
        raise TtsTimeout(
            f"ElevenLabs: no audio within {self.settings.first_byte_timeout} s for {len(text)} characters"
        )

    async def _backoff(self, error: TtsError, attempt: int, deadline: float) -> None:
        """Sleep before retry ``attempt`` (1-based), or re-raise if out of tries or time."""
        if attempt > self.settings.retries:
            raise error
        delay = min(self.settings.retry_backoff * 2 ** (attempt - 1), self.settings.retry_backoff_max)
        if isinstance(error, TtsRateLimited) and error.retry_after is not None:
            delay = min(max(delay, error.retry_after), self.settings.retry_backoff_max)
        if trio.current_time() + delay >= deadline:
            raise error
        log.info("ElevenLabs: %s; retry %d/%d in %.2f s", error, attempt, self.settings.retries, delay)
        self.retries_done += 1
        await trio.sleep(delay)

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """µ-law chunks of ``text`` as ElevenLabs streams them."""
        if not self.settings.api_key:
            raise TtsNoApiKey("ElevenLabs: no API key configured (set tts api_key or ELEVENLABS_API_KEY)")
        deadline = trio.current_time() + self.settings.first_byte_timeout
        attempt = 0
        while True:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    chunks, first = await self._first_chunk(stack, text, deadline)
                except TtsError as error:
                    if not error.retryable:
                        raise
                    failure = error
                else:
                    yield first
                    async for chunk in self._rest(chunks, received=len(first)):
                        yield chunk
                    return
            attempt += 1
            await self._backoff(failure, attempt, deadline)

    async def _rest(self, chunks: AsyncIterator[bytes], *, received: int) -> AsyncIterator[bytes]:
        while True:
            try:
                with trio.fail_after(self.settings.stall_timeout):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except trio.TooSlowError:
                raise TtsStreamBroken(
                    f"ElevenLabs: stream stalled for {self.settings.stall_timeout} s after {received} bytes"
                ) from None
            except httpx.HTTPError as error:
                raise TtsStreamBroken(
                    f"ElevenLabs: stream broken after {received} bytes: {type(error).__name__}: {error}"
                ) from error
            received += len(chunk)
            yield chunk
