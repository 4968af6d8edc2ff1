"""Server-side call scripts for the bench's live TTS and listening scenarios (``eko-rtp serve --script``).

Each call says a text of its own, built from its Call-ID, so that no call finds
its audio in the dynamic cache: every call waits for the endpoint's first byte,
which is what the scenarios measure. Nothing is said before the live text
(``live_tts``) or before the cached filler (``hybrid``), so the caller can tell
where the live audio starts; ``mixed`` gives half the calls live text and half the
cached greeting.

``listening`` says a long cached phrase that the caller may interrupt, listens
briefly, and does it again until the caller hangs up. The bench's caller speaks a
sentence of about 2 s, pauses about 1.5 s and speaks again (``caller_speech.py``):
a barge-in early in a talkspurt, then ``LISTEN_SECONDS`` of listening,
brings the phrase back during the caller's pause, so the next talkspurt lands on
the bot's speech again, well inside the phrase and not at its first pause.
"""

from __future__ import annotations

import zlib

import trio

FILLER = "filler_one_moment"
LISTEN_PHRASE = "greet"  # about 5 s with espeak-ng: longer than a caller's talkspurt and pause
LISTEN_SECONDS = 1.5


def live_text(call) -> str:
    """The text a call says: unique per call (its Call-ID), so a dynamic-cache miss."""
    return text_for(call.call_id)


def text_for(call_id: str) -> str:
    """The live text of the call with this Call-ID (the bench matches endpoint requests by it)."""
    return f"Appel de test {call_id}."


async def live_tts(call) -> None:
    """Live TTS only, then hold the line until the caller hangs up."""
    await call.say_text(live_text(call))
    await trio.sleep_forever()


async def hybrid(call) -> None:
    """The cached filler at once while the live text renders, then the live audio."""
    await call.say_hybrid(FILLER, live_text(call))
    await trio.sleep_forever()


def speaks_live(call) -> bool:
    """``mixed``: every other call (by a hash of its Call-ID) speaks live, the rest cached."""
    return zlib.crc32(call.call_id.encode()) % 2 == 0


async def mixed(call) -> None:
    """Half the calls say a live text, the other half the cached greeting: do the cached
    streams keep their pacing while the live ones stream in?"""
    if speaks_live(call):
        await call.say_text(live_text(call))
    else:
        await call.say("greet")
    await trio.sleep_forever()


async def listening(call) -> None:
    """An interruptible phrase, a short listen, again and again until the hang-up."""
    while True:
        await call.say(LISTEN_PHRASE, interruptible=True)
        await call.listen(LISTEN_SECONDS)
