"""The bench's fake TTS endpoint over real loopback HTTP, and how the caller classifies payloads."""

import time

import httpx
import pytest

from eko_bench.fake_tts import LIVE, LIVE_BYTE, SILENT, SOUND, FakeTts, classify_payload, live_audio
from eko_rtp.codec.g711 import ULAW_TO_ALAW
from eko_rtp.errors import UserError

LIVE_FRAME = bytes([LIVE_BYTE]) * 160


@pytest.mark.parametrize(
    "payload, payload_type, expected",
    [
        (b"\xff" * 160, 0, SILENT),
        (b"\xff\x7f" * 80, 0, SILENT),
        (b"\xd5" * 160, 8, SILENT),
        (LIVE_FRAME, 0, LIVE),
        (bytes([ULAW_TO_ALAW[LIVE_BYTE]]) * 160, 8, LIVE),
        (b"\x10" * 120 + LIVE_FRAME[:40], 0, LIVE),  # a cached phrase's tail, then the live audio
        (b"\x10" * 121 + LIVE_FRAME[:39], 0, SOUND),  # too short a run to be told from speech
        (LIVE_FRAME[:120] + b"\xff" * 40, 0, SOUND),  # the live audio's end, padded with silence
        (b"\x10\xe3" * 80, 0, SOUND),
    ],
)
def test_classify_payload(payload, payload_type, expected):
    assert classify_payload(payload, payload_type) == expected


def test_live_audio_follows_the_text():
    assert live_audio("abc") == bytes([LIVE_BYTE]) * 1200
    assert live_audio("") == bytes([LIVE_BYTE]) * 160
    assert len(live_audio("x" * 1000)) == 80000


def test_streams_after_the_set_first_byte_delay():
    with FakeTts(first_byte_delay=0.2) as fake:
        url = f"{fake.base_url}/v1/text-to-speech/voice/stream"
        started = time.monotonic()
        with httpx.stream("POST", url, params={"output_format": "ulaw_8000"}, json={"text": "Appel 7"},
                          headers={"xi-api-key": fake.api_key}, timeout=5) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            first_byte = time.monotonic() - started
            audio = first + b"".join(chunks)
        assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
        assert audio == live_audio("Appel 7")
        assert 0.2 <= first_byte < 0.2 + 1.0
        refused = httpx.post(url, params={"output_format": "ulaw_8000"}, json={"text": "x"}, headers={"xi-api-key": "no"})
        assert (refused.status_code, refused.json()["detail"]["message"]) == (401, "invalid API key")
        wrong = httpx.post(url, params={"output_format": "mp3"}, json={"text": "x"}, headers={"xi-api-key": fake.api_key})
        assert wrong.json()["detail"]["message"] == "the bench's fake renders only output_format=ulaw_8000"
        empty = httpx.post(url, params={"output_format": "ulaw_8000"}, json={"text": ""}, headers={"xi-api-key": fake.api_key})
        assert empty.status_code == 422
        assert fake.requests == 1  # only the accepted request counts
        arrived, first_byte = fake.timings["Appel 7"]  # CLOCK_REALTIME ns, like packet timestamps
        assert 0.2e9 <= first_byte - arrived < 1.2e9
        assert list(fake.timings) == ["Appel 7"]  # refused requests leave no timing


def test_refuses_a_delay_out_of_range_and_a_host_off_loopback():
    with pytest.raises(UserError) as caught:
        FakeTts(first_byte_delay=11.0)
    assert str(caught.value) == "key '--tts-first-byte-ms': time to first byte 11000 ms is outside 0..10000 ms"
    with pytest.raises(UserError):
        FakeTts(host="192.0.2.1", first_byte_delay=0.3)
