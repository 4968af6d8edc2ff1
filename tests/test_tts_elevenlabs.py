"""Live TTS through ElevenLabsBackend + TtsEngine against the fake ElevenLabs server on loopback.

The fake runs in real time in its own thread, so these tests use trio's real clock
and assert times within a margin of the delays the fake was told to use.
"""

from __future__ import annotations

import pytest
import trio
from fake_elevenlabs import FakeElevenLabs, Respond, expected_audio
from test_tts_engine import RecordingSink

from eko_rtp.cache.audio import pad_to_frames
from eko_rtp.tts.accounting import TtsAccounting
from eko_rtp.tts.dynamic_cache import DynamicCache
from eko_rtp.tts.elevenlabs import ElevenLabsBackend
from eko_rtp.tts.engine import TtsEngine
from eko_rtp.tts.errors import (
    TtsAuthError,
    TtsNoApiKey,
    TtsRateLimited,
    TtsServerError,
    TtsStreamBroken,
    TtsTimeout,
)
from eko_rtp.tts.settings import TtsSettings

KEY = "test-key"
TEXT = "Votre rendez-vous est confirmé pour demain."  # 43 characters: 17200 bytes, 107.5 frames
MARGIN = 0.25  # scheduling slack on 2 shared cores


@pytest.fixture
def fake():
    with FakeElevenLabs(api_key=KEY) as server:
        yield server


def engine_for(fake, tmp_path, **overrides):
    options = dict(api_key=KEY, base_url=fake.base_url, voice_id="voice-1", dynamic_cache_dir=tmp_path, retry_backoff=0.01)
    settings = TtsSettings(**{**options, **overrides})
    return TtsEngine(settings, ElevenLabsBackend(settings), DynamicCache(tmp_path, 1 << 20), TtsAccounting())


async def finished(record):
    assert await trio.to_thread.run_sync(record.wait_finished, 3.0)
    return record


async def test_streams_odd_chunks_into_exact_frames_and_sends_what_the_api_wants(fake, tmp_path):
    fake.plan(Respond(chunk_size=333))
    engine = engine_for(fake, tmp_path)
    sink = RecordingSink()
    spoken = await engine.speak(TEXT, sink)
    await engine.aclose()
    assert sink.audio == pad_to_frames(expected_audio(TEXT))
    assert all(len(frame) == 160 for frame in sink.frames) and sink.ended == 1
    assert (spoken.frames, spoken.characters_billed, spoken.stored) == (108, 43, True)
    [record] = fake.requests
    assert (record.path, record.streaming) == ("/v1/text-to-speech/voice-1/stream", True)
    assert record.query == {"output_format": "ulaw_8000", "optimize_streaming_latency": "3"}
    assert record.json == {"text": TEXT, "model_id": "eleven_flash_v2_5"}
    assert record.headers["xi-api-key"] == KEY


async def test_first_frame_goes_out_when_the_first_chunk_lands(fake, tmp_path):
    fake.plan(Respond(first_byte_delay=0.3, chunk_size=480, chunk_delay=0.1))
    engine = engine_for(fake, tmp_path)
    sink = RecordingSink()
    started = trio.current_time()
    spoken = await engine.speak("Un, deux, trois.", sink)  # 6400 bytes: 14 chunks, 13 delays
    await engine.aclose()
    first = sink.times[0] - started
    assert 0.3 <= first < 0.3 + MARGIN
    assert spoken.first_frame_latency == pytest.approx(first, abs=0.01)
    # The first chunk's three frames go out together, long before the stream ends.
    assert sink.times[2] - sink.times[0] < 0.05
    assert sink.times[-1] - started >= 0.3 + 13 * 0.1


async def test_second_speak_is_a_cache_hit_with_no_request(fake, tmp_path):
    engine = engine_for(fake, tmp_path)
    usage = engine.accounting.open_call("c1")
    await engine.speak(TEXT, RecordingSink(), call=usage)
    sink = RecordingSink()
    spoken = await engine.speak(TEXT, sink, call=usage)
    await engine.aclose()
    assert spoken.from_cache and len(fake.requests) == 1
    assert sink.audio == pad_to_frames(expected_audio(TEXT))
    snapshot = usage.snapshot()
    assert (snapshot.characters, snapshot.cache_hits, snapshot.cache_misses) == (43, 1, 1)
    assert snapshot.cost_usd == pytest.approx(0.00473)


async def test_cancel_mid_stream_closes_the_http_stream_and_stores_nothing(fake, tmp_path):
    fake.plan(Respond(chunk_size=160, chunk_delay=0.5))
    engine = engine_for(fake, tmp_path)
    with trio.CancelScope() as scope:
        sink = RecordingSink(on_push=lambda s: scope.cancel())
        await engine.speak(TEXT, sink)
    cancelled_at = trio.current_time()
    [record] = fake.requests
    await finished(record)
    assert trio.current_time() - cancelled_at < 0.3  # seen during the 0.5 s pause, not after it
    assert (record.disconnected, record.completed, record.bytes_sent) == (True, False, 160)
    assert len(sink.frames) == 1 and len(engine.dynamic_cache) == 0 and list(tmp_path.iterdir()) == []
    await engine.aclose()


async def test_no_api_key(fake, tmp_path):
    settings = TtsSettings(base_url=fake.base_url)
    backend = ElevenLabsBackend(settings)
    engine = TtsEngine(settings, backend, DynamicCache(tmp_path, 1 << 20), TtsAccounting())
    with pytest.raises(TtsNoApiKey, match=r"^ElevenLabs: no API key configured \(set tts api_key or ELEVENLABS_API_KEY\)$"):
        await engine.speak("Bonjour", RecordingSink())
    await backend.aclose()
    assert fake.requests == []


