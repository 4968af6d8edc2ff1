"""Eko's default call script: greet the caller, then follow their keypad answers.

Until speech recognition exists the caller answers with DTMF. The script is plain
``async def run(call)`` code on the call script API, the same API a custom script
(``--script MODULE:FUNCTION``) gets.
"""

from __future__ import annotations

import logging

log = logging.getLogger("eko_rtp.call.script")

CALLER_IDLE_SECONDS = 8.0


async def run(call) -> None:
    """Play ``greet`` then ``welcome``, then wait for the caller's digits until hang-up."""
    await call.say("greet")
    await call.say("welcome")
    async for digit in call.dtmf:
        log.info("call %s: caller pressed %s", call.call_id, digit)
