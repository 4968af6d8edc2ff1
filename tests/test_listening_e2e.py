"""Eko listens, end to end: a caller speaks French into a real server, Deepgram (faked) hears it.

Everything runs for real on loopback: ``eko-rtp serve`` as a subprocess with Eko's
default script, a seeded ``eko-rtp crm serve`` (the caller 0612345678 has an open
internet ticket, so Eko asks whether the call is about it), the fake Deepgram
(``tests/fake_deepgram.py``: a websocket server, in a thread of this process, that
checks the handshake, records every byte and answers from its script once it has
heard speech), and a caller written here on raw sockets (SIP from ``eko_bench.uac``,
RTP by hand) that sends espeak-ng French as G.711 at real pace and records every
packet the server sends back.

The server runs with a short phrase catalogue (``speech_audio.SHORT_PHRASES``: the
keys the script speaks, a few words each) so that a question, an answer and the
reply take seconds. What the caller heard is checked byte for byte: in PCMU the
server sends a cached phrase's µ-law bytes as they are in the cache, in PCMA their
A-law translation, so a phrase was played when its bytes are in the received
payloads, in one piece.

Checked: the yes and no branches by voice (µ-law and A-law), the handshake Eko
makes and the exact audio bytes it streams; the DTMF fallback when recognition is
off or fails (no key, key refused, Deepgram unreachable, stream dropped mid-call),
each failure logged once and counted in ``eko_asr_failures_total``; KeepAlive while
the caller is silent and CloseStream at the hang-up; barge-in latency measured
from the caller's side, with RTP sequence numbers and timestamps continuous across it.

Four bugs found by these tests were fixed in eko_rtp: no CloseStream at the hang-up,
a key press inserting silence into the caller's audio, the recognizer missing the
first frame after the answer, and an interruptible phrase starting over a caller
still speaking; each has its test here.
"""

from __future__ import annotations

import math
import re
import secrets
import select
import socket
import struct
import time
import urllib.request
from typing import Callable

import attrs
import pytest
import trio
from fake_deepgram import FakeDeepgram, FakeDeepgramThread, Reply, results
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import ServerProcess, frame_breaks, free_port, start_crm
from speech_audio import build_short_cache, phrase_seconds, phrase_ulaw, quiet_frames, speech_frames
from test_call_life import TIMERS, NoLookup, PlayingStream, RecordingLine, run_call
from test_call_listening import ScriptedRecognizer

from eko_bench import uac
from eko_rtp.asr.deepgram_api import AsrSettings
from eko_rtp.call.barge_in import BargeIn
from eko_rtp.call.call import Call, CallLine
from eko_rtp.call.digits import DigitQueue
from eko_rtp.call.ears import CallerAudio
from eko_rtp.call.speech import CallSpeech
from eko_rtp.codec.g711 import ulaw_to_alaw

KEY = "test-key"
KNOWN_CALLER = "0612345678"  # seeded with an open internet ticket
QUESTION = "returning_client_pending_internet"
FRAME = 0.020
SILENCE = {"PCMU": b"\xff" * 160, "PCMA": b"\xd5" * 160}
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
EVENT_PAYLOAD_TYPE = uac.TELEPHONE_EVENT_PAYLOAD_TYPE
KEYWORDS = "# boosted words\nEko:2\nrésiliation:1.5\n"
FAILED = "speech recognition failed, going on with DTMF: "
RTP_HEADER = struct.Struct("!BBHII")  # RFC 3550 §5.1: V/P/X/CC, M/PT, sequence number, timestamp, SSRC


# -- the caller -------------------------------------------------------------------------


@attrs.define
class Heard:
    """One RTP packet the server sent us."""

    arrival: float  # time.monotonic()
    sequence: int
    timestamp: int
    marker: bool
    payload_type: int
    ssrc: int
    payload: bytes


@attrs.define
class Sent:
    """One audio packet we sent."""

    at: float  # time.monotonic() right after sendto
    slot: int  # its 20 ms slot from the answer
    sequence: int
    payload: bytes


@attrs.frozen(kw_only=True)
class Plan:
    """What the caller does, counted from the 200 OK.

    ``audio``: the payload of each 20 ms slot (None: nothing sent in that slot, a
    pause); after the last slot, silence until the hang-up. ``digits``: (seconds,
    digit) pressed as RFC 4733 events, 100 ms each. The caller hangs up at
    ``hang_up_after`` s or once ``hang_up_when(call)`` holds (checked every 50 ms),
    sending no more RTP from then and the BYE ``quiet_before_bye`` s later; a BYE
    from the server ends the call too.
    """

    codec: str = "PCMU"
    audio: tuple[bytes | None, ...] = ()
    digits: tuple[tuple[float, str], ...] = ()
    hang_up_after: float | None = None
    hang_up_when: Callable[["TalkingCall"], bool] | None = None
    quiet_before_bye: float = 0.3
    timeout: float = 30.0


