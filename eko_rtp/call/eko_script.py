"""Eko's default call script: the right greeting at once, then the caller's answers, by voice or keypad.

The caller's CRM look-up started when the INVITE arrived; :meth:`Call.caller_record`
waits for it only within the greeting budget counted from the INVITE, so the
greeting never waits on a slow CRM. Every question Eko asks is interruptible: the
caller may answer over it (barge-in).

- A returning caller with an open ticket is asked whether they call about it. The
  answer is whichever comes first: a spoken yes or no (:func:`classify_yes_no` of the
  recognizer's transcript) or the keys 1 (oui) / 2 (non). Yes -> the caller is
  handed over to a technician (:func:`hand_over`: REFER, or a callback when closed,
  busy or the transfer fails); no -> ``ticket_not_related`` and the caller's reason is listened to; an unclear
  answer -> ``clarify_yes_no`` once.
- Every other caller has just been asked "Comment puis-je vous aider ?": their
  answer (a description: a longer endpointing) is logged and acknowledged by the
  problem type it names, when it names one.
- No dead air: ``script.silence_reprompt_seconds`` (15 s) of silence after a question
  -> ``still_there``; ``script.silence_hangup_seconds`` (30 s) -> ``no_input_goodbye``
  and BYE.
- Without speech recognition (no Deepgram key, or it failed, also in the middle of
  the question) the ticket question is followed by ``press_yes_no`` and the keys decide. A key pressed during a question
  interrupts it, as speech does.
"""

from __future__ import annotations

import logging
import unicodedata
from functools import partial

import trio

from eko_rtp.call.call import TransferFailed
from eko_rtp.call.greeting import UNKNOWN_CALLER_GREETING, choose_greeting
from eko_rtp.call.yesno import Answer, classify_yes_no
from eko_rtp.transfer.policy import Decision

log = logging.getLogger("eko_rtp.call.script")

YES_KEY, NO_KEY = "1", "2"
DESCRIPTION_ENDPOINTING = 1.2  # s of pause that ends a description (a yes/no ends on the recognizer's 0.5 s)

# Words that name a problem type in a caller's description (accents stripped) -> the phrase.
PROBLEM_WORDS = {
    "problem_internet": ("internet", "connexion", "box", "wifi", "fibre", "adsl", "debit", "reseau"),
    "problem_mobile": ("mobile", "portable", "forfait", "sim", "smartphone"),
    "problem_tv": ("tele", "television", "tv", "decodeur", "chaine", "chaines"),
    "problem_billing": ("facture", "factures", "facturation", "prelevement", "paiement", "rembourse", "remboursement"),
}


async def run(call) -> None:
    """Greet the caller by what the CRM knows, then follow their answers."""
    record = await call.caller_record()
    keys = choose_greeting(record)
    call.greeting = keys
    log.info("greeting: %s (%s)", " + ".join(keys), "unknown caller" if record is None else "known caller")
    for key in keys[:-1]:
        await call.say(key)
    await call.say(keys[-1], interruptible=True)  # the greeting ends with a question
    if keys[0].startswith("returning_client_pending"):
        await _is_it_about_the_ticket(call)
    else:
        await _how_can_i_help(call)


# What no call can do without: every caller the CRM does not know (or a CRM that is
# down or late) is greeted with these. Without them in the cache the server reports
# itself unhealthy (eko_rtp/server/health.py): OPTIONS and new INVITEs get 503.
run.essential_phrases = UNKNOWN_CALLER_GREETING


async def _is_it_about_the_ticket(call) -> None:
    if not call.can_listen and not call.digits_pending:  # a key already pressed is the answer
        await call.say("press_yes_no", interruptible=True)
    clarified = False
    while True:
        answer = await _with_silence_watch(call, _yes_or_no)
        if answer is None:
            return  # silence: the caller was told goodbye
        if answer is Answer.YES:
            await hand_over(call, queue=call.greeting[0].rpartition("_")[2], reason="open ticket")
            return
        if answer is Answer.NO:
            await call.say("ticket_not_related", interruptible=True)
            await _how_can_i_help(call)
            return
        if clarified:
            log.info("no clear yes or no after the clarification; saying goodbye")
            await call.say("goodbye")
            await call.hangup()
            return
        clarified = True
        await call.say("clarify_yes_no" if call.can_listen else "press_yes_no", interruptible=True)


