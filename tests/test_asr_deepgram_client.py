"""The Deepgram stream against the fake endpoint over loopback: bytes, query, keep-alives, close, failures.

Real sockets and real time (the fake shares the test's trio clock, so its stamps and
ours compare); waits are tenths of a second, each test well under two seconds.

A reply the client cannot read is logged, counted and skipped (a hostile or newer
provider must not end the call's transcription for one message); ten of them, or a
reply over the size limit, end the stream with ``AsrProtocolError``.
"""

from __future__ import annotations

import math
import socket

import pytest
import trio
from fake_deepgram import REQUEST_ID, FakeDeepgram, Reply, results, speech_started, utterance_end

from eko_rtp.asr.deepgram_api import AsrSettings, Metadata, SpeechStarted, Transcript, UtteranceEnd
from eko_rtp.asr.deepgram_client import DeepgramStream
from eko_rtp.asr.errors import (
    AsrDropped,
    AsrError,
    AsrNoKey,
    AsrProtocolError,
    AsrRequestRejected,
    AsrUnauthorized,
    AsrUnavailable,
)

KEY = "test-key"
MARGIN = 0.25  # scheduling slack on 2 shared cores
FRAME = 160  # 20 ms of G.711


@pytest.fixture
async def fake(nursery):
    server = FakeDeepgram(api_key=KEY)
    await nursery.start(server.serve)
    return server


def frames(count: int, offset: int = 0) -> list[bytes]:
    """``count`` distinct 20 ms frames: each byte says where it is, so order and loss both show."""
    return [bytes((offset + index * 7 + position) % 256 for position in range(FRAME)) for index in range(count)]


async def run_stream(stream: DeepgramStream, feed: list[bytes | float]) -> None:
    """Run ``stream`` fed by ``feed`` (bytes: a chunk; a number: seconds of pause), then hang up.

    The stream's failure is raised as is (not in an exception group).
    """
    send, receive = trio.open_memory_channel[bytes](len(feed) + 1)

    async def feeder() -> None:
        async with send:
            for step in feed:
                if isinstance(step, bytes):
                    await send.send(step)
                else:
                    await trio.sleep(step)

    failure: AsrError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder)
        try:
            await stream.run(receive)
        except AsrError as error:
            failure = error
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


def make_stream(fake: FakeDeepgram, events: list | None = None, *, api_key: str = KEY, base_url: str | None = None,
                settings: dict | None = None, **options: float) -> DeepgramStream:
    return DeepgramStream(
        settings=AsrSettings(base_url=base_url or fake.base_url, **(settings or {})),
        api_key=api_key,
        on_event=(events if events is not None else []).append,
        **options,
    )


async def test_audio_arrives_byte_for_byte_and_the_transcription_comes_back(fake):
    fake.script = [
        Reply(after_bytes=1600, message=speech_started(0.18)),
        Reply(after_bytes=3200, message=results("oui", is_final=False, duration=0.4)),
        Reply(after_bytes=4800, message=results("oui je voudrais", is_final=True, speech_final=True, duration=0.6)),
        Reply(after_bytes=4800, message=utterance_end(0.6)),
    ]
    fake.on_close_stream = [results("merci", is_final=True, start=0.6, duration=0.2, from_finalize=True)]
    audio = frames(40)
    events = []
    stream = make_stream(fake, events, settings={"utterance_end_ms": 1000})
    await run_stream(stream, [*audio[:20], b"", *audio[20:]])  # the empty chunk is not sent
    record = await fake.only_stream()
    assert bytes(record.audio) == b"".join(audio)
    assert (record.frames, record.empty_frames) == ([FRAME] * 40, 0)
    assert (stream.bytes_sent, stream.seconds_sent) == (6400, 0.8)
    assert events == [
        SpeechStarted(timestamp=0.18),
        Transcript(text="oui", is_final=False, speech_final=False, confidence=0.98, start=0.0, duration=0.4),
        Transcript(text="oui je voudrais", is_final=True, speech_final=True, confidence=0.98, start=0.0,
                   duration=0.6),
        UtteranceEnd(last_word_end=0.6),
        Transcript(text="merci", is_final=True, speech_final=False, confidence=0.98, start=0.6, duration=0.2,
                   from_finalize=True),
        Metadata(request_id=REQUEST_ID, duration=0.8),
    ]
    assert record.close_stream_at is not None and record.ended == "closed"
    assert (stream.closed_cleanly, stream.replies_rejected, stream.keepalives_sent) == (True, 0, 0)
    assert record.other_text == []


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
async def test_the_handshake_asks_for_what_the_settings_say(fake, encoding):
    stream = make_stream(fake, settings={
        "encoding": encoding, "endpointing_ms": 300, "utterance_end_ms": 1500,
        "keywords": (("Eko", 2), ("résiliation", 1.5), ("carte vitale", -1))})
    await run_stream(stream, frames(2))
    record = await fake.only_stream()
    assert record.path == "/v1/listen"
    assert record.query == [
        ("model", "nova-2"), ("language", "fr"), ("encoding", encoding), ("sample_rate", "8000"), ("channels", "1"),
        ("interim_results", "true"), ("endpointing", "300"), ("vad_events", "true"), ("utterance_end_ms", "1500"),
        ("keywords", "Eko:2"), ("keywords", "résiliation:1.5"), ("keywords", "carte vitale:-1"),
    ]
    assert record.headers["authorization"] == f"Token {KEY}"
    assert record.status == 101