@attrs.define
class TalkingCall:
    """What happened on one call, as the caller saw it."""

    codec: str
    status: int = 0
    answered_at: float | None = None
    sent: list[Sent] = attrs.Factory(list)
    heard: list[Heard] = attrs.Factory(list)
    digits_sent: list[tuple[str, float]] = attrs.Factory(list)
    server_bye_at: float | None = None
    bye_sent_at: float | None = None
    bye_status: int | None = None

    def sent_audio(self) -> bytes:
        return b"".join(packet.payload for packet in self.sent)

    def audio_heard(self) -> list[Heard]:
        return [packet for packet in self.heard if packet.payload_type == PAYLOAD_TYPES[self.codec]]

    def heard_bytes(self) -> bytes:
        return b"".join(packet.payload for packet in self.audio_heard())

    def phrase_at(self, phrase: bytes) -> Heard | None:
        """The packet that carries the first byte of ``phrase`` (in the call's codec), if it was heard."""
        if self.codec == "PCMA":
            phrase = ulaw_to_alaw(phrase)
        audio = self.audio_heard()
        offset = b"".join(packet.payload for packet in audio).find(phrase)
        if offset < 0:
            return None
        assert all(len(packet.payload) == 160 for packet in audio)
        assert offset % 160 == 0, f"phrase found off a frame boundary, at byte {offset}"
        return audio[offset // 160]

    def heard_phrase(self, phrase: bytes) -> bool:
        return self.phrase_at(phrase) is not None


def offer(rtp_port: int, codec: str) -> bytes:
    """The trunk's offer, with ``codec`` first (the server answers with the first it supports)."""
    body = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp_port, session_id=1)
    if codec == "PCMA":
        body = body.replace(b"RTP/AVP 0 8 ", b"RTP/AVP 8 0 ")
    return body


def talk(target: tuple[str, int], plan: Plan, *, caller: str = KNOWN_CALLER) -> TalkingCall:
    """Place one call and follow ``plan``; synchronous, bounded by ``plan.timeout``."""
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", 0))
        rtp.bind(("127.0.0.1", 0))
        return _talk(sip, rtp, target, plan, caller)
    finally:
        sip.close()
        rtp.close()