async def hand_over(call, *, queue: str | None, reason: str) -> None:
    """Put the caller through to a technician of ``queue``, or leave a callback when none can take it.

    Outside business hours -> ``closed_hours``; the team at its load limit (or no
    queue configured) -> ``transfer_unavailable``; a transfer that fails ->
    ``transfer_failed``. Each of these records a callback (a ticket for an
    anonymous caller) and says goodbye; a transfer that succeeds ends our leg.
    """
    desk = call.handover
    plan = desk.plan(queue) if desk is not None else None
    if plan is not None and plan.decision is Decision.TRANSFER:
        log.info("transferring to the %s queue (%s)", plan.queue, plan.target)
        await call.say("ticket_transfer_ok")
        try:
            await call.transfer(plan.target)
            return
        except TransferFailed as failure:
            log.warning("transfer to %s failed: %s", plan.target, failure.reason)
            call.script_outcome = "transfer_failed"
            phrase = "transfer_failed"
    elif plan is not None and plan.decision is Decision.CLOSED:
        log.info("no transfer: %s", plan.why)
        call.script_outcome = "closed_hours"
        phrase = "closed_hours"
    else:
        log.info("no transfer: %s", plan.why if plan is not None else "no handover desk")
        call.script_outcome = "callback_offered"
        phrase = "transfer_unavailable"
    async with trio.open_nursery() as nursery:
        # The CRM is asked while the caller hears the promise, not after it.
        if desk is not None:
            nursery.start_soon(partial(desk.leave_request, call_id=call.call_id, phone=call.caller_number,
                                       reason=reason, queue=plan.queue,
                                       not_before=plan.opens_at if plan.decision is Decision.CLOSED else None))
        await call.say(phrase)
    await call.say("goodbye")
    await call.hangup()


async def _how_can_i_help(call) -> None:
    """The caller was asked what the call is about: listen to it, and acknowledge it."""
    if not call.can_listen:
        while await _with_silence_watch(call, _any_key) is not None:
            pass  # each key logged; the silence rules end the call
        return
    description = await _with_silence_watch(call, _description)
    if description is None:
        return
    log.info("caller's reason: %s", description)
    problem = problem_phrase(description)
    if problem is not None:
        await call.say(problem, interruptible=True)
    await call.say("anything_else", interruptible=True)
    more = await _with_silence_watch(call, _description)
    if more is not None:
        log.info("caller added: %s", more)
        await call.say("goodbye")
        await call.hangup()


async def _with_silence_watch(call, wait_for_answer):
    """``wait_for_answer(call, timeout)`` with Eko's silence rules; None once the caller was let go."""
    timers = call.timers
    asked_at = trio.current_time()
    answer = await wait_for_answer(call, timers.silence_reprompt)
    if answer is not None:
        return answer
    log.info("no answer for %.0f s; asking whether the caller is still there", timers.silence_reprompt)
    await call.say("still_there", interruptible=True)
    left = asked_at + timers.silence_hangup - trio.current_time()
    answer = await wait_for_answer(call, max(left, 0.0))
    if answer is not None:
        return answer
    log.info("no answer for %.0f s; hanging up", timers.silence_hangup)
    call.script_outcome = "no_input"
    await call.say("no_input_goodbye")
    await call.hangup()
    return None


async def _yes_or_no(call, timeout: float) -> Answer | None:
    """The first yes or no, spoken or keyed, within ``timeout``; UNKNOWN for an unclear spoken answer."""
    result: list[Answer] = []
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keyed_yes_or_no, call, result, nursery.cancel_scope)
            nursery.start_soon(_spoken_yes_or_no, call, timeout, result, nursery.cancel_scope)
    return result[0] if result else None


async def _keyed_yes_or_no(call, result: list, done: trio.CancelScope) -> None:
    async for digit in call.dtmf:
        if digit in (YES_KEY, NO_KEY):
            log.info("caller pressed %s", digit)
            result.append(Answer.YES if digit == YES_KEY else Answer.NO)
            done.cancel()
            return
        log.info("caller pressed %s (expected 1 or 2)", digit)
    await trio.sleep_forever()  # the call ended: the other ways may still finish


async def _spoken_yes_or_no(call, timeout: float, result: list, done: trio.CancelScope) -> None:
    if not call.can_listen:
        await trio.sleep_forever()  # no speech recognition: keys only
    text = await call.listen(timeout)
    if text is None:
        if not call.can_listen:
            # Recognition stopped while the caller was answering: say so (press_yes_no).
            log.info("speech recognition stopped during the question; asking for a key")
            result.append(Answer.UNKNOWN)
            done.cancel()
            return
        await trio.sleep_forever()
    answer = classify_yes_no(text)
    log.info("caller said %r: %s", text, answer.name.lower())
    result.append(answer)
    done.cancel()


async def _description(call, timeout: float) -> str | None:
    return await call.listen(timeout, endpointing=DESCRIPTION_ENDPOINTING)


async def _any_key(call, timeout: float) -> str | None:
    """Without speech recognition: the keys pressed are logged; silence still counts."""
    with trio.move_on_after(timeout):
        async for digit in call.dtmf:
            log.info("caller pressed %s", digit)
            return digit
        await trio.sleep_forever()
    return None


def problem_phrase(description: str) -> str | None:
    """The ``problem_*`` phrase a description names (the first named), or None."""
    folded = "".join(ch for ch in unicodedata.normalize("NFD", description.lower())
                     if unicodedata.category(ch) != "Mn")
    words = "".join(ch if ch.isalnum() else " " for ch in folded).split()[:60]
    for word in words:
        for phrase, names in PROBLEM_WORDS.items():
            if word in names:
                return phrase
    return None
