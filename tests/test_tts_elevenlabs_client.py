"""The shared ElevenLabs client against the fake API on loopback: failures mapped, retries timed.

Both ways of asking go through one client, so each rule is checked on both: ``convert``
(the whole body, for ``cache build``) and ``stream`` (live speech). The fake runs in
real time in its own thread; retry gaps are read from its arrival stamps.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
from fake_elevenlabs import FakeElevenLabs, Respond, expected_audio

from eko_rtp.tts.elevenlabs_api import RetryPolicy, SpeechApi
from eko_rtp.tts.elevenlabs_client import ElevenLabsClient
from eko_rtp.tts.errors import TtsAuthError, TtsRateLimited, TtsRequestRejected, TtsServerError, TtsStreamBroken

KEY = "test-key"
TEXT = "Bonjour"
MARGIN = 0.25  # scheduling slack on 2 shared cores


@pytest.fixture
def fake():
    with FakeElevenLabs(api_key=KEY) as server:
        yield server


@contextlib.asynccontextmanager
async def client_for(base_url, *, api_key=KEY, retries=2, first_backoff=0.01, max_backoff=1.0):
    api = SpeechApi(api_key=api_key, base_url=base_url, voice_id="voice-1", model_id="model-1")
    client = ElevenLabsClient(api, RetryPolicy(retries=retries, first_backoff=first_backoff, max_backoff=max_backoff),
                              timeout=10.0)
    try:
        yield client
    finally:
        await client.aclose()


async def streamed(client, text=TEXT, first_byte_timeout=5.0):
    audio = bytearray()
    chunks = client.stream(text, first_byte_timeout=first_byte_timeout, stall_timeout=5.0)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            audio += chunk
    return bytes(audio)


async def converted(client, text=TEXT):
    return await client.convert(text)


WAYS = [pytest.param(converted, id="convert"), pytest.param(streamed, id="stream")]


def route_of(ask):
    return "/v1/text-to-speech/voice-1" + ("/stream" if ask is streamed else "")


def gaps(fake):
    stamps = [record.received_at for record in fake.audio_requests()]
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


@pytest.mark.parametrize("ask", WAYS)
async def test_both_ways_send_the_one_request_shape(fake, ask):
    async with client_for(fake.base_url) as client:
        assert await ask(client) == expected_audio(TEXT)
    [record] = fake.audio_requests()
    assert record.path == route_of(ask)
    assert record.query == {"output_format": "ulaw_8000"}
    assert record.json == {"text": TEXT, "model_id": "model-1"}
    assert (record.headers["xi-api-key"], record.headers["accept"]) == (KEY, "audio/basic")


@pytest.mark.parametrize("ask", WAYS)
@pytest.mark.parametrize(
    ("respond", "kind", "says"),
    [
        (Respond(status=400, error_status="voice_not_found", message="A voice with that ID does not exist"),
         TtsRequestRejected, "request rejected (400 voice_not_found: A voice with that ID does not exist)"),
        (Respond(status=422), TtsRequestRejected, "request rejected (422 invalid_request: Unprocessable request)"),
        (Respond(status=401), TtsAuthError, "API key refused (401 invalid_api_key: Invalid API key)"),
    ],
)
async def test_failures_no_retry_can_fix_are_raised_at_once(fake, ask, respond, kind, says):
    fake.plan(respond)
    async with client_for(fake.base_url) as client:
        with pytest.raises(kind) as raised:
            await ask(client)
        assert client.retries_done == 0
    assert str(raised.value) == f"ElevenLabs {route_of(ask)}: {says}"
    assert [record.status for record in fake.audio_requests()] == [respond.status]


@pytest.mark.parametrize("ask", WAYS)
async def test_a_refused_key_is_fatal_with_retries_left(fake, ask):
    async with client_for(fake.base_url, api_key="a-wrong-key", retries=5) as client:
        with pytest.raises(TtsAuthError) as raised:
            await ask(client)
    assert (raised.value.status, raised.value.reason) == (401, "Invalid API key")
    assert "a-wrong-key" not in str(raised.value)
    assert [record.status for record in fake.audio_requests()] == [401]


@pytest.mark.parametrize("ask", WAYS)
@pytest.mark.parametrize(
    ("status", "kind", "says"),
    [
        (429, TtsRateLimited, "rate limited (429 too_many_concurrent_requests: Too many concurrent requests)"),
        (500, TtsServerError, "server error (500 internal_server_error: Internal server error)"),
        (503, TtsServerError, "server error (503 service_unavailable: Service temporarily unavailable)"),
    ],
)
async def test_passing_trouble_is_retried_until_the_retries_run_out(fake, ask, status, kind, says):
    fake.default = Respond(status=status)
    async with client_for(fake.base_url, retries=2) as client:
        with pytest.raises(kind) as raised:
            await ask(client)
        assert client.retries_done == 2
    assert str(raised.value) == f"ElevenLabs {route_of(ask)}: {says}"
    assert [record.status for record in fake.audio_requests()] == [status] * 3


@pytest.mark.parametrize("ask", WAYS)
async def test_passing_trouble_then_success(fake, ask):
    fake.plan(Respond(status=429), Respond(status=502))
    async with client_for(fake.base_url) as client:
        assert await ask(client) == expected_audio(TEXT)
        assert client.retries_done == 2
    assert [record.status for record in fake.audio_requests()] == [429, 502, 200]


@pytest.mark.parametrize("ask", WAYS)
async def test_backoff_doubles_up_to_its_cap(fake, ask):
    fake.plan(*[Respond(status=503)] * 3)
    async with client_for(fake.base_url, retries=3, first_backoff=0.1, max_backoff=0.25) as client:
        assert await ask(client) == expected_audio(TEXT)
    for gap, delay in zip(gaps(fake), [0.1, 0.2, 0.25], strict=True):
        assert delay <= gap < delay + MARGIN


@pytest.mark.parametrize("ask", WAYS)
async def test_retry_after_is_a_floor_under_the_backoff_and_max_backoff_its_ceiling(fake, ask):
    fake.plan(Respond(status=429, retry_after=1), Respond(status=429, retry_after=30))
    async with client_for(fake.base_url, first_backoff=0.01, max_backoff=1.5) as client:
        assert await ask(client) == expected_audio(TEXT)
    first, second = gaps(fake)
    assert 1.0 <= first < 1.0 + MARGIN  # as the server asked, not our 0.01 s
    assert 1.5 <= second < 1.5 + MARGIN  # not the 30 s asked: a phrase or a caller would wait that long


async def test_the_first_byte_deadline_bounds_the_retries_of_a_stream(fake):
    fake.default = Respond(status=503)
    async with client_for(fake.base_url, retries=10, first_backoff=0.1, max_backoff=0.1) as client:
        started = trio.current_time()
        with pytest.raises(TtsServerError):
            await streamed(client, first_byte_timeout=0.25)
        # Tries at 0, 0.1 and 0.2 s; a fourth could not start before the 0.25 s deadline,
        # so the stream gives up at once rather than sleep into it.
        assert trio.current_time() - started < 0.25
        assert client.retries_done == 2
    assert len(fake.audio_requests()) == 3


async def test_convert_retries_a_body_cut_midway(fake):
    fake.plan(Respond(chunk_size=100, cut_after=500))
    async with client_for(fake.base_url) as client:
        assert await client.convert(TEXT) == expected_audio(TEXT)
        assert client.retries_done == 1
    assert [record.cut for record in fake.audio_requests()] == [True, False]


async def test_stream_does_not_retry_once_audio_has_gone_out(fake):
    fake.plan(Respond(chunk_size=100, cut_after=500))
    async with client_for(fake.base_url) as client:
        with pytest.raises(TtsStreamBroken, match=r"^ElevenLabs: stream broken after 500 bytes: RemoteProtocolError: "):
            await streamed(client)
        assert client.retries_done == 0
    assert len(fake.audio_requests()) == 1


@pytest.mark.parametrize("ask", WAYS)
async def test_an_unreachable_provider_is_a_retried_server_error(ask):
    with FakeElevenLabs() as gone:
        base_url = gone.base_url  # a port that was open and is now closed
    async with client_for(base_url, retries=1) as client:
        with pytest.raises(TtsServerError) as raised:
            await ask(client)
        assert client.retries_done == 1
    assert raised.value.status is None
    assert raised.value.reason.startswith("ConnectError: ")
    assert str(raised.value) == f"ElevenLabs at {base_url}: {raised.value.reason}"
