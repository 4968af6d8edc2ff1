"""One call: the object a call script talks to, and the nursery that lives as long as the call.

Theory of operation: when the SIP core reports an ``IncomingCall`` the server builds a
:class:`Call` (the negotiated media plan, the RTP stream on its own port pair) and runs
:func:`run_call` in the server's call nursery. ``run_call`` opens *one nursery per
call* holding the call's SIP dialog task (re-INVITEs, INFO DTMF, the end of the
dialog), its RTCP task, its inactivity and maximum-duration watchdog and the call
script. However the call ends (BYE from either side, CANCEL, no ACK, session expiry,
no inbound RTP, the maximum duration, the script returning or failing) the nursery is
cancelled and the ``finally`` gives back everything: the stream leaves the frame
clock, its sockets leave the receive hub and are closed, the ports return to the
pool. Nothing the call started outlives it.

The call is answered (200 OK) when the script first queues audio, or calls
:meth:`Call.answer`, or after ``answer_timeout``: the greeting's first frame then leaves
in the same synchronous step as the 200 OK, not at the next clock tick.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Awaitable, Callable

import attrs
import trio

from eko_rtp.media.playout import CachedSource, LiveSource, SilenceSource
from eko_rtp.tts.errors import TtsError

log = logging.getLogger("eko_rtp.call")


DIGIT_GRACE = 0.5  # s a script has to read the digits pressed just before the caller hung up


class CallHungUp(Exception):
    """Raised into a script that keeps talking after the call ended."""


class UnknownPhrase(LookupError):
    """The script asked for a phrase that is not in the cache (missing or refused at load)."""


@attrs.define
class SessionState:
    """Our side of the call's SDP offer/answer (RFC 3264), kept by the server."""

    origin: Any = None  # the o= line's values; its version goes up when our answer changes
    local_body: bytes = b""  # our last SDP (answer, or offer when the INVITE had none)
    offered_without_sdp: bool = False  # the INVITE had no SDP: our 200 offers, the ACK answers
    pending_offer: bytes | None = None  # an offer of ours awaiting its answer in an ACK