def _talk(sip, rtp, target, plan: Plan, caller: str) -> TalkingCall:
    endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=sip.getsockname()[1],
                            target_host=target[0], target_port=target[1])
    dialog = uac.Dialog(endpoint=endpoint, call_id=f"listen-{secrets.token_hex(6)}", from_tag=uac.new_tag(),
                        caller=caller)
    call = TalkingCall(codec=plan.codec)
    sip.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer(rtp.getsockname()[1], plan.codec)), target)
    deadline = time.monotonic() + plan.timeout
    ssrc = secrets.randbits(32)
    sequence = secrets.randbits(16)
    base_timestamp = secrets.randbits(32)
    payload_type = PAYLOAD_TYPES[plan.codec]
    silence = SILENCE[plan.codec]
    remote_rtp = None
    slot = 0
    talking = False  # the last slot carried audio (a pause ends a talkspurt: RFC 3551 §4.1 marker)
    events: list[tuple[float, int, int, bool]] = []  # (due, index in plan.digits, duration, end)
    sending = True
    bye_at = None
    next_check = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        start = call.answered_at
        if start is not None and sending:
            while start + slot * FRAME <= now:
                payload = plan.audio[slot] if slot < len(plan.audio) else silence
                if payload is not None:
                    first = 0x80 if not talking else 0
                    packet = RTP_HEADER.pack(0x80, first | payload_type, sequence,
                                         (base_timestamp + slot * 160) & 0xFFFFFFFF, ssrc) + payload
                    rtp.sendto(packet, remote_rtp)
                    call.sent.append(Sent(at=time.monotonic(), slot=slot, sequence=sequence, payload=payload))
                    sequence = (sequence + 1) & 0xFFFF
                talking = payload is not None
                slot += 1
            while events and events[0][0] <= now:
                _, index, duration, end = events.pop(0)
                down, digit = plan.digits[index]
                first = len(call.digits_sent) == index  # the event's first packet marks it (RFC 4733 §2.5.1.3)
                # One event timestamp for all its packets: the audio slot the key went down in.
                event_timestamp = (base_timestamp + round(down / FRAME) * 160) & 0xFFFFFFFF
                packet = RTP_HEADER.pack(0x80, (0x80 if first else 0) | EVENT_PAYLOAD_TYPE, sequence, event_timestamp,
                                     ssrc) + struct.pack("!BBH", "0123456789*#".index(digit),
                                                         (0x80 if end else 0) | 10, duration)
                rtp.sendto(packet, remote_rtp)
                if first:
                    call.digits_sent.append((digit, time.monotonic()))
                sequence = (sequence + 1) & 0xFFFF
            if bye_at is None and now >= next_check:
                next_check = now + 0.05
                if ((plan.hang_up_after is not None and now >= start + plan.hang_up_after)
                        or (plan.hang_up_when is not None and plan.hang_up_when(call))):
                    sending = False
                    bye_at = now + plan.quiet_before_bye
        if bye_at is not None and now >= bye_at and call.bye_sent_at is None:
            sip.sendto(dialog.bye(branch=uac.new_branch()), target)
            call.bye_sent_at = now
        for sock in select.select([sip, rtp], [], [], 0.002)[0]:
            data = sock.recv(65535)
            arrival = time.monotonic()
            if sock is rtp:
                _note_heard(call, data, arrival)
                continue
            message = uac.parse_message_untrusted(data)
            if message.is_response:
                method = message.cseq[1]
                if method == "INVITE" and message.status >= 200 and call.answered_at is None:
                    call.status = message.status
                    if message.status >= 300:
                        return call
                    dialog = dialog.confirmed(message)
                    sip.sendto(dialog.ack(), target)
                    answer = uac.parse_sdp_answer_untrusted(message.body)
                    assert answer.payload_type == payload_type, message.body
                    remote_rtp = (answer.address, answer.port)
                    call.answered_at = arrival
                    for index, (down, _) in enumerate(plan.digits):
                        for step in range(5):  # 100 ms down, an update every 20 ms (RFC 4733 §2.5.1.2)
                            events.append((arrival + down + step * FRAME, index, (step + 1) * 160, False))
                        for _ in range(3):  # §2.5.1.4: the end packet three times
                            events.append((arrival + down + 5 * FRAME, index, 5 * 160, True))
                    events.sort(key=lambda event: event[0])
                elif method == "BYE" and message.status >= 200:
                    call.bye_status = message.status
                    return call
            elif message.method == "BYE":
                sip.sendto(uac.response_to(message, 200, "OK"), target)
                call.server_bye_at = arrival
                _drain(rtp, call)
                return call
    raise AssertionError(f"the call did not end within {plan.timeout} s: {len(call.sent)} packets sent, "
                         f"{len(call.heard)} heard, status {call.status}")


def _note_heard(call: TalkingCall, data: bytes, arrival: float) -> None:
    """Keep an RTP packet from the server (a plain 12-byte header: the server sends no CSRC or extension)."""
    if len(data) < RTP_HEADER.size or data[0] != 0x80:
        raise AssertionError(f"not an RTP packet as the server sends them: {data[:16].hex()}")
    _, marker_and_type, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    call.heard.append(Heard(arrival, sequence, timestamp, bool(marker_and_type & 0x80), marker_and_type & 0x7F,
                            ssrc, data[RTP_HEADER.size:]))


def _drain(rtp, call: TalkingCall, quiet: float = 0.2) -> None:
    """Read what is still on its way: a phrase's last frames may arrive after the BYE (another socket)."""
    for _ in range(1000):  # 20 s of frames: a server that never stops sending fails the test's checks
        if not select.select([rtp], [], [], quiet)[0]:
            return
        _note_heard(call, rtp.recv(65535), time.monotonic())


def slots(seconds: float, payload: bytes | None) -> tuple[bytes | None, ...]:
    return (payload,) * math.ceil(seconds / FRAME - 1e-9)


# -- the server and its neighbours -----------------------------------------------------------


@pytest.fixture(scope="module")
def short_cache(tmp_path_factory):
    """The short catalogue, rendered once per module: (cache dir, catalogue file)."""
    return build_short_cache(tmp_path_factory.mktemp("short-cache"))


@pytest.fixture(scope="module")
def crm_address(tmp_path_factory):
    process, address = start_crm(tmp_path_factory.mktemp("crm"))
    yield address
    process.terminate()
    process.wait(10)


