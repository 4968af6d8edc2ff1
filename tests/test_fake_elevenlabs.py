"""The fake ElevenLabs server answers the real SDK (sync client) and httpx as the API does."""

from __future__ import annotations

import time

import httpx
import pytest
from elevenlabs.client import ElevenLabs
from elevenlabs.core.api_error import ApiError
from fake_elevenlabs import SAMPLES_PER_CHARACTER, FakeElevenLabs, Respond, expected_audio
from fake_elevenlabs import fake_elevenlabs  # noqa: F401 - the fixture

VOICE = "voice-123"
MODEL = "eleven_flash_v2_5"


def sdk(fake: FakeElevenLabs, api_key: str = "test-key") -> ElevenLabs:
    return ElevenLabs(api_key=api_key, base_url=fake.base_url)


def open_stream(client, fake: FakeElevenLabs, text: str):
    """POST to the streaming route with httpx (module or Client); a context manager."""
    return client.stream(
        "POST",
        f"{fake.base_url}/v1/text-to-speech/{VOICE}/stream",
        params={"output_format": "ulaw_8000"},
        json={"text": text},
    )


def test_expected_audio_is_deterministic_and_keyed_by_text():
    assert expected_audio("hello") == expected_audio("hello")
    assert expected_audio("hello") != expected_audio("hellp")
    assert len(expected_audio("abc")) == 3 * SAMPLES_PER_CHARACTER


def test_convert_returns_the_whole_audio_and_logs_what_the_sdk_sent():
    with FakeElevenLabs(api_key="test-key") as fake:
        audio = b"".join(
            sdk(fake).text_to_speech.convert(
                VOICE, text="Bonjour", model_id=MODEL, output_format="ulaw_8000", optimize_streaming_latency=3
            )
        )
        assert audio == expected_audio("Bonjour")
        [record] = fake.requests
        assert record.wait_finished()
        assert (record.method, record.path, record.voice_id, record.streaming) == (
            "POST",
            f"/v1/text-to-speech/{VOICE}",
            VOICE,
            False,
        )
        assert record.query == {"output_format": "ulaw_8000", "optimize_streaming_latency": "3"}
        assert record.json["text"] == "Bonjour"
        assert record.json["model_id"] == MODEL
        assert record.headers["xi-api-key"] == "test-key"
        assert (record.status, record.completed, record.disconnected, record.bytes_sent) == (
            200,
            True,
            False,
            len(audio),
        )


def test_stream_sends_chunked_pieces_of_the_planned_size():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(chunk_size=333))
        text = "streaming words"
        audio = b"".join(sdk(fake).text_to_speech.stream(VOICE, text=text, output_format="ulaw_8000"))
        assert audio == expected_audio(text)
        [record] = fake.requests
        assert record.path == f"/v1/text-to-speech/{VOICE}/stream"
        # The handler thread marks the record after its last write, which the client
        # may have read already: give it a bounded moment.
        deadline = time.monotonic() + 2
        while not record.completed and time.monotonic() < deadline:
            time.sleep(0.005)
        assert record.streaming and record.completed


def test_stream_with_httpx_sees_chunk_boundaries_and_delays():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(chunk_size=500, first_byte_delay=0.2, chunk_delay=0.05))
        text = "four"  # 1600 bytes: chunks of 500, 500, 500, 100
        started = time.monotonic()
        with open_stream(httpx, fake, text) as response:
            first_byte_at = None
            pieces = []
            for piece in response.iter_raw():
                if first_byte_at is None:
                    first_byte_at = time.monotonic() - started
                pieces.append(piece)
        assert response.headers["content-type"] == "audio/basic"
        assert response.headers["transfer-encoding"] == "chunked"
        assert b"".join(pieces) == expected_audio(text)
        assert [len(piece) for piece in pieces] == [500, 500, 500, 100]
        assert 0.2 <= first_byte_at < 0.6


@pytest.mark.parametrize(
    ("respond", "status", "detail"),
    [
        (Respond(status=429), 429, {"status": "too_many_concurrent_requests", "message": "Too many concurrent requests"}),
        (Respond(status=500), 500, {"status": "internal_server_error", "message": "Internal server error"}),
        (
            Respond(status=503, error_status="overloaded", message="try later"),
            503,
            {"status": "overloaded", "message": "try later"},
        ),
    ],
)
def test_planned_errors_reach_the_sdk_as_api_errors(respond, status, detail):
    with FakeElevenLabs() as fake:
        fake.plan(respond)
        with pytest.raises(ApiError) as raised:
            b"".join(sdk(fake).text_to_speech.stream(VOICE, text="x", output_format="ulaw_8000"))
        assert raised.value.status_code == status
        assert raised.value.body == {"detail": detail}


