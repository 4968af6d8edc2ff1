"""The ElevenLabs render backend, through the shared client, against the local fake API (tests/fake_elevenlabs.py)."""

from __future__ import annotations

import re

import io
import json
import time

import pytest
from cache_helpers import run_cli, snapshot, write_catalogue
from fake_elevenlabs import FakeElevenLabs, Respond, expected_audio
from fake_elevenlabs import fake_elevenlabs  # noqa: F401 - the fixture

from eko_rtp.cache.audio import finish_ulaw
from eko_rtp.cache.build import build_cache
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.elevenlabs_backend import ElevenLabsBackend
from eko_rtp.cache.loader import load_cache
from eko_rtp.errors import UserError

TEXTS = {"greet": "Bonjour.", "goodbye": "Au revoir."}


def backend_for(fake, **options):
    return ElevenLabsBackend(api_key="test-key", voice="voice-1", model="model-1", base_url=fake.base_url,
                             first_backoff=0.01, **options)


async def build(tmp_path, backend, texts=TEXTS):
    phrases = write_catalogue(tmp_path / "phrases.toml", texts)
    progress = io.StringIO()
    try:
        summary = await build_cache(cache_dir=tmp_path / "cache", catalogue=load_catalogue(phrases), backend=backend,
                                    progress_stream=progress, terminal=False)
    finally:
        await backend.aclose()
    return summary, progress.getvalue().splitlines(), phrases


async def test_retries_429_and_503_then_stores_the_audio(tmp_path, fake_elevenlabs):
    fake_elevenlabs.plan(Respond(status=429, retry_after=0), Respond(status=503))
    summary, lines, phrases = await build(tmp_path, backend_for(fake_elevenlabs, concurrency=1), {"greet": "Bonjour."})
    assert lines[-1] == "rendered 1, skipped 0, 8 characters, estimated cost $0.00"
    assert summary.dollars == pytest.approx(8 * 0.11 / 1000)
    requests = fake_elevenlabs.audio_requests()
    assert [record.status for record in requests] == [429, 503, 200]
    for record in requests:
        assert (record.path, record.query["output_format"]) == ("/v1/text-to-speech/voice-1", "ulaw_8000")
        assert record.headers["xi-api-key"] == "test-key"
        assert (record.json["text"], record.json["model_id"]) == ("Bonjour.", "model-1")
    stored = (tmp_path / "cache" / "greet.raw").read_bytes()
    assert stored == finish_ulaw(expected_audio("Bonjour."))
    entry = json.loads((tmp_path / "cache" / "manifest.json").read_text())["phrases"]["greet"]
    assert (entry["backend"], entry["voice"], entry["model"]) == ("elevenlabs", "voice-1", "model-1")
    assert len(load_cache(tmp_path / "cache", phrases)) == 1


async def test_stream_cut_midway_every_time_stores_nothing(tmp_path, fake_elevenlabs):
    fake_elevenlabs.default = Respond(cut_after=500, chunk_size=100)
    summary, lines, phrases = await build(tmp_path, backend_for(fake_elevenlabs, max_attempts=3), {"greet": "Bonjour."})
    assert summary.failed[0][0] == "greet"
    assert summary.failed[0][1].startswith("ElevenLabs failed 3 times, last: RemoteProtocolError: ")
    assert lines[-1] == "rendered 0, skipped 0, failed 1, 0 characters, estimated cost $0.00"
    assert [record.cut for record in fake_elevenlabs.audio_requests()] == [True, True, True]
    assert snapshot(tmp_path / "cache") == {"manifest.json": b'{\n  "format_version": 1,\n  "encoding": "PCMU/8000/1",'
                                                              b'\n  "frame_bytes": 160,\n  "phrases": {}\n}\n'}


async def test_stream_cut_once_is_retried(tmp_path, fake_elevenlabs):
    fake_elevenlabs.plan(Respond(cut_after=500, chunk_size=100))
    summary, _, _ = await build(tmp_path, backend_for(fake_elevenlabs), {"greet": "Bonjour."})
    assert summary.rendered == ("greet",) and not summary.failed
    assert (tmp_path / "cache" / "greet.raw").read_bytes() == finish_ulaw(expected_audio("Bonjour."))