async def test_keepalives_flow_only_while_the_audio_does_not(fake):
    stream = make_stream(fake, settings={"keepalive_seconds": 0.2})
    talking = [step for frame in frames(10) for step in (frame, 0.05)]  # 0.5 s of audio, a frame each 50 ms
    await run_stream(stream, [*talking, 0.7, *frames(1)])  # then 0.7 s without audio
    record = await fake.only_stream()
    assert record.frames == [FRAME] * 11
    last_talk, resumed = record.frames_at[9], record.frames_at[10]
    # Nothing while frames came every 50 ms; then one each 0.2 s of silence.
    assert len(record.keepalives) == 3 == stream.keepalives_sent
    assert all(last_talk < stamp < resumed for stamp in record.keepalives)
    gaps = [later - earlier for earlier, later in zip([last_talk, *record.keepalives], record.keepalives)]
    assert all(0.2 - 0.01 <= gap < 0.2 + MARGIN for gap in gaps), gaps
    assert record.ended == "closed"


async def test_no_key_fails_before_connecting(fake):
    with pytest.raises(AsrNoKey) as raised:
        await run_stream(make_stream(fake, api_key=""), frames(1))
    assert str(raised.value) == "Deepgram: no API key (set DEEPGRAM_API_KEY)"
    assert fake.streams == []


@pytest.mark.parametrize(
    ("api_key", "reject_status", "kind", "message"),
    [
        ("a-wrong-key", None, AsrUnauthorized, "Deepgram refused the API key (401: Invalid credentials.)"),
        (KEY, 403, AsrUnauthorized, "Deepgram refused the API key (403: Refused by the test.)"),
        (KEY, 400, AsrRequestRejected, "Deepgram refused the stream's settings (400: Refused by the test.)"),
        (KEY, 429, AsrUnavailable, "Deepgram is unavailable (429: Refused by the test.)"),
        (KEY, 503, AsrUnavailable, "Deepgram is unavailable (503: Refused by the test.)"),
    ],
)
async def test_a_refused_handshake_is_typed(fake, api_key, reject_status, kind, message):
    fake.reject_status = reject_status
    with pytest.raises(kind) as raised:
        await run_stream(make_stream(fake, api_key=api_key), frames(1))
    assert str(raised.value) == message
    assert (raised.value.status, raised.value.request_id) == (reject_status or 401, REQUEST_ID)
    assert "a-wrong-key" not in str(raised.value)
    [record] = fake.streams
    assert record.status == (reject_status or 401)


async def test_a_tls_handshake_that_fails_is_unavailable(fake):
    tls_url = fake.base_url.replace("ws://", "wss://")  # our TLS hello to a plain websocket server
    with pytest.raises(AsrUnavailable) as raised:
        await run_stream(make_stream(fake, base_url=tls_url), frames(1))
    assert str(raised.value).startswith(f"Deepgram at {tls_url}: TLS: SSLError: ")
    assert fake.streams == []


async def test_a_refused_connection_is_unavailable(fake):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"ws://127.0.0.1:{port}"
    with pytest.raises(AsrUnavailable) as raised:
        await run_stream(make_stream(fake, base_url=base_url), frames(1))
    assert str(raised.value).startswith(f"Deepgram at {base_url}: OSError: all attempts to connect to 127.0.0.1:{port}")
    assert raised.value.retryable


async def test_a_handshake_never_answered_is_unavailable_after_the_connect_timeout(fake):
    fake.handshake_delay = math.inf
    started = trio.current_time()
    with pytest.raises(AsrUnavailable) as raised:
        await run_stream(make_stream(fake, connect_timeout=0.3), frames(1))
    assert 0.3 <= trio.current_time() - started < 0.3 + MARGIN
    assert str(raised.value) == f"Deepgram at {fake.base_url}: no handshake within 0.3 s"


async def test_a_connection_lost_mid_stream_is_dropped(fake):
    fake.drop_after_bytes = 1600
    with pytest.raises(AsrDropped) as raised:
        await run_stream(make_stream(fake), [*frames(10), 1.0, *frames(10)])
    assert str(raised.value) == "Deepgram: connection lost after 1600 bytes (0.20 s) of audio"
    assert (raised.value.close_code, raised.value.retryable) == (1006, True)
    assert (await fake.only_stream()).ended == "dropped"


async def test_a_close_by_deepgram_before_the_hang_up_is_dropped(fake):
    fake.close_after_bytes = (1600, 1011, "NET-0001")
    with pytest.raises(AsrDropped) as raised:
        await run_stream(make_stream(fake), [*frames(10), 1.0, *frames(10)])
    assert str(raised.value) == "Deepgram closed the stream after 1600 bytes (0.20 s) of audio: 1011 NET-0001"
    assert raised.value.close_code == 1011