def write_config(tmp_path, *, crm: str, base_url: str | None = None, keywords: bool = False,
                 metrics_port: int | None = None, extra: str = "") -> str:
    lines = ["[crm]", f'address = "{crm}"', "budget_ms = 2000"]  # which greeting, not how fast: be patient
    lines += ["[asr]"]
    if base_url is not None:
        lines += [f'base_url = "{base_url}"']
    if keywords:
        (tmp_path / "keywords.txt").write_text(KEYWORDS, encoding="utf-8")
        lines += [f'keywords_file = "{tmp_path / "keywords.txt"}"']
    if metrics_port is not None:
        lines += ["[service]", f'metrics_listen = "127.0.0.1:{metrics_port}"']
    path = tmp_path / "eko.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return str(path)


def serve(short_cache, config: str, *, key: str | None) -> ServerProcess:
    cache_dir, catalogue = short_cache
    env = {} if key is None else {"DEEPGRAM_API_KEY": key}
    return ServerProcess(cache_dir, "--phrases", str(catalogue), "--config", config, env=env)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape_when(port: int, accept: Callable[[dict], bool], timeout: float = 6.0) -> dict:
    """The first scrape ``accept`` takes (the server copies its counters once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        values = scrape(port)
        if accept(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.1)


def log_lines(server: ServerProcess, pattern: str, *, count: int, timeout: float = 10.0) -> list[str]:
    """The server's log lines matching ``pattern``, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log().splitlines() if re.search(pattern, line)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def ended_line(server: ServerProcess) -> str:
    return server.wait_for_log(r"ended \(\w+\) after \d+ ms.*").group(0)


def await_stream(served: FakeDeepgramThread, timeout: float = 10.0):
    """The fake's one stream, once it is over."""
    [record] = served.call(served.fake.wait_for_streams, 1, timeout, ended=True)
    assert len(served.fake.streams) == 1
    return record


def first_frame_lost(streamed: bytes | bytearray, sent: bytes) -> int:
    """0: the recognizer hears the caller from the first frame after the answer on
    (``test_the_recognizer_gets_the_callers_audio_from_the_answer_on``)."""
    assert streamed[:160] == sent[:160], "the recognizer missed the caller's first frame"
    return 0


def listen_query(encoding: str) -> list[tuple[str, str]]:
    return [("model", "nova-2"), ("language", "fr"), ("encoding", encoding), ("sample_rate", "8000"),
            ("channels", "1"), ("interim_results", "true"), ("endpointing", "500"), ("vad_events", "true"),
            ("keywords", "Eko:2"), ("keywords", "résiliation:1.5")]


# -- 1. the answer by voice ----------------------------------------------------------------------


