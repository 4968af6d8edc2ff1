"""What the real server's log says about its TTS backend and each call (issue 14, friction):
the backend at start, the greeting, codec and remote media address per call, and each
call line naming the Call-ID once."""

from __future__ import annotations

import re

from raw_caller import place_call
from server_helpers import ServerProcess

CALL_LINE = re.compile(r"\[call=([^\]]+)\]: (.*)$")


def test_start_line_names_espeak_and_its_voice(built_cache):
    with ServerProcess(built_cache) as server:
        server.wait_for_log(r"INFO eko_rtp\.server: live TTS: espeak-ng, voice fr-fr, model espeak-ng$")


def test_start_line_names_elevenlabs_and_its_voice(built_cache, tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text('[tts]\nvoice_id = "voice-under-test"\n', encoding="utf-8")
    env = {"ELEVENLABS_API_KEY": "test-key", "ELEVENLABS_BASE_URL": "http://127.0.0.1:9"}  # never asked at start
    with ServerProcess(built_cache, "--config", str(config), env=env) as server:
        server.wait_for_log(r"live TTS: elevenlabs, voice voice-under-test, model eleven_flash_v2_5$")
        assert "test-key" not in server.log()


def test_a_call_says_its_greeting_codec_and_media_address_and_its_call_id_once(built_cache):
    with ServerProcess(built_cache) as server:  # the default script, no CRM: the standard greeting
        place_call(server.address, hold=1.0, caller="0612345678")
        ended = server.wait_for_log(r"\[call=([^\]]+)\]: ended \(remote_bye\)")
        call_id = ended.group(1)
        lines = [line for line in server.lines if f"[call={call_id}]" in line]
    messages = [CALL_LINE.search(line).group(2) for line in lines]
    media = [message for message in messages if message.startswith("media: ")]
    assert len(media) == 1, messages
    assert re.fullmatch(r"media: PCMU \(payload type 0, telephone-event 101\) to 127\.0\.0\.1:\d+, send_audio=True",
                        media[0]), media
    greetings = [message for message in messages if message.startswith("greeting: ")]
    assert greetings == ["greeting: greet + welcome (unknown caller)"], messages
    # The Call-ID once per line: in the tag, never again in the message.
    assert all(line.count(call_id) == 1 for line in lines), lines
    assert {"INVITE received", "200 OK sent", "ended (remote_bye)"} <= {
        re.sub(r" (from|at|after) .*", "", message) for message in messages
    }, messages
