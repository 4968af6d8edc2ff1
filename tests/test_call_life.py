"""A call's own nursery and its timers, in process on trio's mock clock.

``Call.run`` is driven with fakes for what it is given (its stream plays frames on
a 20 ms schedule of the mock clock; its line records what the call asked of the
server), so the answer deadline, the inactivity and duration watchdog, the RTCP
schedule, the end of a call with digits still unread and Eko's 8 s wait for a key
are checked at their exact times, without a server process or real time.
"""

from __future__ import annotations

import datetime

import attrs
import pytest
import trio
import trio.testing

from eko_rtp.call import eko_script
from eko_rtp.call.call import Call, CallLine, CallTimers
from eko_rtp.call.handover import HandoverPlan
from eko_rtp.call.lookup import CallerLookup
from eko_rtp.call.digits import DigitQueue
from eko_rtp.crm.records import CallerRecord, Ticket
from eko_rtp.media.playout import PlayoutQueue
from eko_rtp.transfer.policy import Decision

FRAME = 0.020
# The fakes never ACK: the before-ACK watchdog (5 s by default) would end the scripts' calls.
TIMERS = CallTimers(answer_timeout=2.0, rtp_timeout=10.0, max_duration=60.0, rtp_timeout_before_ack=60.0)


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@attrs.frozen
class Phrase:
    audio: bytes


class PlayingStream:
    """Stands in for the media stream: plays its queue a frame every 20 ms once started."""

    def __init__(self) -> None:
        self.queue = PlayoutQueue(b"\xff" * 160)
        self.last_inbound: float | None = None
        self.closed = False
        self.reports: list[float] = []
        self.started = trio.Event()

    async def play(self) -> None:
        await self.started.wait()
        t0 = trio.current_time()
        index = 0
        while not self.closed:
            self.queue.next_frame()
            index += 1
            await trio.sleep_until(t0 + index * FRAME)

    def send_rtcp(self, now: float, unix_now: float) -> None:
        self.reports.append(now)

    def close(self) -> None:
        self.closed = True


class NoLookup:
    def __init__(self, record=None) -> None:
        self.record = record

    async def run(self) -> None:
        pass

    async def wait(self):
        return self.record


class RecordingLine:
    """The server side of the call's line: notes what was asked and when."""

    def __init__(self, stream: PlayingStream, *, transfer_news: tuple | None = ("succeeded", 200, "200 OK")) -> None:
        self.asked: list[tuple[str, float]] = []
        self.stream = stream
        self.transfer_news = transfer_news  # what the phone reports at once after our REFER
        self.line = CallLine(answer=self._answer, hang_up=self._hang_up, transfer=self._transfer)

    def _transfer(self, call: Call, target: str) -> bool:
        self.asked.append(("transfer", trio.current_time()))
        if self.transfer_news is not None:
            call.transfer_news(*self.transfer_news)
        return True

    def _answer(self, call: Call) -> None:
        self.asked.append(("answer", trio.current_time()))
        call.answered_at = trio.current_time()
        call.answered.set()
        self.stream.started.set()

    def _hang_up(self, call: Call) -> None:
        if call.ended_at is None:
            self.asked.append(("hang_up", trio.current_time()))
            call.end("local_hangup", trio.current_time())


