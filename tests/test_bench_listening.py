"""The listening scenario (issue 15): barge-in latency from timelines, the caller's talkspurts,
the bench's fake speech-recognition endpoint, and the scenario end to end."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import trio

from eko_bench import barge_in, caller_speech, fake_asr, report
from eko_bench.barge_in import Outcome, QuietRun, Talkspurt
from eko_bench.fake_asr import FakeAsr, Session
from eko_rtp.asr.deepgram_api import AsrSettings, Ignored, Metadata, Transcript, parse_message_untrusted
from eko_rtp.asr.deepgram_client import DeepgramStream
from eko_rtp.asr.errors import AsrUnauthorized
from eko_rtp.errors import UserError

MS = 1_000_000  # ns


# -- barge-in latency from the two timelines ------------------------------------------------

def _timeline(pattern: str, *, start_ms: int = 0) -> tuple[list[int], list[int]]:
    """One bot packet every 20 ms from ``start_ms``: 'S' sound, '.' silence."""
    arrivals = [(start_ms + 20 * index) * MS for index in range(len(pattern))]
    return arrivals, [1 if mark == "S" else 0 for mark in pattern]


@pytest.mark.parametrize(
    ("pattern", "onsets_ms", "expected"),
    [
        # The bot speaks, the caller starts at 50 ms, the bot's last sound packet arrives at 100 ms.
        ("SSSSSS......", [50], [(Outcome.BARGED, 50)]),
        # A pause of one packet inside the phrase is not the stop: the quiet run from 140 ms is.
        ("SS.SSSS.....", [45], [(Outcome.BARGED, 75)]),
        # A short pause under way at the onset that never ends: the bot stopped, when cannot be told.
        ("SSS.......", [70], [(Outcome.BARGED_IN_PAUSE, None)]),
        # Three silent packets before the onset: the bot was already quiet.
        ("SS.........SS", [150], [(Outcome.BOT_QUIET, None)]),
        # Nothing but silence yet.
        ("......", [10], [(Outcome.BOT_QUIET, None)]),
        # Sound all through a window of 200 ms and beyond: no barge-in observed.
        ("S" * 20, [50], [(Outcome.MISSED, None)]),
        # The quiet run starts, but after the window.
        ("S" * 14 + "....", [0], [(Outcome.MISSED, None)]),
        # The call's packets end inside the window while the bot still speaks.
        ("SSSSS", [50], [(Outcome.UNFINISHED, None)]),
        # ... or before the quiet run is long enough to count.
        ("SSSS..", [30], [(Outcome.UNFINISHED, None)]),
        # The next onset closes the window: the stop at 160 ms belongs to the talkspurt at 100 ms.
        ("SSSSSSSSS....", [0, 100], [(Outcome.MISSED, None), (Outcome.BARGED, 60)]),
        # Two talkspurts, each barged in; the bot resumed between them.
        ("SSSS.....SSSSS....", [30, 210], [(Outcome.BARGED, 30), (Outcome.BARGED, 50)]),
    ],
)
def test_each_talkspurt_outcome_from_the_timelines(pattern, onsets_ms, expected):
    arrivals, sound = _timeline(pattern)
    found = barge_in.talkspurts([onset * MS for onset in onsets_ms], arrivals, sound,
                                quiet_frames=3, window_ns=200 * MS)
    assert found == [Talkspurt(onset_ns=onset * MS, outcome=outcome,
                               latency_ns=None if latency is None else latency * MS)
                     for onset, (outcome, latency) in zip(onsets_ms, expected)]


@pytest.mark.parametrize(
    ("pattern", "onsets_ms", "expected"),
    [
        # Six packets to its last sound is the whole phrase: it ended by itself, the caller was not heard.
        ("SSSSSS......", [50], [(Outcome.MISSED, None)]),
        # Four packets is two short of it, still its end (a loss, a late first frame).
        ("SSSS......", [30], [(Outcome.MISSED, None)]),
        # Three packets: the phrase was cut.
        ("SSS......", [30], [(Outcome.BARGED, 10)]),
        # Each phrase is counted from where the bot last began after a quiet run.
        ("SSS.....SSSSSS.....", [30, 250], [(Outcome.BARGED, 10), (Outcome.MISSED, None)]),
        ("SSSSSS.....SSS.....", [250], [(Outcome.BARGED, 10)]),
    ],
)
def test_a_phrase_that_ends_by_itself_is_no_barge_in(pattern, onsets_ms, expected):
    arrivals, sound = _timeline(pattern)
    found = barge_in.talkspurts([onset * MS for onset in onsets_ms], arrivals, sound,
                                quiet_frames=3, window_ns=200 * MS, phrase_frames=6)
    assert [(spurt.outcome, None if spurt.latency_ns is None else spurt.latency_ns // MS) for spurt in found] == expected


def test_an_onset_on_the_last_sound_packet_is_a_stop_already_under_way():
    # The packet at 100 ms is the bot's last sound; an onset at that very instant heard it
    # arrive, so the bot did not play after the caller began.
    arrivals, sound = _timeline("SSSSSS......")
    [spurt] = barge_in.talkspurts([100 * MS], arrivals, sound, quiet_frames=3, window_ns=200 * MS)
    assert spurt.outcome is Outcome.BARGED_IN_PAUSE


def test_quiet_runs_keep_the_long_ones_and_a_last_one_cut_short():
    assert barge_in.quiet_runs([1, 0, 0, 1, 0, 0, 0, 1, 0], 3) == [
        QuietRun(start=4, length=3, complete=True), QuietRun(start=8, length=1, complete=False)]
    assert barge_in.quiet_runs([0, 0, 0], 3) == [QuietRun(start=0, length=3, complete=True)]
    assert barge_in.quiet_runs([], 3) == []


def test_the_timelines_must_line_up():
    with pytest.raises(ValueError, match="3 arrivals but 2 sound flags"):
        barge_in.talkspurts([0], [0, 1, 2], [1, 1], quiet_frames=3, window_ns=1)
    with pytest.raises(ValueError, match="a quiet run is at least one packet, not 0"):
        barge_in.quiet_runs([1], 0)


@pytest.mark.parametrize(("pause", "listen", "expected"), [(7, 75, 25), (16, 75, 25), (30, 75, 35)])
def test_the_quiet_run_outlasts_the_phrase_pauses(pause, listen, expected):
    assert barge_in.quiet_frames_for(pause, listen) == expected


def test_a_phrase_pausing_as_long_as_the_listen_is_refused():
    with pytest.raises(ValueError, match="the phrase pauses for 1400 ms: a barge-in cannot be told from a pause"
                                         " within the script's 1500 ms of listening"):
        barge_in.quiet_frames_for(70, 75)


def _listening_summary(mode: str, cpu: float | None, p50: float | None) -> dict:
    return {"plan": {"concurrency": 500, "scenario": "listening", "listening": mode},
            "server": {"cpu_percent": cpu, "rss_per_call_kib": 40.0},
            "interarrival_deviation_steady_ms": {"p99": 1.5},
            "listening": {"mode": mode, "barge_in_latency_ms": {"p50": p50, "p99": None if p50 is None else 2 * p50}}}


def test_the_comparison_sets_modes_side_by_side():
    summaries = [_listening_summary("vad", 70.0, 40.0), _listening_summary("off", 50.0, None),
                 _listening_summary("vad", 80.0, 42.0), _listening_summary("off", 60.0, None)]
    comparison = report.listening_comparison(summaries)
    assert comparison["vad"]["runs"] == 2
    assert comparison["vad"]["server_cpu_percent"] == {"mean": 75.0, "runs": [70.0, 80.0]}
    per_call = comparison["vad"]["server_cpu_percent_per_call"]
    assert per_call["runs"] == [0.14, 0.16] and per_call["mean"] == pytest.approx(0.15)
    assert comparison["off"]["barge_in_latency_p50_ms"] == {"mean": None, "runs": [None, None]}
    assert report.comparison_lines(comparison) == [
        "listening: VAD barge-in, mean of 2 run(s): server CPU 75.0% of a core, 0.150% per call, RSS 40.0 KiB per"
        " call, steady deviation p99 1.50 ms, barge-in p50/p99 41.0 / 82.0 ms",
        "listening: off (no VAD, no ASR), mean of 2 run(s): server CPU 55.0% of a core, 0.110% per call, RSS 40.0"
        " KiB per call, steady deviation p99 1.50 ms, barge-in p50/p99 - / - ms"]
    assert report.listening_comparison(summaries[:1]) is None  # nothing to compare with


# -- the caller's talkspurts ----------------------------------------------------------------

QUIET, LOUD = b"\xff" * 160, b"\x20" * 160  # µ-law 0x20: about -8000, -12 dBFS


@pytest.mark.parametrize(
    ("frames", "onsets"),
    [
        ([QUIET] * 30 + [LOUD] * 10 + [QUIET] * 5 + [LOUD] * 5 + [QUIET] * 30, (30,)),  # 100 ms is no new talkspurt
        ([LOUD] * 10 + [QUIET] * 30, (0,)),  # the loop's end is the silence before its start
        ([LOUD] * 10 + [QUIET] * 30 + [LOUD] * 10 + [QUIET] * 25, (0, 40)),
        ([LOUD] * 40, ()),  # one endless talkspurt
        ([QUIET] * 40, ()),
    ],
)
def test_talkspurt_onsets_in_the_looped_audio(frames, onsets):
    assert caller_speech.talkspurt_onsets(b"".join(frames)) == onsets


def test_frame_levels():
    levels = caller_speech.frame_levels_dbfs(QUIET + LOUD + b"\xff" * 80)
    assert len(levels) == 2 and levels[0] == float("-inf") and -13 < levels[1] < -11


def test_audio_without_a_talkspurt_is_refused():
    with pytest.raises(UserError) as caught:
        caller_speech.caller_talk(QUIET * 40)
    assert str(caught.value) == ("key '--audio': the caller audio has no talkspurt: no frame of -50 dBFS or more"
                                 " after 500 ms quieter (the listening scenario needs speech and pauses)")
    assert caller_speech.caller_talk(LOUD * 10 + QUIET * 30, lead_in_seconds=1.0) == caller_speech.CallerTalk(
        lead_in_frames=50, onset_frames=(0,))


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_the_rendered_sentence_is_one_talkspurt_and_a_pause(tmp_path):
    from eko_bench.rtp_engine import open_wav_as_ulaw

    audio = open_wav_as_ulaw(caller_speech.render_sentence(str(tmp_path)))
    assert 3.0 < len(audio) / 8000 < 4.5
    assert caller_speech.talkspurt_onsets(audio) == (0,)
    levels = caller_speech.frame_levels_dbfs(audio)
    assert all(level == float("-inf") for level in levels[-70:])  # the pause is digital silence


# -- the fake speech-recognition endpoint, sans I/O ----------------------------------------

def _client_frame(opcode: int, payload: bytes, *, mask: bytes = b"\x01\x02\x03\x04", final: bool = True) -> bytes:
    size = len(payload)
    header = bytes((0x80 * final | opcode,))
    if size < 126:
        header += bytes((0x80 | size,))
    else:
        header += bytes((0x80 | 126,)) + struct.pack("!H", size)
    return header + mask + fake_asr.unmask(payload, mask)


def _open_session(every: int = 320) -> Session:
    session = Session(api_key="k", results_frame=b"<results>", results_every_bytes=every)
    answer = session.receive(b"GET /v1/listen?encoding=mulaw HTTP/1.1\r\nHost: x\r\nAuthorization: Token k\r\n"
                             b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    # RFC 6455 §1.3's own example key and accept value.
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert session.state is fake_asr.State.OPEN
    return session


@pytest.mark.parametrize(
    ("request_head", "status", "words"),
    [
        (b"GET /v1/speak HTTP/1.1\r\nAuthorization: Token k\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\n\r\n",
         404, "no route for /v1/speak"),
        (b"GET /v1/listen HTTP/1.1\r\nAuthorization: Token nope\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\n\r\n",
         401, "Invalid credentials."),
        (b"GET /v1/listen HTTP/1.1\r\nAuthorization: Token k\r\n\r\n", 400, "not a websocket upgrade"),
    ],
)
def test_the_fake_refuses_a_handshake_as_deepgram_does(request_head, status, words):
    session = Session(api_key="k", results_frame=b"", results_every_bytes=8000)
    answer = session.receive(request_head)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].startswith(f"HTTP/1.1 {status} ".encode())
    assert f"dg-error: {words}".encode() in head
    assert json.loads(body)["err_msg"] == words
    assert session.done and session.status == status


def test_the_fake_counts_audio_answers_pings_and_closes_on_close_stream():
    session = _open_session(every=320)
    assert session.receive(_client_frame(0x2, b"\xff" * 160)) == b""
    assert session.receive(_client_frame(0x2, b"\xff" * 160)) == b"<results>"  # 320 bytes: one interim reply
    assert session.receive(_client_frame(0x9, b"ping!")) == fake_asr.server_frame(0xA, b"ping!")
    assert session.receive(_client_frame(0x1, b'{"type": "KeepAlive"}')) == b""
    # A frame split across reads is read once whole.
    frame = _client_frame(0x2, b"\x7f" * 160)
    assert session.receive(frame[:50]) == b"" and session.receive(frame[50:]) == b""
    assert (session.audio_frames, session.audio_bytes, session.keepalives, session.pings) == (3, 480, 1, 1)
    reply = session.receive(_client_frame(0x1, b'{"type": "CloseStream"}'))
    metadata = fake_asr.server_frame(0x1, fake_asr.metadata_message(0.06).encode())
    assert reply == metadata + fake_asr.server_frame(0x8, struct.pack("!H", 1000))
    assert session.state is fake_asr.State.CLOSING
    session.receive(_client_frame(0x8, struct.pack("!H", 1000)))
    assert session.done and session.ended == "closed"


def test_the_fake_echoes_a_client_close_and_refuses_unmasked_frames():
    session = _open_session()
    assert session.receive(_client_frame(0x8, struct.pack("!H", 1001))) == fake_asr.server_frame(
        0x8, struct.pack("!H", 1001))
    assert session.done and session.ended == "client-closed"
    session = _open_session()
    assert session.receive(bytes((0x82, 2)) + b"\xff\xff") == fake_asr.server_frame(
        0x8, struct.pack("!H", 1002) + b"unmasked client frame")
    assert session.done and session.ended == "protocol-error"


def test_the_fake_replies_parse_as_deepgram_replies():
    interim = parse_message_untrusted(fake_asr.results_message())
    assert isinstance(interim, Transcript) and interim.text == "allo" and not interim.is_final
    assert parse_message_untrusted(fake_asr.metadata_message(1.5)) == Metadata(
        request_id=fake_asr.REQUEST_ID, duration=1.5)


# -- the fake on loopback, against the server's own client -----------------------------------

def _stream_to(fake: FakeAsr, *, api_key: str, frames: int, events: list) -> DeepgramStream:
    async def main() -> DeepgramStream:
        settings = AsrSettings(base_url=fake.base_url, keepalive_seconds=0.3)
        stream = DeepgramStream(settings=settings, api_key=api_key, on_event=events.append)
        send, receive = trio.open_memory_channel(frames)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.run, receive)
            for _ in range(frames):
                await send.send(b"\xff" * 160)
                await trio.sleep(0.02)
            await trio.sleep(0.8)  # nothing sent: KeepAlive, and pings with their pongs
            await send.aclose()
        return stream

    return trio.run(main)


def test_a_real_deepgram_stream_against_the_fake():
    events: list = []
    with FakeAsr() as fake:
        stream = _stream_to(fake, api_key=fake.api_key, frames=60, events=events)
    assert stream.closed_cleanly and stream.keepalives_sent >= 1 and stream.replies_rejected == 0
    transcripts = [event for event in events if isinstance(event, Transcript)]
    assert len(transcripts) == 1 and transcripts[0].text == "allo"  # 9600 bytes: one reply per 8000
    assert events[-1] == Metadata(request_id=fake_asr.REQUEST_ID, duration=1.2)
    assert not [event for event in events if isinstance(event, Ignored)]
    stats = fake.stats
    assert {key: stats[key] for key in ("streams", "closed_cleanly", "dropped", "audio_bytes", "audio_frames",
                                        "close_streams", "results_sent")} == {
        "streams": 1, "closed_cleanly": 1, "dropped": 0, "audio_bytes": 9600, "audio_frames": 60,
        "close_streams": 1, "results_sent": 1}
    assert stats["keepalives"] == stream.keepalives_sent and stats["pings"] >= 1


def test_a_wrong_key_is_refused_as_deepgram_refuses_it():
    with FakeAsr() as fake:
        with pytest.raises(BaseExceptionGroup) as caught:  # raised out of the test's nursery
            _stream_to(fake, api_key="wrong", frames=1, events=[])
    [refused] = caught.value.exceptions
    assert isinstance(refused, AsrUnauthorized)
    assert str(refused) == "Deepgram refused the API key (401: Invalid credentials.)"
    assert fake.stats["refused"] == 1 and fake.stats["streams"] == 0


def test_the_fake_serves_loopback_only():
    with pytest.raises(UserError, match="outside loopback"):
        FakeAsr(host="192.0.2.1")


# -- the scenario end to end ----------------------------------------------------------------

BENCH = [sys.executable, "-m", "eko_bench"]
slow = pytest.mark.slow


def bench(*arguments, timeout=180):
    environment = {name: value for name, value in os.environ.items() if name != "DEEPGRAM_API_KEY"}
    return subprocess.run([*BENCH, *arguments], capture_output=True, text=True, timeout=timeout, env=environment)


@slow
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_callers_barge_in_on_a_spawned_server_streaming_to_the_fake_asr(built_cache):
    done = bench("--spawn", "--scenario", "listening", "--asr", "--cache", str(built_cache), "--calls", "3",
                 "--hold", "4", "--noise-probe", "0", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["plan"]["scenario"] == "listening" and run["plan"]["listening"] == "asr"
    assert run["calls"]["answered"] == 3 and run["packets"]["lost"] == 0
    listening = run["listening"]
    # One talkspurt a call from 1 s after the 200 OK (the next is due at 4.5 s, after the hang-up).
    assert listening["talkspurts"] == 3 and listening["outcomes"]["barged"] == 3
    assert listening["talkspurts_without_barge_in"] == 0 and listening["calls_without_barge_in"] == 0
    latency = listening["barge_in_latency_ms"]
    # The server's VAD decides after 60 ms of speech; a loaded CI machine gets ten times that.
    assert latency["count"] == 3 and 0 < latency["p50"] <= latency["max"] < 600
    asr = listening["fake_asr"]
    assert asr["streams"] == 3 and asr["refused"] == 0 and asr["protocol_errors"] == 0
    assert asr["audio_seconds"] > 3 * 2.0  # each call streamed most of its 4 s
    assert set(run["loadavg"]) == {"before", "after"}
    assert "fake_asr" in run["bench"]["helpers_cpu_percent"]


@slow
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_listening_compared_with_nobody_listening(built_cache):
    done = bench("--spawn", "--scenario", "listening", "--listening", "compare", "--cache", str(built_cache),
                 "--calls", "2", "--hold", "4", "--noise-probe", "0")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert "server (2 conc., listening vad)" in header and "server (2 conc., listening off)" in header
    rows = {line.split("|")[0].strip(): [cell.strip() for cell in line.split("|")[1:]] for line in done.stdout.splitlines()}
    assert rows["listening"][:2] == ["VAD barge-in", "off (no VAD, no ASR)"]
    assert rows["talkspurts barged in (measured)"][:2] == ["2", "0"]
    assert rows["no barge-in observed"][:2] == ["0", "2"]  # the phrase played on over the caller


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--spawn", "--asr"], "key '--listening': --asr and --listening are for --scenario listening"),
        (["--spawn", "--scenario", "listening", "--cache", "CACHE", "--listening", "off", "--asr"],
         "key '--asr': listening off streams nothing: leave out --asr"),
        (["--address", "127.0.0.1:5060", "--scenario", "listening", "--asr"],
         "key '--listening': the fake speech-recognition endpoint and listening off are set up in a server the bench"
         " starts: give --spawn"),
        (["--spawn", "--scenario", "listening", "--cache", "CACHE", "--rounds", "2"],
         "key '--rounds': --rounds is 1 to 10 pairs of runs, with --listening compare"),
        (["--spawn", "--scenario", "listening", "--cache", "CACHE", "--audio", "/nonexistent.wav"],
         "/nonexistent.wav: cannot read WAV: [Errno 2] No such file or directory: '/nonexistent.wav'"),
        (["--spawn", "--scenario", "listening", "--cache", "CACHE/missing"],
         "CACHE/missing/greet.raw: cannot read the phrase 'greet' the listening scenario plays: No such file or"
         " directory (build it with: eko-rtp cache build --cache CACHE/missing)"),
        (["--spawn", "--scenario", "listening", "--cache", "CACHE/pausing"],
         "CACHE/pausing: 'greet': the phrase pauses for 1600 ms: a barge-in cannot be told from a pause within the"
         " script's 1500 ms of listening"),
    ],
)
def test_listening_flags_that_do_not_fit_are_user_errors(arguments, error, tmp_path):
    (tmp_path / "greet.raw").write_bytes(LOUD * 10 + QUIET * 20 + LOUD * 10)
    (tmp_path / "pausing").mkdir()
    (tmp_path / "pausing" / "greet.raw").write_bytes(LOUD * 10 + QUIET * 80 + LOUD * 10)
    done = bench(*(argument.replace("CACHE", str(tmp_path)) for argument in arguments))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == f"eko-bench: error: {error.replace('CACHE', str(tmp_path))}"


def test_listening_needs_the_cache_of_the_phrase_it_plays():
    done = bench("--spawn", "--scenario", "listening")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "eko-bench: error: key '--cache': listening plays the cached 'greet': give --cache DIR"


def test_a_spawned_server_never_inherits_a_deepgram_key(monkeypatch, tmp_path):
    from eko_bench import targets

    seen = {}

    class Recorded:
        pid = 1

    def fake_popen(command, **options):
        seen.update(options["env"])
        return Recorded()

    monkeypatch.setenv("DEEPGRAM_API_KEY", "a-real-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setattr(targets.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(targets, "pin", lambda pid, cpus: None)
    targets.spawn_server(host="127.0.0.1", cache_dir=None, cpus=None, rtp_ports="30000-30100", extra=[],
                         env={"DEEPGRAM_BASE_URL": "ws://127.0.0.1:1"})
    assert "DEEPGRAM_API_KEY" not in seen and "CREDENTIALS_DIRECTORY" not in seen
    assert seen["DEEPGRAM_BASE_URL"] == "ws://127.0.0.1:1" and seen["PATH"] == os.environ["PATH"]

