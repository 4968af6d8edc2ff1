"""A real phone answers Eko by voice: pjsua2 speaks French into the call, Deepgram (faked) hears it.

pjsua2 (``tests/peers/pjsua2_caller.py``) calls as 0612345678, the seeded caller with
an open internet ticket, so Eko's default script asks whether the call is about it.
Once asked, pjsua2 plays an espeak-ng "oui" or "non" WAV into the call through its
conference bridge and PCMU encoder (``--play``), as a microphone would. The fake
Deepgram answers with that word once it has received speech audio and then 300 ms of
quiet (it listens to the audio's level, not to a byte count, so whatever pjsua2's
timing and jitter buffer do, the answer follows the speech). The script takes the
branch; what pjsua2 heard is matched against the cached phrases by correlation (a
phone's jitter buffer re-times the audio, so not byte for byte). The yes branch ends
with Eko's REFER: pjsua2 follows it to a pjsua2 technician, and Eko's leg ends.

The server, the CRM and the short phrase catalogue are those of
``test_listening_e2e.py`` (its fixtures and helpers are imported from there).
"""

from __future__ import annotations

import array

import pytest
from fake_deepgram import FakeDeepgram, FakeDeepgramThread, Reply, results
from server_helpers import read_wav_samples, run_pjsua2, windowed_match
from speech_audio import phrase_seconds, phrase_ulaw, render, write_wav
from test_transfer_peers import Technician
from test_listening_e2e import (  # noqa: F401 - crm_address and short_cache are fixtures
    KEY,
    KNOWN_CALLER,
    QUESTION,
    await_stream,
    crm_address,
    listen_query,
    serve,
    short_cache,
    write_config,
)

from eko_rtp.codec.g711 import ulaw_to_linear16

pytestmark = pytest.mark.interop

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WORD_END_TO_REPLY = 0.3 + 0.3  # the word (under 0.3 s) and the fake's 300 ms of quiet before its answer


def reference(cache_dir, key: str) -> list[int]:
    samples = array.array("h")
    samples.frombytes(ulaw_to_linear16(phrase_ulaw(cache_dir, key)))
    return samples.tolist()


@pytest.mark.parametrize(("word", "answer", "branch", "other"), [
    ("oui", "yes", "ticket_transfer_ok", "ticket_not_related"),
    ("non", "no", "ticket_not_related", "ticket_transfer_ok"),
])
def test_pjsua2_answers_the_ticket_question_by_voice(short_cache, crm_address, tmp_path, word, answer, branch,
                                                     other):
    cache_dir, _ = short_cache
    wav = write_wav(tmp_path / f"{word}.wav", render(word), tail_seconds=0.5)
    play_at = phrase_seconds(cache_dir, QUESTION) + 0.5  # once the question is over
    fake = FakeDeepgram(api_key=KEY)
    fake.script = [
        Reply(after_speech_bytes=480, message=results(word, is_final=False, duration=0.3)),
        Reply(after_speech_bytes=480, after_quiet_bytes=2400,
              message=results(word, is_final=True, speech_final=True, duration=0.5)),
    ]
    technician = Technician(tmp_path / "technician")
    extra = ""
    if answer == "yes":
        # Eko says the transfer phrase and REFERs the caller to the technician, then BYE.
        ending = ["--hangup", "remote", "--transfer", "accept", "--hold-after-transfer", "2"]
        extra = (f'[transfer]\ndefault = "sip:technician@127.0.0.1:{technician.port}"\n[hours]\n'
                 + "".join(f'{day} = "00:00-24:00"\n' for day in DAYS) + "holidays = []\n")
    else:  # Eko then listens for the reason: hang up once its phrase is over
        ending = ["--hold", f"{play_at + WORD_END_TO_REPLY + phrase_seconds(cache_dir, branch) + 1.0:.2f}"]
    try:
        with FakeDeepgramThread(fake) as served:
            config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url, keywords=True, extra=extra)
            with serve(short_cache, config, key=KEY) as server:
                [result] = run_pjsua2(server.address, "--from-user", KNOWN_CALLER, "--record-dir", str(tmp_path),
                                      "--play", f"{wav}@{play_at:.2f}", *ending, "--timeout", "30")
                record = await_stream(served)
                said = server.wait_for_log(r"caller said .*").group(0)
                if answer == "yes":
                    server.wait_for_log(r"ended \(\w+\) after \d+ ms; .*; script=transferred")
                log = server.log()
        technician_calls = technician.stop()["calls"]
    finally:
        technician.kill()
    if answer == "yes":  # the spoken "oui" put the caller through to the technician
        [call] = technician_calls
        assert call["confirmed"] and KNOWN_CALLER[1:] in call["from"], call
        assert result["transfer"]["new_call_status"] == 200, result["transfer"]
    else:
        assert technician_calls == [] and not result["transfer"]["requested"]

    assert result["answered"] and result["media_active"] and len(result["played_at"]) == 1
    assert result["hung_up_by"] == ("remote" if answer == "yes" else "local"), result
    assert "greeting: returning_client_pending_internet (known caller)" in log
    assert said == f"caller said {word!r}: {answer}"
    # What Deepgram got: pjsua2's PCMU, speech once it played the WAV.
    assert record.query == listen_query("mulaw")
    assert record.speech_from is not None and record.speech_bytes >= 480
    assert record.speech_from / 8000 == pytest.approx(play_at, abs=0.5), record.speech_from
    # What pjsua2 heard after its word: the branch's phrase, not the other one's.
    heard = read_wav_samples(result["record"])
    after_word = heard[round((play_at + 0.4) * 8000):]
    scores = {key: windowed_match(after_word, reference(cache_dir, key), seconds=phrase_seconds(cache_dir, key))[0]
              for key in (branch, other)}
    print(f"pjsua2 said {word!r}; correlation of what it heard next:", scores)
    assert scores[branch] >= 0.9 and scores[other] < 0.6, scores