async def test_a_garbage_reply_is_skipped_and_the_transcription_goes_on(fake, caplog):
    fake.script = [
        Reply(after_bytes=160, message="not json"),
        Reply(after_bytes=320, message='{"type": "Results", "is_final": "maybe"}'),
        Reply(after_bytes=480, message=results("allô", is_final=True, speech_final=True)),
    ]
    events = []
    stream = make_stream(fake, events)
    await run_stream(stream, frames(4))
    assert events == [
        Transcript(text="allô", is_final=True, speech_final=True, confidence=0.98, start=0.0, duration=1.0),
        Metadata(request_id=REQUEST_ID, duration=0.08),
    ]
    assert (stream.replies_rejected, stream.closed_cleanly) == (2, True)
    assert [record.getMessage() for record in caplog.records if record.name == "eko_rtp.asr.deepgram_client"] == [
        "Deepgram reply is not JSON: Expecting value: line 1 column 1 (char 0); reply skipped (1/10)",
        "Deepgram Results: channel is missing; reply skipped (2/10)",
    ]


async def test_a_provider_speaking_only_garbage_is_given_up(fake):
    fake.script = [Reply(after_bytes=160, message=f"garbage {index}") for index in range(10)]
    with pytest.raises(AsrProtocolError) as raised:
        await run_stream(make_stream(fake), [*frames(1), 1.0])
    assert str(raised.value) == ("Deepgram: 10 replies unreadable, the last: "
                                 "Deepgram reply is not JSON: Expecting value: line 1 column 1 (char 0)")


async def test_an_oversized_reply_ends_the_stream(fake):
    fake.script = [Reply(after_bytes=160, message='{"type": "Results", "x": "' + "x" * 70_000 + '"}')]
    with pytest.raises(AsrProtocolError) as raised:
        await run_stream(make_stream(fake), [*frames(1), 1.0])
    assert str(raised.value) == ("Deepgram stream closed after 160 bytes (0.02 s) of audio: "
                                 "1009 Exceeded maximum message size: 65536 bytes")


async def test_a_close_stream_never_answered_ends_within_the_close_timeouts(fake):
    fake.answer_close_stream = False
    stream = make_stream(fake, close_timeout=0.2)
    started = trio.current_time()
    await run_stream(stream, frames(2))  # returns: after the hang-up nothing is raised
    # close_timeout for Deepgram's close after CloseStream; then our own websocket close,
    # which the fake's websocket layer answers at once.
    assert 0.2 <= trio.current_time() - started < 0.2 + MARGIN
    assert stream.closed_cleanly is False
    record = await fake.only_stream()
    assert record.close_stream_at is not None and record.ended == "client-closed"


async def test_a_peer_gone_silent_is_found_by_the_ping_watchdog(fake):
    fake.freeze_after_bytes = 160
    stream = make_stream(fake, settings={"keepalive_seconds": 0.2}, stall_timeout=0.3, close_timeout=0.2)
    started = trio.current_time()
    with pytest.raises(AsrDropped) as raised:
        await run_stream(stream, [*frames(1), 5.0])
    assert str(raised.value) == "Deepgram: no answer to a ping within 0.3 s after 160 bytes of audio"
    # The first ping at 0.2 s, unanswered at 0.5 s; our close frame unanswered 0.2 s later.
    assert 0.7 <= trio.current_time() - started < 0.7 + MARGIN
    assert (await fake.only_stream()).ended == "frozen"


async def test_started_once_connected_and_cancelled_with_the_call(fake):
    stream = make_stream(fake)
    send, receive = trio.open_memory_channel[bytes](10)
    with trio.move_on_after(2.0) as overall:
        async with trio.open_nursery() as call:
            await call.start(stream.run, receive)  # returns once the handshake is done
            assert [record.status for record in fake.streams] == [101]
            await send.send(frames(1)[0])
            with trio.fail_after(1.0):
                while stream.bytes_sent < FRAME:  # bounded by the fail_after
                    await trio.sleep(0.01)
            call.cancel_scope.cancel()  # the call ends without a hang-up: no CloseStream, no wait
    assert not overall.cancelled_caught
    record = await fake.only_stream()
    assert (record.close_stream_at, record.ended, bytes(record.audio)) == (None, "client-closed", frames(1)[0])


async def test_wss_carries_the_same_stream(nursery):
    import ssl

    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    fake = FakeDeepgram(api_key=KEY, ssl_context=server_context)
    await nursery.start(fake.serve)
    fake.script = [Reply(after_bytes=3200, message=results("oui", is_final=True, speech_final=True))]
    events = []
    stream = make_stream(fake, events, ssl_context=client_context)
    assert fake.base_url.startswith("wss://")
    await run_stream(stream, frames(40))
    record = await fake.only_stream()
    assert bytes(record.audio) == b"".join(frames(40))
    assert events == [
        Transcript(text="oui", is_final=True, speech_final=True, confidence=0.98, start=0.0, duration=1.0),
        Metadata(request_id=REQUEST_ID, duration=0.8),
    ]
    assert (stream.closed_cleanly, record.ended) == (True, "closed")