class Call:
    """What a call script sees: ``say``, ``pause``, ``hangup``, ``dtmf``, the caller."""

    def __init__(self, *, call_id: str, caller, caller_number: str | None, server, stream, invite_time: float, source):
        self.call_id = call_id
        self.caller = caller
        self.caller_number = caller_number
        self.invite_time = invite_time
        self.source = source
        self.stream = stream
        self._server = server
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.greeting: tuple[str, ...] = ()
        self._dtmf_send, self._dtmf_receive = trio.open_memory_channel[str](32)
        self.dtmf_dropped = 0
        self.cancel_scope: trio.CancelScope | None = None
        self.answered = trio.Event()
        self.confirmed = trio.Event()  # the ACK came
        self.lookup: Any = None  # the CallerLookup the server started at the INVITE
        self.tts = getattr(server, "tts", None)
        self.tts_usage = self.tts.accounting.open_call(call_id) if self.tts is not None else None
        self.fallback_phrase = "error"
        self.nursery: trio.Nursery | None = None  # the call's own nursery, set when it runs
        self.sdp = SessionState()
        # Snapshots: a reload (SIGHUP) must not change the audio or script of a call in progress.
        self.cache = server.cache
        self.script = server.script

    # -- the script API ----------------------------------------------------------

    async def caller_record(self):
        """What the CRM knows of the caller, if it answered within the greeting budget.

        The budget counts from the INVITE, so by the time a script asks, part of it
        may be spent; ``None`` means unknown, anonymous, or not known in time. A late
        answer is kept in :attr:`late_caller_record`.
        """
        return await self.lookup.wait()

    @property
    def late_caller_record(self):
        """The CRM record whenever it arrived (``None`` while unknown)."""
        return self.lookup.record

    async def answer(self) -> None:
        """Answer now (200 OK) if not answered yet; the stream starts at once."""
        if self.answered_at is None:
            self._server.answer_call(self)
        await trio.lowlevel.checkpoint()

    async def say(self, key: str) -> None:
        """Play cached phrase ``key``; return when its last frame has been sent."""
        phrase = self.phrase(key)
        if phrase is None:
            raise UnknownPhrase(f"phrase {key!r} is not in the cache")
        await self._play(CachedSource(phrase.audio))

    async def pause(self, milliseconds: int) -> None:
        """Silence for ``milliseconds`` (rounded up to whole 20 ms frames)."""
        frames = max(0, math.ceil(milliseconds / 20))
        if frames:
            await self._play(SilenceSource(frames, self.stream.queue.silence))

    async def hangup(self) -> None:
        """Send BYE and end the call (the script is cancelled with it)."""
        self._server.hangup_call(self)
        await trio.lowlevel.checkpoint()

    @property
    def dtmf(self) -> trio.MemoryReceiveChannel[str]:
        """Digits pressed by the caller (RFC 4733 events or SIP INFO), as an async stream."""
        return self._dtmf_receive

    async def next_digit(self, timeout: float) -> str | None:
        """The next digit, or ``None`` after ``timeout`` seconds without one."""
        with trio.move_on_after(timeout):
            return await self._dtmf_receive.receive()
        return None

    async def say_text(self, text: str) -> None:
        """Say ``text`` with live TTS (or from the dynamic cache); return when it has been played.

        The synthesis runs in a sibling task of the call's nursery and its frames are
        played as they arrive; the stream carries silence until the first one. On a TTS
        failure the caller hears the cached ``error`` phrase (or ``fallback_phrase``) and
        the call goes on.
        """
        await self._say_live(None, text)

    async def say_hybrid(self, key: str, text: str) -> None:
        """Play cached ``key`` at once while ``text`` is synthesized, then the live audio.

        When the live audio is ready by the end of the cached phrase there is no gap:
        the TTS wait hides behind speech.
        """
        phrase = self.phrase(key)
        if phrase is None:
            raise UnknownPhrase(f"phrase {key!r} is not in the cache")
        await self._say_live(phrase, text)

    async def _say_live(self, phrase, text: str) -> None:
        if self.tts is None:
            raise RuntimeError("no TTS engine is configured for this server")
        live = LiveSource()
        live.on_first_frame = self._live_audio_ready
        finished = trio.Event()
        live.on_finished = finished.set
        failed: list[Exception] = []
        render_scope = trio.CancelScope()
        if phrase is not None:
            self._enqueue(CachedSource(phrase.audio))
        self._enqueue(live)
        self.nursery.start_soon(self._render, text, live, render_scope, failed)
        try:
            await finished.wait()
        except BaseException:
            # Hang-up, barge-in or the script moving on: stop billing and stop playing now.
            render_scope.cancel()
            live.cancel()
            raise
        finally:
            render_scope.cancel()
        if failed:
            fallback = self.phrase(self.fallback_phrase)
            if fallback is not None:
                await self._play(CachedSource(fallback.audio))

    async def _render(self, text: str, live: LiveSource, scope: trio.CancelScope, failed: list) -> None:
        with scope:
            try:
                await self.tts.speak(text, live, call=self.tts_usage)
            except TtsError as error:  # already logged and counted by the engine
                failed.append(error)
                live.end()

    # -- internals ---------------------------------------------------------------

    def _live_audio_ready(self) -> None:
        """The first live frame is here: start the talkspurt now if silence is playing."""
        if self.ended_at is None:
            self.stream.start_talkspurt(trio.current_time())

    def phrase(self, key: str):
        """The cached phrase from the cache this call started with (a reload does not change it)."""
        phrase = self.cache.get(key)
        metrics = self._server.metrics
        if metrics is not None:
            (metrics.cache_hits if phrase is not None else metrics.cache_misses).labels(cache="phrase").inc()
        return phrase

    def _enqueue(self, source) -> None:
        if self.ended_at is not None:
            raise CallHungUp(f"call {self.call_id} has ended")
        self.stream.queue.enqueue(source)
        if self.answered_at is None:
            self._server.answer_call(self)

    async def _play(self, source) -> None:
        done = trio.Event()
        source.on_finished = done.set
        self._enqueue(source)
        try:
            await done.wait()
        except BaseException:
            source.cancel()  # the script moved on (or the call ended): stop this source
            raise

    def deliver_digit(self, digit: str) -> None:
        """From the media or SIP side: a digit was pressed."""
        try:
            self._dtmf_send.send_nowait(digit)
        except trio.WouldBlock:
            self.dtmf_dropped += 1
            log.warning("call %s: DTMF digit %r dropped (script is not reading digits)", self.call_id, digit)
        except trio.ClosedResourceError:
            pass

    def end(self, reason: str, now: float, *, wait_for_digits: bool = True) -> None:
        """Mark the call over and cancel its nursery (idempotent).

        The stream stops at once. Digits the caller pressed just before hanging up
        are still the script's: while some wait unread (and ``wait_for_digits``),
        the nursery lives on for at most ``DIGIT_GRACE`` seconds, and ``dtmf``
        ends after the last of them.
        """
        if self.ended_at is None:
            self.ended_at = now
            self.end_reason = reason
            self.stream.close()
            self._dtmf_send.close()
        scope = self.cancel_scope
        if scope is None:
            return
        if wait_for_digits and self._dtmf_receive.statistics().current_buffer_used:
            scope.deadline = min(scope.deadline, now + DIGIT_GRACE)
        else:
            scope.cancel()


Script = Callable[[Call], Awaitable[None]]