@pytest.mark.parametrize(("word", "codec", "answer", "branch", "other"), [
    # No technician queue is configured here: "yes" is promised a callback (transfer_unavailable).
    ("oui", "PCMU", "yes", "transfer_unavailable", "ticket_not_related"),
    ("non", "PCMU", "no", "ticket_not_related", "transfer_unavailable"),
    ("oui", "PCMA", "yes", "transfer_unavailable", "ticket_not_related"),
])
def test_a_spoken_answer_to_the_ticket_question_takes_its_branch(short_cache, crm_address, tmp_path,
                                                                 word, codec, answer, branch, other):
    """The caller says "oui" or "non" (espeak-ng, µ-law or A-law) once asked about its ticket:
    Deepgram is asked for exactly this stream and gets the caller's payloads untouched;
    its transcript takes the script down the yes branch (no technician queue here: the
    callback promise, goodbye, then BYE)
    or the no branch (ticket_not_related), and the caller hears that phrase whole."""
    cache_dir, _ = short_cache
    speech = speech_frames(word, codec)
    fake = FakeDeepgram(api_key=KEY)
    # Deepgram's way: an interim guess while the word is heard, the final (speech_final)
    # once 300 ms of quiet followed it (the real one waits for its 500 ms endpointing).
    fake.script = [
        Reply(after_speech_bytes=480, message=results(word, is_final=False, duration=0.3)),
        Reply(after_speech_bytes=480, after_quiet_bytes=2400,
              message=results(word, is_final=True, speech_final=True, duration=0.5)),
    ]
    question = phrase_ulaw(cache_dir, QUESTION)
    reply = phrase_ulaw(cache_dir, branch)
    # Faint hiss while Eko asks (each frame different, so a lost or moved frame shows), then the word.
    lead = tuple(quiet_frames(len(slots(phrase_seconds(cache_dir, QUESTION) + 0.5, None)), codec))
    plan = Plan(codec=codec, audio=lead + tuple(speech),
                # The yes branch ends with Eko's BYE; after the no branch Eko listens again.
                hang_up_when=None if answer == "yes" else (lambda call: call.heard_phrase(reply)))
    with FakeDeepgramThread(fake) as served:
        config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url, keywords=True)
        with serve(short_cache, config, key=KEY) as server:
            call = talk(server.address, plan)
            record = await_stream(served)
            said = server.wait_for_log(r"caller said .*").group(0)
            ended = ended_line(server)
            log = server.log()

    assert call.status == 200
    # The handshake: where, who, and what the audio is.
    assert record.status == 101 and record.path == "/v1/listen"
    assert record.headers["authorization"] == f"Token {KEY}"
    assert record.query == listen_query("alaw" if codec == "PCMA" else "mulaw")
    # The audio: the caller's payloads from the answer on, in order, untouched. The
    # server stops listening when the call ends, so a BYE of its own may leave the
    # caller's last packets unheard; after our BYE (sent 0.3 s after our last packet)
    # it has all of them.
    sent = call.sent_audio()
    skipped = first_frame_lost(record.audio, sent)
    assert record.audio == sent[skipped : skipped + len(record.audio)]
    if call.bye_sent_at is not None:
        assert record.audio == sent[skipped:]
    speech_bytes = b"".join(speech)
    assert record.audio.find(speech_bytes) == len(lead) * 160 - skipped
    # 100 ms a message (eko_rtp/call/ears.py ASR_BATCH_FRAMES); a shorter one when the
    # VAD hears speech end and at the hang-up; always whole frames.
    assert all(size % 160 == 0 and 0 < size <= 800 for size in record.frames) and record.empty_frames == 0
    assert record.frames.count(800) >= len(record.frames) // 2
    # The script heard it and took the branch: the caller heard the question, then the
    # branch's phrase after it spoke, and never the other branch's.
    assert said == f"caller said {word!r}: {answer}"
    assert "greeting: returning_client_pending_internet (known caller)" in log
    asked, replied = call.phrase_at(question), call.phrase_at(reply)
    assert asked is not None and replied is not None, "the question and the reply must be heard whole"
    assert replied.arrival > call.sent[len(lead) + len(speech) - 1].at
    assert not call.heard_phrase(phrase_ulaw(cache_dir, other)), f"{other} was played"
    if answer == "yes":
        # Eko's BYE once its phrase was sent: no sooner than the phrase lasts (less a frame or two of slack).
        assert call.server_bye_at is not None
        assert call.server_bye_at - replied.arrival > phrase_seconds(cache_dir, branch) - 0.1
    else:
        assert call.bye_status == 200
    assert f"asr={len(record.audio) / 8000:.1f}s" in ended and "(failed)" not in ended, ended
    assert FAILED not in log


# -- 2. recognition unavailable: the keys still work -------------------------------------------------


