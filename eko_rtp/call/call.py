"""One call: the object a call script talks to, and the nursery that lives as long as the call.

Theory of operation: when the SIP core reports an ``IncomingCall`` the server makes
the call's parts (its RTP stream on its own port pair, its offer/answer state, its
CRM look-up, its digit queue) and a :class:`Call` holding them, with a
:class:`CallLine`: the narrow interface through which a call asks the server for
what only the server can do (send the 200 OK, hang up, count a phrase). The
server then runs :meth:`Call.run` in its call nursery. ``run`` opens *one nursery
per call* holding the CRM look-up, the answer deadline, one task for the inactivity and
maximum-duration watchdog and the RTCP reports (call/timekeeper.py), and the call script. However the
call ends (BYE from either side, CANCEL, no ACK, session expiry, no inbound RTP,
the maximum duration, the script returning or failing) :meth:`Call.end` cancels
that nursery, and nothing the call started outlives it; the server gives back
the ports and sockets after ``run`` returns.

The call is answered (200 OK) when the script first queues audio, or calls
:meth:`Call.answer`, or after ``answer_timeout``: the greeting's first frame then leaves
in the same synchronous step as the 200 OK, not at the next clock tick.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Awaitable, Callable

import attrs
import trio

from eko_rtp.call.barge_in import BargeIn, Playback, Playing
from eko_rtp.call.timekeeper import MAX_DURATION, RTP_TIMEOUT, Timekeeper
from eko_rtp.codec.frame import FRAME_SECONDS
from eko_rtp.media.playout import CachedSource, LiveSource, SilenceSource
from eko_rtp.tts.errors import TtsError

log = logging.getLogger("eko_rtp.call")

DIGIT_GRACE = 0.5  # s a script has to read the digits pressed just before the caller hung up
# s the recognizer stream has after the hang-up to send CloseStream and take the last
# results (its own close timeout is 2 s): the call's teardown waits this long at most.
SPEECH_CLOSE_GRACE = 2.5
TURN_WAIT = 3.0  # s an interruptible phrase waits for a caller still speaking to stop


class CallHungUp(Exception):
    """Raised into a script that keeps talking after the call ended."""


class UnknownPhrase(LookupError):
    """The script asked for a phrase that is not in the cache (missing or refused at load)."""


class TransferFailed(Exception):
    """The caller could not be handed over: they are still with us, and the script goes on.

    ``status`` is the last SIP status heard (the REFER's response, or the sipfrag of
    the phone's call to the technician), None when the phone went silent.
    """

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@attrs.frozen(kw_only=True)
class CallLine:
    """What a call may ask of the server, and nothing more."""

    answer: Callable[["Call"], None]  # send the 200 OK and the stream's first frame, in one step
    hang_up: Callable[["Call"], None]  # BYE (or 480 before the answer), then Call.end
    count_phrase: Callable[[bool], None] = lambda hit: None  # a phrase cache hit (True) or miss
    # REFER the caller to a SIP URI (False: the call cannot be transferred now); the
    # news comes back through Call.transfer_news.
    transfer: Callable[["Call", str], bool] = lambda call, target: False


@attrs.frozen(kw_only=True)
class CallTimers:
    """How long a call may wait for what (config keys in the server's config)."""

    answer_timeout: float  # s from the INVITE to a 200 OK if the script has not answered
    rtp_timeout: float  # s without inbound RTP or RTCP after the ACK before we hang up
    max_duration: float  # s from the INVITE
    rtcp_first_report: float = 2.5  # RFC 3550 §6.2: the first report after half the minimum interval
    rtcp_interval: float = 5.0  # RFC 3550 §6.2 minimum, randomised 0.5-1.5 times (§6.3.1)
    flush_after: float = 0.060  # s without caller audio before the ears give up on a gap (reorder window)
    silence_reprompt: float = 15.0  # s of silence after a question before Eko asks if the caller is there
    silence_hangup: float = 30.0  # s of silence after a question before Eko says goodbye
    transfer_bye_wait: float = 2.0  # s after a transfer succeeded for the trunk's BYE before ours
    # s from the 200 OK without the ACK and without inbound RTP or RTCP before we hang up: a
    # phone ACKs within a round trip and sends at once; a forged INVITE does neither.
    rtp_timeout_before_ack: float = 5.0


class Call:
    """What a call script sees: ``say``, ``pause``, ``hangup``, ``dtmf``, the caller."""

    # One per call for the call's life: slots, since this many attributes overflow
    # CPython's shared-key instance dict into a dict of its own (docs/BENCHMARKS.md).
    __slots__ = ("call_id", "caller", "caller_number", "invite_time", "source", "stream", "media", "lookup",
                 "_digits", "_line", "ears", "barge_in", "_speech", "_speech_scope", "recorder", "timers", "cache",
                 "script", "tts", "tts_usage", "answered_at", "ended_at", "end_reason", "greeting", "answered",
                 "confirmed", "fallback_phrase", "handover", "script_outcome", "transfer_state", "transfer_status",
                 "transfer_reason", "_transfer_changed", "_transferring", "_cancel_scope", "_nursery")

    def __init__(self, *, call_id: str, caller, caller_number: str | None, stream, media, digits, lookup,
                 line: CallLine, timers: CallTimers, cache, script, tts=None, invite_time: float, source,
                 ears=None, barge_in: BargeIn | None = None, speech=None, recorder=None, handover=None):
        self.call_id = call_id
        self.caller = caller
        self.caller_number = caller_number
        self.invite_time = invite_time
        self.source = source
        self.stream = stream
        self.media = media  # its offer/answer state (eko_rtp.media.negotiation.MediaSession)
        self.lookup = lookup  # the CallerLookup started at the INVITE
        self._digits = digits
        self._line = line
        # What the call hears (eko_rtp/call/ears.py), the caller's voice interrupting
        # our phrases, and the speech recognizer (None: no ASR, DTMF only).
        self.ears = ears
        self.barge_in = barge_in if barge_in is not None else BargeIn()
        self._speech = speech
        self._speech_scope: trio.CancelScope | None = None
        self.recorder = recorder  # both directions to a WAV (eko_rtp/call/recording.py), or None
        self.timers = timers
        # Snapshots: a reload (SIGHUP) must not change the audio or script of a call in progress.
        self.cache = cache
        self.script = script
        self.tts = tts
        self.tts_usage = tts.accounting.open_call(call_id) if tts is not None else None
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.greeting: tuple[str, ...] = ()
        self.answered = trio.Event()
        self.confirmed = trio.Event()  # the ACK came
        self.fallback_phrase = "error"
        # The handover desk (eko_rtp/call/handover.py): business hours, technician load,
        # queues, callbacks; None when the server has none (tests of other things).
        self.handover = handover
        # What the script achieved, for crm.log_call beside the SIP-side end reason:
        # "transferred", "transfer_failed", "callback_offered", ... (docs/crm-rpc.md).
        self.script_outcome: str | None = None
        self.transfer_state: str | None = None  # the last TransferUpdate: "trying", "succeeded"...
        self.transfer_status: int | None = None
        self.transfer_reason = ""
        self._transfer_changed: trio.Event | None = None  # made when a transfer starts: most calls have none
        self._transferring = False
        self._cancel_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # -- the call's life ---------------------------------------------------------------

    async def run(self) -> None:
        """The call's nursery: every task of the call, until it ends (never raises)."""
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                self._nursery = nursery
                if self.ended_at is not None:  # ended before it ran (a CANCEL in the same step)
                    nursery.cancel_scope.cancel()
                if self.recorder is not None:
                    await nursery.start(self.recorder.run)  # the file exists before the first frame
                nursery.start_soon(self.lookup.run)  # first: the greeting may depend on it
                nursery.start_soon(self._answer_deadline)
                nursery.start_soon(self._keep_time)  # the watchdog and the RTCP reports
                if self._speech is not None:
                    nursery.start_soon(self._recognize)
                if self.ears is not None:
                    self.ears.watch_gaps(nursery, self.timers.flush_after)  # a task only while a gap is open
                # The script runs in this task, the nursery's body: its first phrase (and
                # with it the 200 OK) does not wait for a scheduler pass of its own.
                await self._run_script()
        finally:
            self.stream.close()
            if self.ears is not None:
                self.ears.close()
            # Break the call <-> nursery cycle so refcounting frees the call at once:
            # otherwise it waits for a full (gen 2) collection, a pause that grows with
            # the number of live calls and shows up as jitter on every other call.
            self._nursery = self._cancel_scope = None
            if self.ended_at is None:
                self.ended_at = trio.current_time()

    async def _run_script(self) -> None:
        try:
            await self.script(self)
        except CallHungUp:
            pass  # the script spoke after the caller had gone (reading the last digits): normal
        except Exception:
            log.exception("the call script failed; hanging up")
        self._line.hang_up(self)
        self.end("local_hangup", trio.current_time(), wait_for_digits=False)  # the script is done

    async def _recognize(self) -> None:
        """Speech recognition from the answer to the end of the call (never ends the call).

        Shielded from the call's end, which instead closes the audio and gives the
        stream ``SPEECH_CLOSE_GRACE`` to send ``CloseStream`` and take the last results.
        """
        await self.answered.wait()
        with trio.CancelScope(shield=True) as scope:
            self._speech_scope = scope
            if self.ended_at is not None:
                scope.deadline = self.ended_at + SPEECH_CLOSE_GRACE
            await self._speech.run()

    async def _answer_deadline(self) -> None:
        await trio.sleep_until(self.invite_time + self.timers.answer_timeout)
        if self.answered_at is None:
            self._line.answer(self)

    async def _keep_time(self) -> None:
        """The RTCP reports, and the hang-up on a silent caller or at the maximum duration.

        From the 200 OK to the ACK, ``rtp_timeout_before_ack`` without inbound RTP or
        RTCP ends the call (a forged INVITE that names someone else's address in its
        SDP sends neither: its call and its ports go in seconds, not at the 64·T1 of
        the SIP core's own no-ACK timer). From the ACK on, ``rtp_timeout``. Only the
        caller's packets count: strangers' are dropped by the stream's latch before
        they reach ``last_inbound``. Before the ACK the BYE itself waits for the ACK
        or its timeout (RFC 3261 §15); the call and its media end at once. One task
        for all of it, on the schedule of :class:`~eko_rtp.call.timekeeper.Timekeeper`.
        """
        timers = self.timers
        keeper = Timekeeper(invite_time=self.invite_time, max_duration=timers.max_duration,
                            rtp_timeout=timers.rtp_timeout, rtp_timeout_before_ack=timers.rtp_timeout_before_ack,
                            rtcp_first_report=timers.rtcp_first_report, rtcp_interval=timers.rtcp_interval)
        while True:
            now = trio.current_time()
            if keeper.answered_at is None and self.answered.is_set():
                keeper.answer(now)
            if keeper.confirmed_at is None and self.confirmed.is_set():
                keeper.confirm(now)
            step = keeper.step(now, self.stream.last_inbound)
            if step.report:
                self.stream.send_rtcp(now, time.time())
            if step.hang_up == MAX_DURATION:
                log.info("maximum duration reached; hanging up")
                self._hang_up_for(MAX_DURATION)
                return
            if step.hang_up == RTP_TIMEOUT:
                if keeper.confirmed_at is None:
                    log.info("no ACK and no RTP for %.1f s after the answer; hanging up", step.silent_for)
                else:
                    log.info("no RTP for %.0f s; hanging up", step.silent_for)
                self._hang_up_for(RTP_TIMEOUT)
                return
            # Asleep until the step's time, or until the answer or the ACK comes first.
            with trio.move_on_at(step.wake_at):
                if keeper.answered_at is None:
                    await self.answered.wait()
                elif keeper.confirmed_at is None:
                    await self.confirmed.wait()
                else:
                    await trio.sleep_forever()

    def _hang_up_for(self, reason: str) -> None:
        self._line.hang_up(self)
        self.end_reason = reason

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
            self._line.answer(self)
        await trio.lowlevel.checkpoint()

    async def say(self, key: str, *, interruptible: bool = False) -> Playback:
        """Play cached phrase ``key``; return when its last frame has been sent.

        ``interruptible``: the caller speaking over it stops it at the next frame
        (barge-in); the result says whether that happened and how much was played.
        """
        phrase = self.phrase(key)
        if phrase is None:
            raise UnknownPhrase(f"phrase {key!r} is not in the cache")
        source = CachedSource(phrase.audio)
        playing = Playing([source])
        if interruptible:
            await self.barge_in.wait_for_quiet(TURN_WAIT)
        await self._play(source, playing if interruptible else None)
        return playing.result()

    async def pause(self, milliseconds: int) -> None:
        """Silence for ``milliseconds`` (rounded up to whole 20 ms frames)."""
        frames = max(0, math.ceil(milliseconds / 1000 / FRAME_SECONDS - 1e-9))
        if frames:
            await self._play(SilenceSource(frames, self.stream.queue.silence))

    async def hangup(self) -> None:
        """Send BYE and end the call (the script is cancelled with it)."""
        self._line.hang_up(self)
        await trio.lowlevel.checkpoint()

    async def transfer(self, target: str) -> None:
        """Hand the caller over to ``target`` (a SIP URI) by a blind transfer (REFER).

        What is playing stops at the REFER (the stream goes on with silence until the
        caller has left). Returns once the phone reported the technician's answer and
        our leg is over: the trunk's BYE, or ours after ``transfer_bye_wait``. Raises
        :class:`TransferFailed` when the phone refused the REFER, reported a failure,
        or went silent: the caller is still with us.
        """
        if self.ended_at is not None:
            raise CallHungUp(f"call {self.call_id} has ended")
        self.stream.queue.clear()
        self.transfer_state, self.transfer_status, self.transfer_reason = None, None, ""
        self._transferring = True  # before the REFER: news of it may come at once
        if not self._line.transfer(self, target):
            self._transferring = False
            raise TransferFailed("the call cannot be transferred now")
        try:
            while self.transfer_state not in ("succeeded", "failed", "error"):
                changed = self._transfer_changed = self._transfer_changed or trio.Event()
                await changed.wait()
        finally:
            self._transferring = False
        if self.transfer_state != "succeeded":
            raise TransferFailed(self.transfer_reason or "transfer failed", self.transfer_status)
        await self._leave_after_transfer()

    async def _leave_after_transfer(self) -> None:
        self.script_outcome = "transferred"
        log.info("transferred: the caller is with the technician")
        await trio.sleep(self.timers.transfer_bye_wait)  # the trunk's BYE ends the call first, normally
        self._line.hang_up(self)
        await trio.lowlevel.checkpoint()

    def transfer_news(self, state: str, status: int | None, reason: str) -> None:
        """From the SIP side: our REFER's state changed (``TransferUpdate``)."""
        self.transfer_state, self.transfer_status, self.transfer_reason = state, status, reason
        log.info("transfer %s (%s)", state, reason)
        if self._transfer_changed is not None:
            self._transfer_changed.set()
            self._transfer_changed = None
        if state == "succeeded" and not self._transferring and self.ended_at is None:
            # The technician answered after the script had given up on it: the caller is
            # with them now, so our leg ends rather than talking over their call.
            self.script_outcome = "transferred"
            self._line.hang_up(self)

    @property
    def dtmf(self) -> trio.MemoryReceiveChannel[str]:
        """Digits pressed by the caller (RFC 4733 events or SIP INFO), as an async stream."""
        return self._digits.receive

    @property
    def digits_pending(self) -> int:
        """Keys pressed and not read yet (a caller who answered before the question ended)."""
        return self._digits.pending

    async def next_digit(self, timeout: float) -> str | None:
        """The next digit, or ``None`` after ``timeout`` seconds without one (or once the call ended)."""
        with trio.move_on_after(timeout):
            try:
                return await self._digits.receive.receive()
            except trio.EndOfChannel:
                return None
        return None

    async def say_text(self, text: str, *, interruptible: bool = False) -> Playback:
        """Say ``text`` with live TTS (or from the dynamic cache); return when it has been played.

        The synthesis runs in a sibling task of the call's nursery and its frames are
        played as they arrive; the stream carries silence until the first one. On a TTS
        failure the caller hears the cached ``error`` phrase (or ``fallback_phrase``) and
        the call goes on. ``interruptible``: as for :meth:`say`; an interrupted
        synthesis is cancelled (its HTTP stream closed, nothing cached).
        """
        return await self._say_live(None, text, interruptible)

    async def say_hybrid(self, key: str, text: str, *, interruptible: bool = False) -> Playback:
        """Play cached ``key`` at once while ``text`` is synthesized, then the live audio.

        When the live audio is ready by the end of the cached phrase there is no gap:
        the TTS wait hides behind speech.
        """
        phrase = self.phrase(key)
        if phrase is None:
            raise UnknownPhrase(f"phrase {key!r} is not in the cache")
        return await self._say_live(phrase, text, interruptible)

    async def _say_live(self, phrase, text: str, interruptible: bool) -> Playback:
        if self.tts is None:
            raise RuntimeError("no TTS engine is configured for this server")
        live = LiveSource()
        live.on_first_frame = self._live_audio_ready
        finished = trio.Event()
        live.on_finished = finished.set
        failed: list[Exception] = []
        render_scope = trio.CancelScope()
        if interruptible:
            await self.barge_in.wait_for_quiet(TURN_WAIT)
        sources = [live] if phrase is None else [CachedSource(phrase.audio), live]
        playing = Playing(sources)
        for source in sources:
            self._enqueue(source)
        if interruptible:
            self.barge_in.register(playing)
        self._nursery.start_soon(self._render, text, live, render_scope, failed)
        try:
            await finished.wait()
        except BaseException:
            # Hang-up or the script moving on: stop billing and stop playing now.
            render_scope.cancel()
            for source in sources:
                source.cancel()
            raise
        finally:
            # Barge-in lands here too: the synthesis stops (nothing partial is cached).
            render_scope.cancel()
            self.barge_in.unregister(playing)
        if failed and not playing.interrupted:
            fallback = self.phrase(self.fallback_phrase)
            if fallback is not None:
                await self._play(CachedSource(fallback.audio))
        return playing.result()

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
        self._line.count_phrase(phrase is not None)
        return phrase

    def _enqueue(self, source) -> None:
        if self.ended_at is not None:
            raise CallHungUp(f"call {self.call_id} has ended")
        self.stream.queue.enqueue(source)
        if self.answered_at is None:
            self._line.answer(self)

    async def _play(self, source, playing: Playing | None = None) -> None:
        done = trio.Event()
        source.on_finished = done.set
        self._enqueue(source)
        if playing is not None:
            self.barge_in.register(playing)
        try:
            await done.wait()
        except BaseException:
            source.cancel()  # the script moved on (or the call ended): stop this source
            raise
        finally:
            if playing is not None:
                self.barge_in.unregister(playing)

    # -- listening -------------------------------------------------------------------

    @property
    def can_listen(self) -> bool:
        """True while speech recognition runs for this call (False: no ASR, or it failed)."""
        return self._speech is not None and self._speech.available

    @property
    def speech_recognition(self):
        """The call's :class:`~eko_rtp.call.speech.CallSpeech` (None without ASR)."""
        return self._speech

    async def listen(self, timeout: float, *, endpointing: float | None = None) -> str | None:
        """The caller's next utterance (its final transcript), or ``None`` after ``timeout`` s.

        ``endpointing`` (s): wait for a pause this long before the answer is complete
        (longer than the recognizer's own endpointing joins what follows within the
        difference, or while the caller still speaks). Without speech recognition it
        returns ``None`` after ``timeout``, like :meth:`next_digit`.
        """
        self.barge_in.listeners += 1
        try:
            return await self._listen(timeout, endpointing)
        finally:
            self.barge_in.listeners -= 1

    async def _listen(self, timeout: float, endpointing: float | None) -> str | None:
        now = trio.current_time()
        if self._speech is None:
            await trio.sleep(timeout)
            return None
        utterance = await self._speech.next_utterance(now + timeout)
        if utterance is None:
            return None
        parts = [utterance.text]
        connection_endpointing = self._speech.endpointing
        if endpointing is not None and endpointing > connection_endpointing:
            extra = endpointing - connection_endpointing
            while True:
                more = await self._speech.next_utterance(trio.current_time() + extra)
                if more is None:
                    if self.barge_in.speaking and self._speech.available:
                        continue  # still speaking: the recognizer will settle it
                    break
                parts.append(more.text)
        return " ".join(parts)

    @property
    def speech(self):
        """The caller's utterances as they are settled: ``async for text in call.speech``."""
        return self._utterances()

    async def _utterances(self):
        if self._speech is None:
            return
        while True:
            utterance = await self._speech.next_utterance(math.inf)
            if utterance is None:
                return
            yield utterance.text

    @property
    def audio_in(self):
        """The caller's audio as 20 ms G.711 frames, in order: ``async for frame in call.audio_in``."""
        if self.ears is None:
            raise RuntimeError("this call has no inbound audio path")
        return self.ears.frames_in()

    def deliver_digit(self, digit: str) -> None:
        """From the SIP side (INFO): a digit was pressed."""
        self._digits.deliver(digit)

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
            self._digits.close()
            if self._speech is not None:
                self._speech.end_audio()  # the stream sends CloseStream and drains
                if self._speech_scope is not None:
                    self._speech_scope.deadline = min(self._speech_scope.deadline, now + SPEECH_CLOSE_GRACE)
        scope = self._cancel_scope
        if scope is None:
            return
        if wait_for_digits and self._digits.pending:
            scope.deadline = min(scope.deadline, now + DIGIT_GRACE)
        else:
            scope.cancel()


Script = Callable[[Call], Awaitable[None]]
