"""Eko's default call script: the right greeting at once, then the caller's keypad answers.

The caller's CRM look-up started when the INVITE arrived; :meth:`Call.caller_record`
waits for it only within the greeting budget counted from the INVITE, so the
greeting never waits on a slow CRM. A returning caller with an open ticket is asked
whether they call about it; until speech recognition exists they answer with DTMF:
1 (oui) -> ``ticket_transfer_ok``, 2 (non) -> ``ticket_not_related``; nothing for 8 s
-> the yes/no clarification, once, then ``goodbye``.
"""

from __future__ import annotations

import logging

import trio

from eko_rtp.call.greeting import choose_greeting

log = logging.getLogger("eko_rtp.call.script")

ANSWER_WAIT_SECONDS = 8.0
YES, NO = "1", "2"


async def run(call) -> None:
    """Greet the caller by what the CRM knows, then follow their answers."""
    record = await call.caller_record()
    keys = choose_greeting(record)
    call.greeting = keys
    log.info("greeting: %s (%s)", " + ".join(keys), "unknown caller" if record is None else "known caller")
    for key in keys:
        await call.say(key)
    if keys[0].startswith("returning_client_pending"):
        await _is_it_about_the_ticket(call)
    else:
        async for digit in call.dtmf:
            log.info("caller pressed %s", digit)


async def _is_it_about_the_ticket(call) -> None:
    for attempt in range(2):
        digit = await _yes_or_no(call)
        if digit == YES:
            await call.say("ticket_transfer_ok")
            await call.hangup()  # the transfer itself (REFER) is the trunk's job, not done here
            return
        if digit == NO:
            await call.say("ticket_not_related")
            async for pressed in call.dtmf:
                log.info("caller pressed %s", pressed)
            return
        if attempt == 0:
            await call.say("clarify_yes_no")
    await call.say("goodbye")
    await call.hangup()


async def _yes_or_no(call) -> str | None:
    """The first 1 or 2 pressed within the wait (other keys do not restart it)."""
    with trio.move_on_after(ANSWER_WAIT_SECONDS):
        async for digit in call.dtmf:
            if digit in (YES, NO):
                return digit
            log.info("caller pressed %s (expected 1 or 2)", digit)
    return None
