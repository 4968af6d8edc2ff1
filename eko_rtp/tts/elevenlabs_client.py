"""The one ElevenLabs HTTP client: live speech and the phrase-cache build both ask through it.

Decision: ``httpx.AsyncClient`` under trio for both paths, not the SDK's clients.
Why, measured: the SDK's sync client in a worker thread hears a hang-up only at its
next chunk (and, as shipped, holds bytes back to fill its own chunk size) and renders
a catalogue no faster, and its async client, no faster than plain httpx, is safe
under trio only while its retries (``asyncio.sleep``) stay off. The SDK still serves
through its typed models (:mod:`eko_rtp.tts.elevenlabs_api`). Figures:
docs/BENCHMARKS.md, "ElevenLabs client: one for both paths".

Theory of operation: a thin trio shell around :mod:`eko_rtp.tts.elevenlabs_api`,
which builds the request, maps an answer to a failure and decides the retries.
:meth:`ElevenLabsClient.stream` (live) yields chunks as they arrive: it retries
only before the first byte, inside an absolute first-byte deadline, since once a
byte has gone to the caller a retry would repeat part of the sentence; afterwards a
stream that breaks or stalls raises :class:`TtsStreamBroken`. Cancellation closes
the response, which closes the connection mid-body, so the provider stops
generating. :meth:`ElevenLabsClient.convert` (the cache) wants the whole body, so a
stream cut midway is just another failed attempt. Either way a failure that is not
the provider's passing trouble (a refused key, a rejected request) is raised at
once, and a connection refused or reset counts as a server error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import httpx
import trio

from eko_rtp.tts.elevenlabs_api import ERROR_BODY_LIMIT, RetryPolicy, SpeechApi, error_from_answer_untrusted
from eko_rtp.tts.errors import TtsError, TtsServerError, TtsStreamBroken, TtsTimeout

__all__ = ["ElevenLabsClient"]

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class ElevenLabsClient:
    """Requests for one :class:`SpeechApi` over one connection pool (owned unless given)."""

    def __init__(self, api: SpeechApi, policy: RetryPolicy, *, timeout: float,
                 http: httpx.AsyncClient | None = None) -> None:
        self.api = api
        self.policy = policy
        self._own_http = http is None
        # Our own trio deadlines govern; httpx's timeout is only a backstop.
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self.retries_done = 0

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def stream(self, text: str, *, first_byte_timeout: float, stall_timeout: float) -> AsyncIterator[bytes]:
        """µ-law chunks of ``text`` as ElevenLabs streams them."""
        deadline = trio.current_time() + first_byte_timeout
        opened, chunks, first = await self._retrying(
            lambda: self._first_chunk(text, deadline, first_byte_timeout), deadline
        )
        async with opened:
            yield first
            received = len(first)
            while True:
                try:
                    with trio.fail_after(stall_timeout):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except trio.TooSlowError:
                    raise TtsStreamBroken(
                        f"ElevenLabs: stream stalled for {stall_timeout} s after {received} bytes"
                    ) from None
                except httpx.HTTPError as error:
                    raise TtsStreamBroken(
                        f"ElevenLabs: stream broken after {received} bytes: {type(error).__name__}: {error}"
                    ) from error
                received += len(chunk)
                yield chunk

    async def convert(self, text: str) -> bytes:
        """The whole µ-law body for ``text``."""
        return await self._retrying(lambda: self._whole_body(text), None)

    async def _retrying(self, attempt: Callable[[], Awaitable[Result]], deadline: float | None) -> Result:
        """``attempt()`` until it succeeds or :class:`RetryPolicy` gives up (then its last failure)."""
        retry = 0
        while True:
            try:
                return await attempt()
            except TtsError as error:
                retry += 1
                delay = self.policy.delay(error, retry, now=trio.current_time(), deadline=deadline)
                if delay is None:
                    raise
                log.info("ElevenLabs: %s; retry %d/%d in %.2f s", error, retry, self.policy.retries, delay)
                self.retries_done += 1
            await trio.sleep(delay)

    def _send(self, text: str, *, streaming: bool) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        request = self.api.request(text, streaming=streaming)
        return self._http.stream(request.method, request.url, params=request.params, headers=request.headers,
                                 json=request.json)

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= ERROR_BODY_LIMIT:
                break
        path = response.request.url.path
        raise error_from_answer_untrusted(response.status_code, response.headers, bytes(body), path)

    def _unreachable(self, error: httpx.TransportError) -> TtsServerError:
        reason = f"{type(error).__name__}: {error}"
        return TtsServerError(f"ElevenLabs at {self.api.base_url}: {reason}", reason=reason)

    async def _first_chunk(
        self, text: str, deadline: float, first_byte_timeout: float
    ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[bytes], bytes]:
        """One attempt: open the stream and wait for its first audio bytes, by ``deadline``.

        Returns the open response (to close when done), its chunks and the first one.
        """
        async with contextlib.AsyncExitStack() as attempt:
            with trio.move_on_at(deadline):
                try:
                    response = await attempt.enter_async_context(self._send(text, streaming=True))
                    await self._check(response)
                    # No chunk_size: httpx would hold bytes back until it had that many.
                    chunks = response.aiter_raw()
                    async for first in chunks:
                        if first:
                            return attempt.pop_all(), chunks, first
                except httpx.TransportError as error:
                    raise self._unreachable(error) from error
                raise TtsStreamBroken(f"ElevenLabs answered 200 with no audio for {len(text)} characters")
            raise TtsTimeout(f"ElevenLabs: no audio within {first_byte_timeout} s for {len(text)} characters")

    async def _whole_body(self, text: str) -> bytes:
        """One attempt at the whole body; a cut midway is a transport failure like any other."""
        try:
            async with self._send(text, streaming=False) as response:
                await self._check(response)
                return await response.aread()
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