async def test_401_is_not_retried_and_does_not_leak_the_key(fake, tmp_path):
    engine = engine_for(fake, tmp_path, api_key="wrong-key")
    with pytest.raises(TtsAuthError) as raised:
        await engine.speak("Bonjour", RecordingSink())
    await engine.aclose()
    assert str(raised.value) == (
        "ElevenLabs /v1/text-to-speech/voice-1/stream: API key refused (401 invalid_api_key: Invalid API key)"
    )
    assert "wrong-key" not in str(raised.value)
    assert len(fake.requests) == 1
    assert engine.accounting.total().characters == 0  # refused requests are not billed


async def test_429_then_success_is_retried_before_the_first_byte(fake, tmp_path):
    fake.plan(Respond(status=429), Respond(chunk_size=1000))
    engine = engine_for(fake, tmp_path)
    sink = RecordingSink()
    await engine.speak(TEXT, sink)
    await engine.aclose()
    assert [record.status for record in fake.requests] == [429, 200]
    assert sink.audio == pad_to_frames(expected_audio(TEXT))
    assert engine.backend.retries_done == 1
    assert engine.accounting.total().requests == 1


async def test_5xx_retried_until_the_retries_run_out(fake, tmp_path):
    fake.plan(*[Respond(status=503)] * 3)
    engine = engine_for(fake, tmp_path, retries=2)
    with pytest.raises(TtsServerError, match=r"server error \(503 service_unavailable: Service temporarily unavailable\)"):
        await engine.speak("Bonjour", RecordingSink())
    await engine.aclose()
    assert [record.status for record in fake.requests] == [503, 503, 503]
    assert engine.accounting.failures_by_kind == {"TtsServerError": 1}


async def test_retry_after_beyond_the_first_byte_budget_fails_at_once(fake, tmp_path):
    fake.plan(Respond(status=429, retry_after=30))
    engine = engine_for(fake, tmp_path, retry_backoff_max=5.0)
    started = trio.current_time()
    with pytest.raises(TtsRateLimited, match=r"rate limited \(429 too_many_concurrent_requests"):
        await engine.speak("Bonjour", RecordingSink())
    await engine.aclose()
    assert trio.current_time() - started < MARGIN and len(fake.requests) == 1


async def test_no_first_byte_within_the_timeout(fake, tmp_path):
    fake.plan(Respond(first_byte_delay=2.0))
    engine = engine_for(fake, tmp_path, first_byte_timeout=0.3)
    sink = RecordingSink()
    started = trio.current_time()
    with pytest.raises(TtsTimeout, match=r"^ElevenLabs: no audio within 0.3 s for 7 characters$"):
        await engine.speak("Bonjour", sink)
    assert 0.3 <= trio.current_time() - started < 0.3 + MARGIN
    [record] = fake.requests
    assert (await finished(record)).disconnected  # the request was abandoned, not left running
    assert sink.frames == [] and sink.ended == 1 and len(engine.dynamic_cache) == 0
    await engine.aclose()


async def test_stream_broken_midway_is_not_retried_and_not_stored(fake, tmp_path):
    fake.plan(Respond(chunk_size=250, cut_after=500))
    engine = engine_for(fake, tmp_path)
    sink = RecordingSink()
    with pytest.raises(TtsStreamBroken, match=r"^ElevenLabs: stream broken after 500 bytes: RemoteProtocolError"):
        await engine.speak(TEXT, sink)
    await engine.aclose()
    assert len(fake.requests) == 1
    assert sink.audio == expected_audio(TEXT)[:480] and sink.ended == 1  # 3 whole frames, no padded tail
    assert len(engine.dynamic_cache) == 0 and list(tmp_path.iterdir()) == []
    assert engine.accounting.total().characters == len(TEXT)  # it was billed: the provider generated it


async def test_unreachable_provider_is_a_server_error(tmp_path):
    with FakeElevenLabs() as gone:
        base_url = gone.base_url  # a port that was open and is now closed
    settings = TtsSettings(api_key=KEY, base_url=base_url, retries=1, retry_backoff=0.01)
    backend = ElevenLabsBackend(settings)
    engine = TtsEngine(settings, backend, DynamicCache(tmp_path, 1 << 20), TtsAccounting())
    with pytest.raises(TtsServerError, match=rf"^ElevenLabs at {base_url}: ConnectError"):
        await engine.speak("Bonjour", RecordingSink())
    assert backend.retries_done == 1
    await backend.aclose()


async def test_voice_settings_are_checked_by_the_sdk_model_and_sent(fake, tmp_path):
    with pytest.raises(ValueError, match=r"^voice_settings: unknown stabilty \(ElevenLabs knows stability, "):
        ElevenLabsBackend(TtsSettings(api_key=KEY, base_url=fake.base_url, voice_settings={"stabilty": 0.5}))
    engine = engine_for(fake, tmp_path, voice_settings={"stability": 0.5, "use_speaker_boost": True})
    await engine.speak("Bonjour", RecordingSink())
    await engine.aclose()
    [record] = fake.requests
    assert record.json == {"text": "Bonjour", "model_id": "eleven_flash_v2_5",
                           "voice_settings": {"stability": 0.5, "use_speaker_boost": True}}