async def test_a_rejected_request_fails_the_phrase_at_once(tmp_path, fake_elevenlabs):
    fake_elevenlabs.plan(
        Respond(status=400, error_status="voice_not_found", message="A voice with that ID does not exist"))
    summary, _, _ = await build(tmp_path, backend_for(fake_elevenlabs), {"greet": "Bonjour."})
    assert summary.failed == (("greet", "ElevenLabs answered 400: A voice with that ID does not exist"),)
    assert [record.status for record in fake_elevenlabs.audio_requests()] == [400]


async def test_server_errors_until_the_attempts_run_out_fail_the_phrase(tmp_path, fake_elevenlabs):
    fake_elevenlabs.default = Respond(status=503)
    summary, _, _ = await build(tmp_path, backend_for(fake_elevenlabs, max_attempts=2), {"greet": "Bonjour."})
    assert summary.failed == (("greet", "ElevenLabs failed 2 times, last: HTTP 503: Service temporarily unavailable"),)
    assert [record.status for record in fake_elevenlabs.audio_requests()] == [503, 503]


async def test_slow_answers_are_fetched_four_at_a_time(tmp_path, fake_elevenlabs):
    fake_elevenlabs.default = Respond(first_byte_delay=0.3, chunk_size=400, chunk_delay=0.001)
    texts = {f"phrase_{n}": f"Phrase numéro {n}." for n in range(8)}
    started = time.monotonic()
    summary, _, phrases = await build(tmp_path, backend_for(fake_elevenlabs), texts)
    elapsed = time.monotonic() - started
    assert len(summary.rendered) == 8
    # Two waves of four: at least 2 x 0.3 s, well under the 2.4 s of one at a time.
    assert 0.6 <= elapsed < 1.8
    for key, text in texts.items():
        assert (tmp_path / "cache" / f"{key}.raw").read_bytes() == finish_ulaw(expected_audio(text))
    assert len(load_cache(tmp_path / "cache", phrases)) == 8


def test_cli_401_stops_the_build_with_a_clear_message_and_no_file(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", TEXTS)
    cache = tmp_path / "cache"
    with FakeElevenLabs(api_key="the-right-key") as fake:
        result = run_cli("cache", "build", "--cache", cache, "--phrases", phrases,
                         env={"ELEVENLABS_API_KEY": "a-wrong-key", "ELEVENLABS_BASE_URL": fake.base_url})
        statuses = [record.status for record in fake.audio_requests()]
    assert result.returncode == 2
    # The second request in flight may log its own 401 (a timestamped log line) after the
    # error is printed: the error is the last line that is not a log line.
    own_lines = [line for line in result.stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", line)]
    assert own_lines[-1] == (
        "eko-rtp: error: ElevenLabs rejected the API key (401: Invalid API key); check ELEVENLABS_API_KEY")
    assert statuses and set(statuses) == {401} and len(statuses) <= 2  # no retry of a 401
    assert not list(cache.glob("*.raw")) and not [path for path in cache.iterdir() if ".tmp-" in path.name]
    check = run_cli("cache", "check", "--cache", cache, "--phrases", phrases)
    assert check.stdout == "greet: missing: no audio file\ngoodbye: missing: no audio file\n"


def test_a_base_url_that_is_not_http_is_the_operators_to_fix():
    with pytest.raises(UserError) as raised:
        ElevenLabsBackend.from_environment(environ={"ELEVENLABS_API_KEY": "k", "ELEVENLABS_BASE_URL": "api.example"})
    assert str(raised.value) == "ElevenLabs: SpeechApi.base_url must start with http:// or https://, got 'api.example'"


def test_cli_without_a_key_refuses_the_elevenlabs_backend(tmp_path):
    phrases = write_catalogue(tmp_path / "phrases.toml", TEXTS)
    result = run_cli("cache", "build", "--backend", "elevenlabs", "--cache", tmp_path / "cache", "--phrases", phrases)
    assert (result.returncode, result.stderr) == (
        2, "eko-rtp: error: --backend elevenlabs needs an API key: set ELEVENLABS_API_KEY\n")
    assert not (tmp_path / "cache").exists()