class OpenDesk:
    """A handover desk whose technicians always take the call (the real rules: test_transfer_*)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def plan(self, queue):
        return HandoverPlan(decision=Decision.TRANSFER, queue=queue or "default", target="sip:technicien@192.0.2.9")

    async def leave_request(self, **request) -> str:
        self.requests.append(request)
        return "eko-c000001"


def make_call(script, *, record=None, phrases=None, timers=TIMERS):
    stream = PlayingStream()
    line = RecordingLine(stream)
    digits = DigitQueue(call_id="c1")
    call = Call(call_id="c1", caller=None, caller_number=None, stream=stream, media=None, digits=digits,
                lookup=NoLookup(record), line=line.line, timers=timers, cache=phrases or {}, script=script,
                invite_time=trio.current_time(), source=("127.0.0.1", 5060), handover=OpenDesk())
    return call, stream, line, digits


async def run_call(call: Call, stream: PlayingStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.play)
        await call.run()
        nursery.cancel_scope.cancel()


async def test_an_unanswered_call_is_answered_at_the_answer_timeout_and_ends_with_no_rtp(autojump_clock):
    async def waits(call):
        await trio.sleep_forever()

    call, stream, line, _ = make_call(waits)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(3.0)
        call.confirmed.set()  # the ACK at 3 s; no RTP ever comes
    assert line.asked == [("answer", 2.0), ("hang_up", 13.0)]
    assert call.end_reason == "rtp_timeout" and stream.closed


async def test_inbound_rtp_keeps_the_call_up_until_the_maximum_duration(autojump_clock):
    async def waits(call):
        await call.answer()
        await trio.sleep_forever()

    call, stream, line, _ = make_call(waits, timers=attrs.evolve(TIMERS, max_duration=30.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        call.confirmed.set()
        for _ in range(40):
            await trio.sleep(1.0)
            stream.last_inbound = trio.current_time()
    assert line.asked == [("answer", 0.0), ("hang_up", 30.0)] and call.end_reason == "max_duration"


async def test_rtcp_reports_start_half_an_interval_after_the_answer(autojump_clock):
    async def talks(call):
        await call.answer()
        await trio.sleep(20.0)

    call, stream, _, _ = make_call(talks)
    await run_call(call, stream)
    assert stream.reports[0] == 2.5
    gaps = [later - earlier for earlier, later in zip(stream.reports, stream.reports[1:])]
    assert gaps and all(2.5 <= gap <= 7.5 for gap in gaps)  # RFC 3550 §6.3.1: 0.5-1.5 x 5 s


async def test_digits_pressed_before_the_bye_reach_the_script_then_the_stream_of_digits_ends(autojump_clock):
    seen = []

    async def reads_slowly(call):
        await call.answer()
        async for digit in call.dtmf:
            seen.append((digit, trio.current_time()))
            await trio.sleep(0.1)  # the script is busy with each digit
        seen.append(("end", trio.current_time()))

    call, stream, _, digits = make_call(reads_slowly)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(1.0)
        for digit in "123":
            digits.deliver(digit)
        call.end("remote_bye", trio.current_time())  # the BYE right behind them
    assert [(digit, round(at, 6)) for digit, at in seen] == [("1", 1.0), ("2", 1.1), ("3", 1.2), ("end", 1.3)]
    assert call.ended_at == 1.0 and call.end_reason == "remote_bye" and stream.closed
    digits.deliver("4")  # after the end: nobody's, and no error
    assert digits.dropped == 0


async def test_a_script_that_ignores_digits_does_not_hold_the_call_past_the_grace(autojump_clock):
    async def ignores(call):
        await call.answer()
        await trio.sleep_forever()

    call, stream, _, digits = make_call(ignores)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(1.0)
        digits.deliver("9")
        call.end("remote_bye", trio.current_time())
        assert stream.closed  # no more audio at once; only the script's tasks get the grace
    assert trio.current_time() == pytest.approx(1.5)  # DIGIT_GRACE after the BYE


def phrases() -> dict:
    # Each phrase lasts a whole number of frames so the expected times are exact.
    lengths = {"returning_client_pending_internet": 100, "clarify_yes_no": 50, "goodbye": 25,
               "ticket_transfer_ok": 40, "error": 10, "press_yes_no": 50, "still_there": 25,
               "no_input_goodbye": 25, "ticket_not_related": 60, "greet": 100, "anything_else": 30,
               "problem_internet": 40, "transfer_failed": 60, "transfer_unavailable": 55, "closed_hours": 65}
    return {key: Phrase(audio=b"\x7f" * 160 * frames) for key, frames in lengths.items()}


PENDING = CallerRecord(client_id="c-1", open_tickets=(Ticket(
    id="t1", problem_type="internet", status="open",
    opened_at=datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)),))


async def test_without_speech_eko_asks_for_keys_then_checks_the_line_then_says_goodbye(autojump_clock):
    call, stream, line, _ = make_call(eko_script.run, record=PENDING, phrases=phrases())
    await run_call(call, stream)
    # greeting 2 s, press_yes_no 1 s (the question ends at 3 s), 15 s of silence,
    # still_there 0.5 s, silence until 30 s after the question, no_input_goodbye 0.5 s,
    # then BYE. A phrase is done when its last frame leaves and the next starts at a
    # frame slot; trio runs tasks due at the same instant in a random order, so each
    # boundary may move a frame.
    assert line.asked == [("answer", 0.0), ("hang_up", pytest.approx(33.5, abs=3 * FRAME))]
    assert call.greeting == ("returning_client_pending_internet",)


async def test_eko_takes_a_1_within_the_wait_and_transfers_after_the_transfer_phrase(autojump_clock):
    call, stream, line, digits = make_call(eko_script.run, record=PENDING, phrases=phrases())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(5.0)  # 3 s into the wait
        digits.deliver("1")
    # ticket_transfer_ok (0.8 s), the REFER, its success, transfer_bye_wait (2 s), BYE.
    assert line.asked == [("answer", 0.0), ("transfer", pytest.approx(5.8, abs=3 * FRAME)),
                          ("hang_up", pytest.approx(7.8, abs=3 * FRAME))]
    assert call.script_outcome == "transferred"


class ClosedDesk(OpenDesk):
    def plan(self, queue):
        return HandoverPlan(decision=Decision.CLOSED, queue=queue, opens_at=1_800_000_000.0, why="closed")


async def test_a_transfer_that_fails_apologises_books_a_callback_and_says_goodbye(autojump_clock):
    call, stream, line, digits = make_call(eko_script.run, record=PENDING, phrases=phrases())
    line.transfer_news = ("failed", 486, "technician side: 486 Busy Here")
    call.caller_number = "+33612345678"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(5.0)
        digits.deliver("1")
    # ticket_transfer_ok 0.8 s, REFER (failed at once), transfer_failed 1.2 s, goodbye 0.5 s, BYE.
    assert line.asked == [("answer", 0.0), ("transfer", pytest.approx(5.8, abs=3 * FRAME)),
                          ("hang_up", pytest.approx(7.5, abs=3 * FRAME))]
    assert call.script_outcome == "transfer_failed"
    assert call.handover.requests == [dict(call_id="c1", phone="+33612345678", reason="open ticket",
                                           queue="internet", not_before=None)]


async def test_outside_business_hours_the_caller_gets_a_callback_not_before_the_opening(autojump_clock):
    call, stream, line, digits = make_call(eko_script.run, record=PENDING, phrases=phrases())
    call.handover = ClosedDesk()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(5.0)
        digits.deliver("1")
    # No REFER: closed_hours 1.3 s, goodbye 0.5 s, BYE.
    assert line.asked == [("answer", 0.0), ("hang_up", pytest.approx(6.8, abs=3 * FRAME))]
    assert call.script_outcome == "closed_hours"
    assert call.handover.requests == [dict(call_id="c1", phone=None, reason="open ticket", queue="internet",
                                           not_before=1_800_000_000.0)]


async def test_a_late_success_after_the_script_gave_up_ends_our_leg(autojump_clock):
    async def script(call):
        await call.answer()
        await trio.sleep(60)

    call, stream, line, _ = make_call(script)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await trio.sleep(1.0)
        call.transfer_news("succeeded", 200, "technician side: 200 OK")
    assert line.asked == [("answer", 0.0), ("hang_up", 1.0)]
    assert call.script_outcome == "transferred"


class TaskSteps(trio.abc.Instrument):
    """Counts the steps each task has run (a step: from one checkpoint to the next)."""

    def __init__(self) -> None:
        self.steps: dict = {}

    def before_task_step(self, task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_the_first_phrase_and_its_200_go_out_in_the_call_tasks_first_step():
    # The script runs in Call.run's own task and an unknown caller's look-up needs no
    # wait: nothing between the call's start and its 200 OK yields to the scheduler
    # (each pass is tens of µs of INVITE->200, docs/BENCHMARKS.md).
    steps = TaskSteps()
    trio.lowlevel.add_instrument(steps)
    seen = []

    def answered(call: Call) -> None:
        task = trio.lowlevel.current_task()
        seen.append((task, steps.steps.get(task)))
        call.answered_at = trio.current_time()
        call.answered.set()

    async def greets(call):
        record = await call.caller_record()
        assert record is None
        await call.say("greet")

    try:
        lookup = CallerLookup(crm=None, phone="0612345678", started_at=trio.current_time(), budget=0.15, call_id="c1")
        stream = PlayingStream()
        call = Call(call_id="c1", caller=None, caller_number=None, stream=stream, media=None,
                    digits=DigitQueue(call_id="c1"), lookup=lookup,
                    line=CallLine(answer=answered, hang_up=lambda call: call.end("local_hangup", trio.current_time())),
                    timers=TIMERS, cache={"greet": Phrase(audio=b"\x7f" * 160)}, script=greets,
                    invite_time=trio.current_time(), source=("127.0.0.1", 5060))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            await trio.testing.wait_all_tasks_blocked()
            call.end("remote_bye", trio.current_time())
    finally:
        trio.lowlevel.remove_instrument(steps)
    [(task, step)] = seen
    assert task.coro.cr_code is Call.run.__code__ and step == 1


@pytest.mark.parametrize(("crm", "phone", "why"), [(None, "0612345678", "no CRM configured"),
                                                  (object(), None, "anonymous or unparseable caller number")])
async def test_a_look_up_with_nothing_to_ask_is_over_before_it_starts(crm, phone, why):
    lookup = CallerLookup(crm=crm, phone=phone, started_at=5.0, budget=0.15, call_id="c1")
    assert lookup.done.is_set() and lookup.error == why and lookup.finished_at == 5.0
    with trio.testing.assert_no_checkpoints():
        assert await lookup.wait() is None
    await lookup.run()  # nothing to do, nothing logged or counted
    assert lookup.error == why
