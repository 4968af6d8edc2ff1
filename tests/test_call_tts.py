"""Live TTS inside a call: the real server process streams from a local server that speaks
the ElevenLabs endpoint, and a raw caller checks what arrives over RTP."""

from __future__ import annotations

import pytest

from eko_tts_helpers import payload_audio
from eko_test_scripts import LIVE_TEXT
from fake_elevenlabs import FakeElevenLabs, Respond, expected_audio
from raw_caller import place_call
from server_helpers import ServerProcess


def serve_with_tts(cache_dir, tmp_path, fake, script: str) -> ServerProcess:
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[tts]\ndynamic_cache_dir = "{tmp_path / "dynamic"}"\n', encoding="utf-8")
    env = {"ELEVENLABS_API_KEY": "test-key", "ELEVENLABS_BASE_URL": fake.base_url}
    return ServerProcess(cache_dir, "--config", str(config), "--script", script, env=env)


def live_start(received: bytes, live: bytes) -> int:
    index = received.find(live[:800])
    assert index >= 0, "the live audio never arrived"
    return index


def test_live_text_plays_as_it_arrives_and_the_second_call_is_free(built_cache, tmp_path):
    live = expected_audio(LIVE_TEXT)
    with FakeElevenLabs(api_key="test-key") as fake:
        fake.plan(Respond(first_byte_delay=0.3, chunk_size=1000, chunk_delay=0.02))
        with serve_with_tts(built_cache, tmp_path, fake, "eko_test_scripts:say_live") as server:
            first = place_call(server.address, hold=len(live) / 8000 + 1.0)
            assert len(fake.audio_requests()) == 1
            second = place_call(server.address, hold=len(live) / 8000 + 1.0)
            server.wait_for_log(r"tts_chars=0 .*tts_cache_hits=1")
        assert len(fake.audio_requests()) == 1  # the second call was a dynamic-cache hit
    for record in (first, second):
        received = payload_audio(record.packets)
        start = live_start(received, live)
        assert received[start : start + len(live)] == live  # every byte, in order, no gap
    # The first call waited ~300 ms for the first byte and heard silence meanwhile (no gap in RTP).
    first_live = live_start(payload_audio(first.packets), live) // 160
    assert 15 <= first_live <= 15 + 2 + 5, first_live  # 300 ms = 15 frames, +1 for the clock, +slack
    assert live_start(payload_audio(second.packets), live) // 160 <= 2


def test_hybrid_has_no_gap_when_the_live_audio_is_ready(built_cache, tmp_path):
    live = expected_audio(LIVE_TEXT)
    filler = (built_cache / "filler_one_moment.raw").read_bytes()
    with FakeElevenLabs(api_key="test-key") as fake:
        fake.plan(Respond(first_byte_delay=0.3))
        with serve_with_tts(built_cache, tmp_path, fake, "eko_test_scripts:say_hybrid") as server:
            record = place_call(server.address, hold=(len(filler) + len(live)) / 8000 + 1.0)
    received = payload_audio(record.packets)
    start = received.find(filler[:1600])
    assert start >= 0
    assert received[start : start + len(filler)] == filler
    assert received[start + len(filler) : start + len(filler) + len(live)] == live  # gapless


def test_a_tts_failure_plays_the_error_phrase_and_the_call_goes_on(built_cache, tmp_path):
    error_phrase = (built_cache / "error.raw").read_bytes()
    with FakeElevenLabs(api_key="test-key") as fake:
        fake.plan(Respond(status=401))
        with serve_with_tts(built_cache, tmp_path, fake, "eko_test_scripts:say_live") as server:
            record = place_call(server.address, hold=len(error_phrase) / 8000 + 1.5)
            server.wait_for_log(r"ended \(remote_bye\).*tts_failures=1")
    received = payload_audio(record.packets)
    start = received.find(error_phrase[:1600])
    assert start >= 0 and received[start : start + len(error_phrase)] == error_phrase
    assert not record.server_hung_up  # the call went on after the failure


def test_hanging_up_closes_the_tts_stream(built_cache, tmp_path):
    with FakeElevenLabs(api_key="test-key") as fake:
        fake.plan(Respond(first_byte_delay=0.1, chunk_size=160, chunk_delay=0.05))  # ~10 s of streaming
        with serve_with_tts(built_cache, tmp_path, fake, "eko_test_scripts:say_live") as server:
            place_call(server.address, hold=1.0)
            [request] = fake.audio_requests()
            assert request.finished.wait(5)
            server.wait_for_log(r"ended \(remote_bye\)")
        assert request.disconnected and not request.completed
    assert not list((tmp_path / "dynamic").glob("*.ulaw"))  # nothing partial stored