FAILURES = {
    # case: (key given to the server, failure log message (regex) or None, metric kind or None)
    "no_key": (None, None, None),
    "unauthorized": ("wrong-key", re.escape("Deepgram refused the API key (401: Invalid credentials.)"),
                     "AsrUnauthorized"),
    "refused": (KEY, r"Deepgram at ws://127\.0\.0\.1:(\d+): OSError: all attempts to connect to "
                     r"127\.0\.0\.1:\1 failed", "AsrUnavailable"),
    "dropped": (KEY, r"Deepgram: connection lost after \d+ bytes \(\d+\.\d\d s\) of audio", "AsrDropped"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_without_speech_recognition_the_caller_answers_with_the_keys(short_cache, crm_address, tmp_path, case):
    """No key, a key refused, Deepgram unreachable, the stream lost mid-question: the caller
    presses 1 (RFC 4733) and takes the yes branch; the failure is logged once and counted."""
    cache_dir, _ = short_cache
    key, failure, kind = FAILURES[case]
    asked = phrase_seconds(cache_dir, QUESTION)
    fake = FakeDeepgram(api_key=KEY)
    if case == "dropped":
        # Lost once the question was asked: the script is listening for the answer.
        fake.drop_after_bytes = round((asked + 0.6) / FRAME) * 160
        press_at = asked + 1.4
    else:
        # Recognition is off before the question ends: Eko asks for the keys.
        press_at = asked + phrase_seconds(cache_dir, "press_yes_no") + 0.3
    metrics_port = free_port()
    with FakeDeepgramThread(fake) as served:
        base_url = f"ws://127.0.0.1:{free_port()}" if case == "refused" else fake.base_url
        config = write_config(tmp_path, crm=crm_address, base_url=base_url, metrics_port=metrics_port)
        with serve(short_cache, config, key=key) as server:
            call = talk(server.address, Plan(audio=tuple(quiet_frames(round((press_at + 3) / FRAME))),
                                             digits=((press_at, "1"),)))
            ended = ended_line(server)
            # Counters are copied once a second: wait for a copy made after the call's last frame.
            metrics = scrape_when(metrics_port, lambda values: values.get(
                ("eko_rtp_frames_sent_total", ()), 0) >= len(call.heard))
            log = server.log()
        streams = [await_stream(served)] if case in ("unauthorized", "dropped") else list(fake.streams)

    assert call.status == 200 and [digit for digit, _ in call.digits_sent] == ["1"]
    assert "caller pressed 1" in log
    question, keys, transfer = (phrase_ulaw(cache_dir, name)
                                for name in (QUESTION, "press_yes_no", "transfer_unavailable"))
    assert call.heard_phrase(question) and call.heard_phrase(transfer)
    assert call.phrase_at(transfer).arrival > call.digits_sent[0][1]
    assert call.server_bye_at is not None  # the callback promise is followed by goodbye and Eko's BYE
    assert call.heard_phrase(keys) == (case != "dropped")
    failures = [line for line in log.splitlines() if FAILED in line]
    counted = {labels: value for (name, labels), value in metrics.items() if name == "eko_asr_failures_total"}
    if case == "no_key":
        assert re.search(r"speech recognition: off \(no DEEPGRAM_API_KEY\): scripts ask for keys \(DTMF\); "
                         r"VAD barge-in on$", log, re.M), log[:2000]
        assert failures == [] and counted == {} and streams == []
        assert "asr=" not in ended
        return
    assert re.search(r"speech recognition: Deepgram nova-2 \(fr\) at ws://127\.0\.0\.1:\d+, endpointing 500 ms, "
                     r"0 keyword\(s\); VAD barge-in on$", log, re.M), log[:2000]
    assert len(failures) == 1, failures
    assert re.search(re.escape(FAILED) + failure + "$", failures[0]), failures[0]
    assert counted == {(("kind", kind),): 1.0}, counted
    assert "(failed)" in ended, ended
    if case == "refused":
        assert streams == []
    elif case == "unauthorized":
        [record] = streams
        assert record.status == 401 and record.headers["authorization"] == "Token wrong-key"
    else:
        [record] = streams
        assert record.ended == "dropped" and len(record.audio) == fake.drop_after_bytes
        skipped = first_frame_lost(record.audio, call.sent_audio())
        assert record.audio == call.sent_audio()[skipped : skipped + len(record.audio)]


def test_a_key_press_adds_nothing_to_what_the_recognizer_hears(short_cache, crm_address, tmp_path):
    """The caller keys 5 (not an answer: the script goes on listening) while it sends audio,
    events and audio side by side in one sequence space as phones do: the recognizer gets
    exactly the audio payloads, and no audio is reported concealed."""
    fake = FakeDeepgram(api_key=KEY)
    plan = Plan(audio=tuple(quiet_frames(100)), digits=((1.0, "5"),), hang_up_after=2.0)
    with FakeDeepgramThread(fake) as served:
        config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url)
        with serve(short_cache, config, key=KEY) as server:
            call = talk(server.address, plan)
            record = await_stream(served)
            ended = ended_line(server)
            log = server.log()

    assert call.bye_status == 200 and [digit for digit, _ in call.digits_sent] == ["5"]
    assert "caller pressed 5 (expected 1 or 2)" in log
    assert "caller_audio_concealed" not in ended, ended
    skipped = first_frame_lost(record.audio, call.sent_audio())
    assert record.audio == call.sent_audio()[skipped:]


# -- 3. a silent caller, and the hang-up ----------------------------------------------------------


def test_keepalive_while_the_caller_is_silent(short_cache, crm_address, tmp_path):
    """The caller sends 1 s of audio, nothing for 4.6 s (over the 4 s keep-alive) while
    Eko asks its question, then audio again until it hangs up: one KeepAlive in the
    pause, 4 s after the last audio, none while audio flows; every byte streamed."""
    fake = FakeDeepgram(api_key=KEY)
    plan = Plan(audio=tuple(quiet_frames(50)) + slots(4.6, None) + tuple(quiet_frames(30, start=50)),
                hang_up_after=6.2)
    with FakeDeepgramThread(fake) as served:
        config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url)
        with serve(short_cache, config, key=KEY) as server:
            call = talk(server.address, plan)
            record = await_stream(served)
            ended = ended_line(server)
            log = server.log()

    assert call.bye_status == 200
    skipped = first_frame_lost(record.audio, call.sent_audio())
    assert record.audio == call.sent_audio()[skipped:]
    assert [packet.slot for packet in call.sent[49:51]] == [49, 280]  # the pause, as sent
    # The pause, as the fake got it: the longest wait between two audio messages
    # (100 ms batches: the last one before the pause may hold a frame or four less).
    gaps = [later - earlier for earlier, later in zip(record.frames_at, record.frames_at[1:])]
    last = gaps.index(max(gaps))
    before, after = record.frames_at[last], record.frames_at[last + 1]
    assert after - before == pytest.approx(4.62, abs=0.35)
    [keepalive] = record.keepalives
    assert keepalive - before == pytest.approx(4.0, abs=0.3), (before, keepalive)
    assert f"; asr={len(record.audio) / 8000:.1f}s" in ended, ended
    assert FAILED not in log