def test_plan_is_consumed_in_order_then_default():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(status=429, retry_after=1), Respond(chunk_size=7))
        response = httpx.post(
            f"{fake.base_url}/v1/text-to-speech/{VOICE}/stream", params={"output_format": "ulaw_8000"}, json={"text": "a"}
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        for _ in range(2):
            response = httpx.post(
                f"{fake.base_url}/v1/text-to-speech/{VOICE}/stream",
                params={"output_format": "ulaw_8000"},
                json={"text": "a"},
            )
            assert response.content == expected_audio("a")
        assert [record.status for record in fake.requests] == [429, 200, 200]


def test_wrong_or_missing_key_is_401():
    with FakeElevenLabs(api_key="right") as fake:
        for key in ("wrong", None):
            with pytest.raises(ApiError) as raised:
                b"".join(sdk(fake, api_key=key).text_to_speech.stream(VOICE, text="x", output_format="ulaw_8000"))
            assert raised.value.status_code == 401
            assert raised.value.body == {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}


def test_unsupported_format_and_missing_text_are_422():
    with FakeElevenLabs() as fake:
        response = httpx.post(
            f"{fake.base_url}/v1/text-to-speech/{VOICE}", params={"output_format": "mp3_44100_128"}, json={"text": "a"}
        )
        assert response.status_code == 422
        assert response.json() == {
            "detail": {
                "status": "invalid_output_format",
                "message": "fake renders only output_format=ulaw_8000, got 'mp3_44100_128'",
            }
        }
        response = httpx.post(f"{fake.base_url}/v1/text-to-speech/{VOICE}", params={"output_format": "ulaw_8000"}, json={})
        assert response.status_code == 422
        assert response.json()["detail"]["message"] == "body must be a JSON object with a non-empty 'text'"
        assert httpx.post(f"{fake.base_url}/v2/other", json={}).status_code == 404


def test_cut_after_breaks_the_stream_midway():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(chunk_size=100, cut_after=250))
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            with open_stream(httpx, fake, "long enough text") as response:
                for piece in response.iter_raw():
                    received += piece
        assert bytes(received) == expected_audio("long enough text")[:250]
        [record] = fake.requests
        assert record.wait_finished()
        assert (record.bytes_sent, record.cut, record.completed) == (250, True, False)


def test_client_closing_midway_is_recorded_as_a_disconnect():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(chunk_size=160, chunk_delay=0.5))
        with httpx.Client() as client:
            with open_stream(client, fake, "a long sentence to speak") as response:
                first = next(response.iter_raw())
                assert first == expected_audio("a long sentence to speak")[:160]
            # Leaving the block closes the unfinished response: httpx drops the connection.
        [record] = fake.requests
        started = time.monotonic()
        assert record.wait_finished(timeout=2)
        assert time.monotonic() - started < 0.4  # seen while waiting, not after the 0.5 s delay
        assert (record.disconnected, record.completed, record.bytes_sent) == (True, False, 160)


def test_first_byte_delay_is_cut_short_by_a_client_that_gives_up():
    with FakeElevenLabs() as fake:
        fake.plan(Respond(first_byte_delay=3.0))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{fake.base_url}/v1/text-to-speech/{VOICE}",
                params={"output_format": "ulaw_8000"},
                json={"text": "a"},
                timeout=httpx.Timeout(5.0, read=0.2),
            )
        [record] = fake.requests
        assert record.wait_finished(timeout=1)
        assert (record.disconnected, record.bytes_sent) == (True, 0)


def test_respond_rejects_nonsense():
    with pytest.raises(ValueError, match="Respond.chunk_size must be >= 1 or None, got 0"):
        Respond(chunk_size=0)
    with pytest.raises(ValueError, match="Respond.status must be an HTTP status 100..599, got 42"):
        Respond(status=42)


def test_base_url_outside_with_block_is_an_error():
    with pytest.raises(RuntimeError, match="not running"):
        FakeElevenLabs().base_url


def test_fixture_serves(fake_elevenlabs):
    response = httpx.post(
        f"{fake_elevenlabs.base_url}/v1/text-to-speech/{VOICE}", params={"output_format": "ulaw_8000"}, json={"text": "ok"}
    )
    assert response.content == expected_audio("ok")


def test_stamps_say_when_and_the_first_chunk_is_not_held_back():
    with FakeElevenLabs() as fake:
        seen = []
        with httpx.Client() as client:
            for _ in range(5):
                with open_stream(client, fake, "stamped") as response:
                    pieces = response.iter_raw()
                    next(pieces)
                    seen.append(time.perf_counter())
                    b"".join(pieces)
        fake.plan(Respond(chunk_size=160, chunk_delay=0.5))
        with open_stream(httpx, fake, "hung up") as response:
            next(response.iter_raw())
            hung_up = time.perf_counter()
        records = fake.audio_requests()
        assert all(record.wait_finished() for record in records)
    for record in records:
        assert record.received_at <= record.first_byte_at
    # TCP_NODELAY: with Nagle on, the first chunk waited for the client's delayed ACK (40 ms).
    delays = sorted(arrived - record.first_byte_at for arrived, record in zip(seen, records))
    assert delays[2] < 0.02
    # The hang-up is seen promptly. Under load the fake's thread has stamped it up to a
    # millisecond *before* the client's own stamp (seen in CI: -0.66 ms; cause not found,
    # noted in the session note), so the lower bound allows a few milliseconds.
    assert records[-1].disconnected and -0.005 <= records[-1].disconnected_at - hung_up < 0.3
