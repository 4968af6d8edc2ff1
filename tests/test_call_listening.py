"""A call that listens, in process on trio's mock clock: barge-in, utterances, Eko's voice answers.

The call runs with the fakes of ``test_call_life`` (a stream that plays a frame every
20 ms, a line that notes what the call asked) plus the real ears, barge-in and
speech objects. The recognizer is a fake stream that answers from a script of
(time, event) pairs through the same ``on_event`` the Deepgram client uses, so the
script's reactions are checked at exact times.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from eko_rtp.asr.deepgram_api import AsrSettings, Transcript, UtteranceEnd
from eko_rtp.asr.errors import AsrUnauthorized
from eko_rtp.call import eko_script
from eko_rtp.call.barge_in import BargeIn, Playback
from eko_rtp.call.call import Call
from eko_rtp.call.digits import DigitQueue
from eko_rtp.call.ears import CallerAudio
from eko_rtp.call.speech import UTTERANCES_KEPT, CallSpeech
from eko_rtp.media.vad import SpeechEnded, SpeechStarted
from test_call_life import (
    FRAME,
    PENDING,
    TIMERS,
    NoLookup,
    OpenDesk,
    PlayingStream,
    RecordingLine,
    phrases,
    run_call,
)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def said(text: str, *, final: bool = True, speech_final: bool = True) -> Transcript:
    return Transcript(text=text, is_final=final, speech_final=speech_final, confidence=0.9, start=0.0, duration=1.0)


class ScriptedRecognizer:
    """Stands in for DeepgramStream: emits its events at their times (from its start), then waits."""

    def __init__(self, events=(), *, fail_with=None, fail_at=0.0, settings=None, api_key=None, on_event=None):
        self.events = list(events)
        self.fail_with = fail_with
        self.fail_at = fail_at
        self.on_event = on_event
        self.seconds_sent = 0.0
        self.frames: list[bytes] = []

    async def run(self, audio) -> None:
        if self.fail_with is not None:
            await trio.sleep(self.fail_at)
            raise self.fail_with
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, audio)
            for at, event in self.events:
                await trio.sleep_until(start + at)
                self.on_event(event)
            await trio.sleep_forever()

    async def _drain(self, audio) -> None:
        async for frame in audio:
            self.frames.append(frame)
            self.seconds_sent += len(frame) / 8000


class RecordingCache(dict):
    """The phrase cache, noting which phrase was asked for when."""

    def __init__(self, phrases) -> None:
        super().__init__(phrases)
        self.asked: list[tuple[str, float]] = []

    def get(self, key, default=None):
        self.asked.append((key, round(trio.current_time(), 3)))
        return super().get(key, default)

    @property
    def keys_asked(self) -> list[str]:
        return [key for key, _ in self.asked]


class Listening:
    """A call with ears, barge-in and a scripted recognizer (or none)."""

    def __init__(self, script, *, events=None, fail_with=None, fail_at=0.0, record=PENDING) -> None:
        self.stream = PlayingStream()
        self.line = RecordingLine(self.stream)
        self.barge_in = BargeIn()
        self.ears = CallerAudio(vad=None, on_speech=self.barge_in.on_speech)
        self.failures: list = []
        self.recognizers: list[ScriptedRecognizer] = []
        speech = None
        if events is not None or fail_with is not None:
            def factory(**kwargs):
                recognizer = ScriptedRecognizer(events or (), fail_with=fail_with, fail_at=fail_at, **kwargs)
                self.recognizers.append(recognizer)
                return recognizer
            speech = CallSpeech(settings=AsrSettings(), api_key="k", ears=self.ears, on_failure=self.failures.append,
                                on_audio_seconds=lambda seconds: None, stream_factory=factory)
        self.cache = RecordingCache(phrases())
        self.call = Call(call_id="c1", caller=None, caller_number=None, stream=self.stream, media=None,
                         digits=DigitQueue(call_id="c1", on_digit=self.barge_in.on_key), lookup=NoLookup(record), line=self.line.line,
                         timers=TIMERS, cache=self.cache, script=script, invite_time=trio.current_time(),
                         source=("127.0.0.1", 5060), ears=self.ears, barge_in=self.barge_in, speech=speech,
                         handover=OpenDesk())


async def test_speech_over_an_interruptible_phrase_stops_it_at_the_next_frame(autojump_clock):
    results: list[Playback] = []

    async def script(call):
        results.append(await call.say("returning_client_pending_internet", interruptible=True))  # 2 s
        results.append(await call.say("goodbye"))  # not interruptible: plays whole
        await call.hangup()

    listening = Listening(script)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(0.5 + FRAME / 2)  # between two frames, 25.5 frames in
        listening.barge_in.on_speech(SpeechStarted(at=0.44))
        interrupted_at = trio.current_time()
    first, second = results
    assert first.interrupted and first.played == pytest.approx(0.52, abs=FRAME)
    assert second == Playback(interrupted=False, played=0.5)
    # The goodbye started at the next frame slot after the barge-in, and the BYE followed it.
    hang_up_at = dict(listening.line.asked)["hang_up"]
    assert hang_up_at == pytest.approx(interrupted_at + 0.5, abs=2 * FRAME)
    assert listening.barge_in.interruptions == 1


async def test_speech_when_nothing_interruptible_plays_interrupts_nothing(autojump_clock):
    results = []

    async def script(call):
        results.append(await call.say("goodbye"))
        await call.hangup()

    listening = Listening(script)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(0.2)
        listening.barge_in.on_speech(SpeechStarted(at=0.18))
        listening.barge_in.on_speech(SpeechEnded(at=0.3, duration=0.12))
    assert results == [Playback(interrupted=False, played=0.5)]
    assert listening.barge_in.interruptions == 0 and not listening.barge_in.speaking


async def test_the_vad_is_wanted_while_a_phrase_can_be_interrupted_a_script_listens_or_the_caller_speaks(
        autojump_clock):
    async def script(call):
        await call.say("goodbye", interruptible=True)  # 0.0-0.5 s
        await call.listen(1.0)  # 0.5-1.5 s: no recognizer, so None after the timeout
        await call.say("goodbye")  # 1.5-2.0 s, not interruptible
        await call.hangup()

    listening = Listening(script)
    barge_in = listening.barge_in
    wanted = []
    assert not barge_in.wants_voice_activity
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        for at in (0.25, 0.75, 1.75):
            await trio.sleep_until(at)
            wanted.append(barge_in.wants_voice_activity)
        barge_in.on_speech(SpeechStarted(at=1.74))
        wanted.append(barge_in.wants_voice_activity)  # its end must be heard
        await trio.sleep(0.1)
        barge_in.on_speech(SpeechEnded(at=1.84, duration=0.1))
        wanted.append(barge_in.wants_voice_activity)
    assert wanted == [True, True, False, True, False]


@pytest.mark.parametrize(("words", "expected_asks", "refer_at"), [
    # greeting 2 s; "oui" 0.5 s later; ticket_transfer_ok 0.8 s; REFER (it succeeds);
    # transfer_bye_wait 2 s; BYE.
    ("oui", ["returning_client_pending_internet", "ticket_transfer_ok"], 3.3),
    ("c'est ça", ["returning_client_pending_internet", "ticket_transfer_ok"], 3.3),
])
async def test_a_spoken_yes_to_the_ticket_question_leads_to_the_transfer_phrase(
        autojump_clock, words, expected_asks, refer_at):
    listening = Listening(eko_script.run, events=[(2.5, said(words))])
    await run_call(listening.call, listening.stream)
    assert listening.cache.keys_asked == expected_asks
    assert listening.line.asked == [("answer", 0.0), ("transfer", pytest.approx(refer_at, abs=3 * FRAME)),
                                    ("hang_up", pytest.approx(refer_at + 2.0, abs=3 * FRAME))]


async def test_a_spoken_no_leads_to_the_reason_and_an_unclear_answer_to_one_clarification(autojump_clock):
    events = [
        (2.5, said("euh je sais pas")),  # unclear: clarify_yes_no (1 s) from 2.5 s
        (4.0, said("non pas du tout")),  # ticket_not_related (1.2 s) from 4.0 s
        (6.0, said("ma box ne marche plus", speech_final=False)),  # a description in two parts...
        (6.5, said("depuis hier")),  # ...settled here; the 1.2 s endpointing waits for more
    ]
    listening = Listening(eko_script.run, events=events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(9.0)
        listening.call.end("remote_bye", trio.current_time())
    # The description settles at 6.5 s and the script waits 0.7 s more for a second
    # part (1.2 s endpointing): problem_internet (0.8 s) from 7.2 s, then anything_else;
    # the caller hangs up at 9 s while Eko listens again.
    assert listening.cache.asked == [
        ("returning_client_pending_internet", 0.0), ("clarify_yes_no", 2.5), ("ticket_not_related", 4.0),
        ("problem_internet", pytest.approx(7.2, abs=2 * FRAME)), ("anything_else", pytest.approx(8.0, abs=3 * FRAME))]
    assert listening.line.asked == [("answer", 0.0)]
    speech = listening.call.speech_recognition
    assert speech.failure is None


async def test_a_recognizer_that_fails_leaves_the_keys_and_is_counted(autojump_clock):
    listening = Listening(eko_script.run, fail_with=AsrUnauthorized("Deepgram refused the API key (401)", status=401))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(4.0)  # greeting 2 s, press_yes_no 1 s: the keys are asked for
        listening.call.deliver_digit("1")
    assert [type(error) for error in listening.failures] == [AsrUnauthorized]
    assert listening.cache.keys_asked == ["returning_client_pending_internet", "press_yes_no", "ticket_transfer_ok"]
    assert not listening.call.can_listen
    # 1 at 4.0 s: ticket_transfer_ok (0.8 s), then the REFER, and BYE after transfer_bye_wait.
    assert listening.line.asked == [("answer", 0.0), ("transfer", pytest.approx(4.8, abs=3 * FRAME)),
                                    ("hang_up", pytest.approx(6.8, abs=3 * FRAME))]


async def test_listen_joins_utterances_within_the_longer_endpointing(autojump_clock):
    heard = []

    async def script(call):
        await call.answer()
        heard.append(await call.listen(10, endpointing=1.2))
        heard.append(await call.listen(10))
        heard.append(await call.listen(1))
        await call.hangup()

    events = [(1.0, said("j'ai un souci")), (1.6, said("avec ma facture")),  # 0.6 s apart < 1.2 - 0.5
              (3.0, said("oui")), (3.2, said("voilà"))]
    listening = Listening(script, events=events)
    await run_call(listening.call, listening.stream)
    assert heard == ["j'ai un souci avec ma facture", "oui", "voilà"]


async def test_final_parts_join_until_speech_final_and_interims_are_kept_apart(autojump_clock):
    ears = CallerAudio(vad=None, on_speech=lambda event: None)
    speech = CallSpeech(settings=AsrSettings(), api_key="k", ears=ears, on_failure=None,
                        on_audio_seconds=lambda seconds: None, stream_factory=None)
    speech._on_event(said("bonj", final=False, speech_final=False))
    assert speech.interim == "bonj"
    speech._on_event(said("bonjour", speech_final=False))
    speech._on_event(said("je", final=False, speech_final=False))
    speech._on_event(said("je voudrais", speech_final=False))
    speech._on_event(UtteranceEnd(last_word_end=2.0))
    for n in range(UTTERANCES_KEPT + 2):
        speech._on_event(said(f"mot {n}"))
    assert speech.utterances_dropped == 3
    utterance = await speech.next_utterance(trio.current_time() + 1)
    assert utterance.text == "mot 2" and speech.interim == ""


async def test_a_key_pressed_during_a_question_interrupts_it_and_is_the_answer(autojump_clock):
    listening = Listening(eko_script.run)  # no speech recognition: keys only
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(1.0)  # half-way through the ticket question
        listening.call.deliver_digit("1")
    # The question stops at 1 s; the key already answers it (no press_yes_no), and
    # ticket_transfer_ok (0.8 s) plays at once.
    assert listening.cache.keys_asked == ["returning_client_pending_internet", "ticket_transfer_ok"]
    assert listening.line.asked == [("answer", 0.0), ("transfer", pytest.approx(1.8, abs=3 * FRAME)),
                                    ("hang_up", pytest.approx(3.8, abs=3 * FRAME))]
    assert listening.barge_in.interruptions == 1


async def test_a_recognizer_lost_during_the_question_turns_the_caller_to_the_keys(autojump_clock):
    from eko_rtp.asr.errors import AsrDropped

    listening = Listening(eko_script.run, fail_with=AsrDropped("Deepgram closed the stream (1011)"), fail_at=3.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, listening.call, listening.stream)
        await trio.sleep(5.0)  # the stream dropped at 3 s: press_yes_no (1 s) from 3 s
        listening.call.deliver_digit("2")
        await trio.sleep(1.5)
        listening.call.end("remote_bye", trio.current_time())
    assert listening.cache.asked[:3] == [("returning_client_pending_internet", 0.0), ("press_yes_no", 3.0),
                                         ("ticket_not_related", 5.0)]
    assert [type(error) for error in listening.failures] == [AsrDropped]