@pytest.mark.parametrize("who", ["caller", "eko"])
def test_closestream_at_the_hang_up(short_cache, crm_address, tmp_path, who):
    """Whoever hangs up, Eko ends the stream the Deepgram way: CloseStream after the last
    audio, Deepgram's close (1000), then the end-of-call line with the seconds streamed."""
    cache_dir, _ = short_cache
    fake = FakeDeepgram(api_key=KEY)
    if who == "caller":
        plan = Plan(audio=slots(1.5, SILENCE["PCMU"]), hang_up_after=1.5)
    else:  # "oui" to the question: the transfer phrase, then Eko's BYE
        fake.script = [Reply(after_speech_bytes=480, after_quiet_bytes=2400,
                             message=results("oui", is_final=True, speech_final=True, duration=0.5))]
        plan = Plan(audio=slots(phrase_seconds(cache_dir, QUESTION) + 0.5, SILENCE["PCMU"]) + tuple(
            speech_frames("oui")))
    with FakeDeepgramThread(fake) as served:
        config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url)
        with serve(short_cache, config, key=KEY) as server:
            call = talk(server.address, plan)
            record = await_stream(served)
            ended = ended_line(server)

    assert (call.bye_status == 200) if who == "caller" else (call.server_bye_at is not None)
    assert record.close_stream_at is not None and record.close_stream_at >= record.frames_at[-1], record
    assert record.ended == "closed"
    assert f"; asr={len(record.audio) / 8000:.1f}s" in ended, ended


# -- 4. barge-in, timed by the caller ------------------------------------------------------------


BARGE_IN_BOUND = 0.250
SENTENCE = "Oui, c'est bien pour ma connexion internet."


def test_speech_over_the_question_silences_it_within_the_vad_delay(short_cache, crm_address, tmp_path):
    """The caller speaks 1 s into the (interruptible) ticket question; measured on the
    caller's clock, from its first speech packet sent to the last packet of the question
    received (the frame before the first one that differs from the cached phrase).

    Bound, 250 ms: the VAD wants ``min_speech_ms`` = 60 ms of voiced frames, so it cannot
    decide before the third speech frame (sent 40 ms after the first); on espeak French
    the WebRTC model says "voiced" 60 ms after the first sample at the median and 170 ms
    at worst (docs/VAD.md); the next 20 ms tick then plays silence. That is 40-170 ms plus
    up to 20 ms of frame clock; the margin to 250 ms is for scheduling on this loaded
    2-vCPU machine (two processes and the test). No speech recognition: barge-in is the VAD's.
    Three calls; every measure must hold.
    """
    cache_dir, _ = short_cache
    question = phrase_ulaw(cache_dir, QUESTION)
    frames = [question[start : start + 160] for start in range(0, len(question), 160)]
    speech = speech_frames(SENTENCE)
    lead = slots(1.0, SILENCE["PCMU"])
    plan = Plan(audio=lead + tuple(speech), hang_up_after=1.0 + len(speech) * FRAME + 0.6)
    latencies = []
    config = write_config(tmp_path, crm=crm_address)
    with serve(short_cache, config, key=None) as server:
        for _ in range(3):
            call = talk(server.address, plan)
            assert call.bye_status == 200
            heard = call.audio_heard()
            # Continuity: one SSRC, every sequence number and timestamp one frame after the
            # last (but for the clock's one shift between the first two frames).
            assert len({packet.ssrc for packet in heard}) == 1
            assert frame_breaks(heard) == []
            assert [packet.payload_type for packet in call.heard] == [0] * len(call.heard)
            # Where the question starts in what we heard, and where it stops matching.
            start = call.phrase_at(question[:1600])
            assert start is not None, "the question's first 200 ms were not heard"
            first = heard.index(start)
            cut = next(index for index, frame in enumerate(frames) if heard[first + index].payload != frame)
            assert 40 <= cut < len(frames) - 10, f"the question stopped at frame {cut} of {len(frames)}"
            rest = question[cut * 160 :]
            assert not rest.strip(b"\xff") or call.phrase_at(rest) is None  # stopped, not paused
            spoke = call.sent[len(lead)].at
            last_phrase_frame = heard[first + cut - 1].arrival
            latencies.append((last_phrase_frame - spoke, heard[first + cut].arrival - spoke))
        ends = log_lines(server, r"ended \(remote_bye\)", count=3)
    print("barge-in: last question frame / first silence frame after the first speech packet (ms):",
          [(round(last * 1000), round(silent * 1000)) for last, silent in latencies])
    assert len(ends) == 3 and all("barge-ins=1" in line for line in ends), ends
    assert all(last <= BARGE_IN_BOUND for last, _ in latencies), latencies


