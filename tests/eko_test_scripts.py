"""Call scripts used by the server tests (loaded with ``--script eko_test_scripts:NAME``)."""

from __future__ import annotations

import logging

import trio

from eko_rtp.call.greeting import choose_greeting

log = logging.getLogger("eko_rtp.call.script")


async def greet_then_hang_up(call) -> None:
    """Say the greeting, then send BYE ourselves."""
    await call.say("greet")
    await call.hangup()


async def ring_then_greet(call) -> None:
    """Wait 1.5 s before answering (so a caller can CANCEL), then greet."""
    await trio.sleep(1.5)
    await call.say("greet")
    await trio.sleep_forever()


async def echo_digits(call) -> None:
    """Answer, then log each digit as it comes."""
    await call.answer()
    async for digit in call.dtmf:
        log.info("digit %s", digit)


async def silent_forever(call) -> None:
    """Answer at once and play silence until the call ends."""
    await call.answer()
    await trio.sleep_forever()


async def crash_after_greeting(call) -> None:
    """A script bug: the server must log it and hang up, not die."""
    await call.say("greet")
    raise RuntimeError("script bug on purpose")


LIVE_TEXT = "Votre ticket porte le numéro 4 2 7 1."


async def say_live(call) -> None:
    """Answer with live TTS only, then wait for the caller to hang up."""
    await call.say_text(LIVE_TEXT)
    log.info("live text done")
    await trio.sleep_forever()


async def say_hybrid(call) -> None:
    """A cached filler hides the TTS wait, then the live text."""
    await call.say_hybrid("filler_one_moment", LIVE_TEXT)
    log.info("hybrid done")
    await trio.sleep_forever()


async def time_digits(call) -> None:
    """Answer, then log each digit with the moment the script saw it (CLOCK_MONOTONIC,
    which a caller on the same machine reads too)."""
    import time

    await call.answer()
    async for digit in call.dtmf:
        log.info("digit %s seen at monotonic %.6f", digit, time.monotonic())
    log.info("no more digits")


async def greet_then_live(call) -> None:
    """Eko's greeting for what the CRM knows, then live text behind it: a call that moves every
    figure of the dashboard (CRM, phrase cache, live TTS and its cache)."""
    call.greeting = choose_greeting(await call.caller_record())
    await call.say_hybrid(call.greeting[0], LIVE_TEXT)
    log.info("greeting and live text done")
    await trio.sleep_forever()


async def greet_and_log_digits(call) -> None:
    """The greeting, with each digit logged as it comes (test_server_media_guard_process.py)."""
    async with trio.open_nursery() as nursery:
        async def log_digits() -> None:
            async for digit in call.dtmf:
                log.info("digit %s", digit)

        nursery.start_soon(log_digits)
        await call.say("greet")
        await trio.sleep_forever()
