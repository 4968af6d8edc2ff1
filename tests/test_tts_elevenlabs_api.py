"""The ElevenLabs API core: requests, answers mapped to failures, retry delays. Synchronous tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_core_purity import FORBIDDEN, imported_roots

from eko_rtp.tts.elevenlabs_api import HttpRequest, RetryPolicy, SpeechApi, error_from_answer_untrusted
from eko_rtp.tts.errors import (
    TtsAuthError,
    TtsRateLimited,
    TtsRequestRejected,
    TtsServerError,
    TtsStreamBroken,
    TtsTimeout,
)

CORE = Path(__file__).resolve().parents[1] / "eko_rtp" / "tts" / "elevenlabs_api.py"
API = SpeechApi(api_key="secret-key", base_url="https://api.example/", voice_id="voice 1", model_id="model-1")
PATH = "/v1/text-to-speech/voice-1/stream"


def test_the_core_does_no_io():
    assert imported_roots(CORE) & FORBIDDEN == set()


@pytest.mark.parametrize(
    ("streaming", "url"),
    [
        (True, "https://api.example/v1/text-to-speech/voice%201/stream"),
        (False, "https://api.example/v1/text-to-speech/voice%201"),
    ],
)
def test_both_routes_are_one_request_shape(streaming, url):
    assert API.request("Bonjour", streaming=streaming) == HttpRequest(
        method="POST",
        url=url,
        params={"output_format": "ulaw_8000"},
        headers={"xi-api-key": "secret-key", "accept": "audio/basic"},
        json={"text": "Bonjour", "model_id": "model-1"},
    )


def test_latency_and_voice_settings_go_in_the_query_and_the_body():
    api = SpeechApi(api_key="k", base_url="http://127.0.0.1:1", voice_id="v", model_id="m",
                    optimize_streaming_latency=0,
                    voice_settings={"stability": 1, "similarity_boost": 0.75, "use_speaker_boost": True})
    request = api.request("Salut", streaming=True)
    assert request.params == {"output_format": "ulaw_8000", "optimize_streaming_latency": 0}
    assert request.json == {"text": "Salut", "model_id": "m",
                            "voice_settings": {"stability": 1.0, "similarity_boost": 0.75, "use_speaker_boost": True}}


def test_the_key_never_shows_in_a_repr():
    assert "secret-key" not in repr(API) and "secret-key" not in repr(API.request("a", streaming=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api_key": " "}, "SpeechApi.api_key must not be empty"),
        ({"base_url": "api.elevenlabs.io"},
         "SpeechApi.base_url must start with http:// or https://, got 'api.elevenlabs.io'"),
        ({"voice_id": ""}, "SpeechApi.voice_id must not be empty"),
        ({"voice_settings": {"stability": "high"}},
         "voice_settings.stability: Input should be a valid number, unable to parse string as a number"),
        ({"voice_settings": {"stabilty": 0.5}},
         "voice_settings: unknown stabilty (ElevenLabs knows stability, use_speaker_boost, similarity_boost, style, "
         "speed, clone_strength)"),
    ],
)
def test_speech_api_refuses_what_the_api_would(options, message):
    given = {"api_key": "k", "base_url": "https://api.elevenlabs.io", "voice_id": "v", "model_id": "m", **options}
    with pytest.raises(ValueError) as raised:
        SpeechApi(**given)
    assert str(raised.value) == message


ELEVENLABS_401 = b'{"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}'
SCHEMA_422 = b'{"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]}'


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "message", "reason", "retry_after"),
    [
        (401, {}, ELEVENLABS_401, TtsAuthError,
         f"ElevenLabs {PATH}: API key refused (401 invalid_api_key: Invalid API key)", "Invalid API key", None),
        (422, {}, SCHEMA_422, TtsRequestRejected,
         f"ElevenLabs {PATH}: request rejected (422 body.text: Field required)", "body.text: Field required", None),
        (400, {}, b'{"detail": "voice not found"}', TtsRequestRejected,
         f"ElevenLabs {PATH}: request rejected (400 voice not found)", "voice not found", None),
        (404, {}, b'{"detail": {"message": "no such voice"}}', TtsRequestRejected,
         f"ElevenLabs {PATH}: request rejected (404 no such voice)", "no such voice", None),
        (429, {"retry-after": "2"}, b'{"detail": {"status": "too_many_concurrent_requests", "message": "Slow"}}',
         TtsRateLimited, f"ElevenLabs {PATH}: rate limited (429 too_many_concurrent_requests: Slow)", "Slow", 2.0),
        (429, {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, b"", TtsRateLimited,
         f"ElevenLabs {PATH}: rate limited (429 Too Many Requests)", "Too Many Requests", None),
        (429, {"retry-after": "-3"}, b"", TtsRateLimited,
         f"ElevenLabs {PATH}: rate limited (429 Too Many Requests)", "Too Many Requests", 0.0),
        (429, {"retry-after": "nan"}, b"", TtsRateLimited,
         f"ElevenLabs {PATH}: rate limited (429 Too Many Requests)", "Too Many Requests", None),
        (502, {}, b"<html>Bad gateway</html>", TtsServerError,
         f"ElevenLabs {PATH}: server error (502 <html>Bad gateway</html>)", "<html>Bad gateway</html>", None),
        (503, {}, b"", TtsServerError, f"ElevenLabs {PATH}: server error (503 Service Unavailable)",
         "Service Unavailable", None),
        (599, {}, b"", TtsServerError, f"ElevenLabs {PATH}: server error (599)", "", None),
        # Hostile or broken bodies: cut to 200 characters, never raised on.
        (400, {}, b"[" * 5000, TtsRequestRejected, f"ElevenLabs {PATH}: request rejected (400 {'[' * 200})", "[" * 200,
         None),
        (400, {}, b'{"detail": [{"loc": 1}]}', TtsRequestRejected,
         f"ElevenLabs {PATH}: request rejected (400 [{{'loc': 1}}])", "[{'loc': 1}]", None),
        (400, {}, b"\xff\xfe", TtsRequestRejected, f"ElevenLabs {PATH}: request rejected (400 \ufffd\ufffd)",
         "\ufffd\ufffd", None),
    ],
)
def test_answers_map_to_who_is_at_fault(status, headers, body, kind, message, reason, retry_after):
    error = error_from_answer_untrusted(status, headers, body, PATH)
    assert type(error) is kind
    assert (str(error), error.status, error.reason) == (message, status, reason)
    assert getattr(error, "retry_after", None) == retry_after
    assert error.retryable == (status == 429 or status >= 500)


POLICY = RetryPolicy(retries=3, first_backoff=0.1, max_backoff=0.3)


@pytest.mark.parametrize(
    ("error", "retry", "now", "deadline", "delay"),
    [
        (TtsServerError("503"), 1, 0.0, None, 0.1),
        (TtsServerError("503"), 2, 0.0, None, 0.2),
        (TtsServerError("503"), 3, 0.0, None, 0.3),  # 0.4, capped
        (TtsServerError("503"), 4, 0.0, None, None),  # out of retries
        (TtsRateLimited("429", retry_after=0.25), 1, 0.0, None, 0.25),  # the server asks for more than our 0.1
        (TtsRateLimited("429", retry_after=0.0), 2, 0.0, None, 0.2),  # never sooner than our own backoff
        (TtsRateLimited("429", retry_after=30.0), 1, 0.0, None, 0.3),  # never longer than max_backoff
        (TtsServerError("503"), 1, 10.0, 10.2, 0.1),  # the retry starts before the deadline
        (TtsServerError("503"), 2, 10.0, 10.2, None),  # it would not
        (TtsAuthError("401"), 1, 0.0, None, None),
        (TtsRequestRejected("422"), 1, 0.0, None, None),
        (TtsStreamBroken("cut"), 1, 0.0, None, None),
        (TtsTimeout("silence"), 1, 0.0, None, None),
    ],
)
def test_retry_delays(error, retry, now, deadline, delay):
    assert POLICY.delay(error, retry, now=now, deadline=deadline) == delay


def test_retry_policy_refuses_nonsense():
    with pytest.raises(ValueError, match=r"^RetryPolicy.max_backoff must be >= 0, got -1$"):
        RetryPolicy(retries=1, first_backoff=0.1, max_backoff=-1)
    with pytest.raises(TypeError):
        RetryPolicy(retries=1.5, first_backoff=0.1, max_backoff=1)