def test_after_a_barge_in_eko_does_not_talk_over_the_caller(short_cache, crm_address, tmp_path):
    """The caller speaks a 2 s sentence over the question: from the barge-in until the
    caller has stopped (plus the VAD's 300 ms hangover), Eko sends only silence."""
    cache_dir, _ = short_cache
    question = phrase_ulaw(cache_dir, QUESTION)
    speech = speech_frames(SENTENCE)
    lead = slots(1.0, SILENCE["PCMU"])
    plan = Plan(audio=lead + tuple(speech), hang_up_after=1.0 + len(speech) * FRAME + 1.0)
    config = write_config(tmp_path, crm=crm_address)
    with serve(short_cache, config, key=None) as server:
        call = talk(server.address, plan)
    heard = call.audio_heard()
    first = heard.index(call.phrase_at(question[:1600]))
    cut = next(index for index in range(len(heard) - first)
               if heard[first + index].payload != question[index * 160 : (index + 1) * 160])
    stopped = call.sent[len(lead) + len(speech) - 1].at + 0.3  # the caller's last word, and the hangover
    talking_over = [packet for packet in heard[first + cut :] if packet.arrival < stopped
                    and packet.payload != SILENCE["PCMU"]]
    assert talking_over == [], (f"{len(talking_over)} frames of Eko's voice while the caller spoke; "
                                f"press_yes_no heard: {call.heard_phrase(phrase_ulaw(cache_dir, 'press_yes_no'))}")


async def test_the_recognizer_gets_the_callers_audio_from_the_answer_on():
    """In process (the real Call, ears and CallSpeech; a recognizer that records its frames):
    a caller packet handled in the same step as the 200 OK still reaches the recognizer."""
    first, second = quiet_frames(2)
    stream = PlayingStream()
    line = RecordingLine(stream)
    barge_in = BargeIn()
    ears = CallerAudio(vad=None, on_speech=barge_in.on_speech)
    recognizers: list[ScriptedRecognizer] = []

    def recognizer(**kwargs):
        recognizers.append(ScriptedRecognizer(**kwargs))
        return recognizers[-1]

    def answer(call) -> None:
        line.line.answer(call)  # the 200 OK and Eko's first frame...
        ears.feed(1000, struct.pack("!BBHII", 0x80, 0, 1000, 0, 1) + first, "PCMU", trio.current_time())  # ...and the caller's first packet, handled next

    async def script(call) -> None:
        await call.answer()
        await trio.sleep_forever()

    speech = CallSpeech(settings=AsrSettings(), api_key="k", ears=ears, on_failure=lambda error: None,
                        on_audio_seconds=lambda seconds: None, stream_factory=recognizer)
    call = Call(call_id="c1", caller=None, caller_number=None, stream=stream, media=None,
                digits=DigitQueue(call_id="c1"), lookup=NoLookup(), timers=TIMERS, cache={}, script=script,
                line=CallLine(answer=answer, hang_up=line.line.hang_up), invite_time=trio.current_time(),
                source=("127.0.0.1", 5060), ears=ears, barge_in=barge_in, speech=speech)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, call, stream)
        await call.answered.wait()
        await trio.sleep(FRAME)
        ears.feed(1001, struct.pack("!BBHII", 0x80, 0, 1001, 160, 1) + second, "PCMU", trio.current_time())
        await trio.sleep(FRAME)
        call.end("remote_bye", trio.current_time())
    [heard_by] = recognizers
    assert b"".join(heard_by.frames) == first + second  # one batch, sent at the hang-up
