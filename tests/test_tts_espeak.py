"""EspeakBackend: the real espeak-ng | sox pipeline, streamed, and killed on cancel."""

from __future__ import annotations

import signal
from contextlib import aclosing

import pytest
import trio
from test_tts_engine import RecordingSink

from eko_rtp.cache.espeak import render_espeak
from eko_rtp.tts.accounting import TtsAccounting
from eko_rtp.tts.dynamic_cache import DynamicCache
from eko_rtp.tts.engine import TtsEngine
from eko_rtp.tts.errors import TtsSynthesisFailed
from eko_rtp.tts.espeak import EspeakBackend
from eko_rtp.tts.settings import TtsSettings

TEXT = "Bonjour, ici Eko. Votre rendez-vous est confirmé."
LONG_TEXT = " ".join(f"Phrase numéro {n}, assez longue pour occuper espeak un moment." for n in range(200))


def make_engine(tmp_path, voice="fr-fr"):
    settings = TtsSettings(espeak_voice=voice, dynamic_cache_dir=tmp_path)
    return TtsEngine(settings, EspeakBackend(settings), DynamicCache(tmp_path, 1 << 24), TtsAccounting())


async def test_streams_the_same_audio_the_phrase_cache_would_build(tmp_path):
    engine = make_engine(tmp_path)
    sink = RecordingSink()
    spoken = await engine.speak(TEXT, sink)
    assert spoken.frames > 50 and all(len(frame) == 160 for frame in sink.frames) and sink.ended == 1
    assert sink.audio == await render_espeak(TEXT, "fr-fr")
    assert spoken.stored and spoken.characters_billed == 0
    assert [process.returncode for process in engine.backend.last_processes] == [0, 0]


async def test_first_audio_comes_while_espeak_is_still_speaking(tmp_path):
    backend = EspeakBackend(TtsSettings())
    started = trio.current_time()
    async with aclosing(backend.stream(LONG_TEXT)) as chunks:
        first = await chunks.__anext__()
        latency = trio.current_time() - started
        espeak, sox = backend.last_processes
        assert first and espeak.returncode is None  # not waiting for the whole text
    assert latency < 1.0


async def test_cancel_kills_both_processes_and_stores_nothing(tmp_path):
    engine = make_engine(tmp_path)
    with trio.CancelScope() as scope:
        await engine.speak(LONG_TEXT, RecordingSink(on_push=lambda sink: scope.cancel()))
    espeak, sox = engine.backend.last_processes
    assert espeak.returncode == -signal.SIGKILL
    assert sox.returncode in (-signal.SIGKILL, 0)  # sox may see EOF first, once espeak-ng is dead
    assert len(engine.dynamic_cache) == 0


async def test_unknown_voice_is_a_synthesis_failure(tmp_path):
    engine = make_engine(tmp_path, voice="xx-nosuchvoice")
    sink = RecordingSink()
    with pytest.raises(
        TtsSynthesisFailed, match=r"^espeak-ng exited with status 1: Error: The specified espeak-ng voice does not exist.$"
    ):
        await engine.speak(TEXT, sink)
    assert sink.frames == [] and sink.ended == 1
    assert engine.accounting.failures_by_kind == {"TtsSynthesisFailed": 1}
