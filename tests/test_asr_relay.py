"""The recognizer relay's protocol (eko_rtp/asr/relay_protocol.py) as tables, and both of its
shells over a real socket pair: the relay (eko_rtp/asr/relay_process.py) driving fake
recognizer streams, and the media side (eko_rtp/asr/relay_client.py) driving a real relay
process whose recognizer is refused at once (no endpoint listens)."""

from __future__ import annotations

import socket
import struct
import sys

import msgpack
import pytest
import trio
import trio.testing

from eko_rtp.asr.deepgram_api import AsrSettings, SpeechStarted, Transcript, UtteranceEnd
from eko_rtp.asr.errors import AsrDropped, AsrError, AsrUnauthorized, AsrUnavailable
from eko_rtp.asr.relay_client import WRITE_INTERVAL, AsrRelay, RelayStream, relay_cpus
from eko_rtp.asr.relay_process import Relay
from eko_rtp.call.ears import CallerAudio
from eko_rtp.asr.relay_protocol import (
    FROM_RELAY,
    TO_RELAY,
    Audio,
    Close,
    End,
    Event,
    Open,
    RelayProtocolError,
    RelayReader,
    encode,
    encode_audio,
)

SETTINGS = AsrSettings(base_url="ws://127.0.0.1:9", keywords=(("Eko", 2.0), ("résiliation", 1.5)), endpointing_ms=700)
TRANSCRIPT = Transcript(text="oui", is_final=True, speech_final=True, confidence=0.93, start=1.5, duration=0.5)


# -- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "side"), [
    (Open(stream=1, settings=SETTINGS, api_key="secret"), TO_RELAY),
    (Audio(stream=7, audio=b"\xff" * 800), TO_RELAY),
    (Close(stream=7), TO_RELAY),
    (Event(stream=3, event=TRANSCRIPT), FROM_RELAY),
    (Event(stream=3, event=SpeechStarted(timestamp=0.25)), FROM_RELAY),
    (Event(stream=3, event=UtteranceEnd(last_word_end=2.0)), FROM_RELAY),
    (End(stream=3, error=None, seconds_sent=12.5), FROM_RELAY),
])
def test_every_message_round_trips_even_one_byte_at_a_time(message, side):
    data = encode(message)
    reader = RelayReader(side)
    got = []
    for index in range(len(data)):
        got += reader.feed(data[index:index + 1])
    assert got == [message]


def test_an_end_with_an_error_keeps_its_type_message_and_status():
    data = encode(End(stream=4, error=AsrUnauthorized("Deepgram refused the API key (401)", status=401),
                      seconds_sent=0.0))
    [end] = RelayReader(FROM_RELAY).feed(data)
    assert type(end.error) is AsrUnauthorized
    assert (str(end.error), end.error.status, end.seconds_sent) == ("Deepgram refused the API key (401)", 401, 0.0)


def test_audio_encodes_the_same_with_or_without_the_object():
    assert encode_audio(9, b"abc") == encode(Audio(stream=9, audio=b"abc"))


def test_the_key_is_never_in_a_messages_repr():
    assert "secret" not in repr(Open(stream=1, settings=SETTINGS, api_key="secret"))


def pack(*body) -> bytes:
    return msgpack.packb(list(body), use_bin_type=True)


@pytest.mark.parametrize(("side", "data", "error"), [
    (FROM_RELAY, encode_audio(1, b"x"), "message type 1 is not for this side"),
    (TO_RELAY, encode(End(stream=1, error=None, seconds_sent=0)), "message type 4 is not for this side"),
    (TO_RELAY, msgpack.packb({"type": 1}), "a relay message must be [type, stream id, ...], not {'type': 1}"),
    (TO_RELAY, pack(1, True, b""), "a relay message must be [type, stream id, ...], not [1, True, b'']"),
    (TO_RELAY, pack(1, 2, "text, not bytes"), "malformed relay message of type 1: [1, 2, 'text, not bytes']"),
    (TO_RELAY, pack(0, 2, {"model": "nova-2", "colour": "blue"}, "k"), "unknown settings ['colour']"),
    (TO_RELAY, pack(0, 2, {"encoding": "opus"}, "k"),
     "settings refused: AsrSettings.encoding must be mulaw (PCMU) or alaw (PCMA), got 'opus'"),
    (TO_RELAY, pack(0, 2, [], "k"), "settings must be a map, not list"),
    (FROM_RELAY, pack(3, 1, "Metadata", {}), "malformed relay message of type 3: [3, 1, 'Metadata', {}]"),
    (FROM_RELAY, pack(3, 1, "Transcript", {"text": "oui"}), "bad Transcript event: "),
    (FROM_RELAY, pack(4, 1, "SystemExit", "", 0.0, None), "malformed relay message of type 4"),
    (FROM_RELAY, b"\xc1", "unreadable relay message"),
])
def test_what_breaks_the_protocol_is_refused_with_why(side, data, error):
    with pytest.raises(RelayProtocolError) as caught:
        RelayReader(side).feed(data)
    assert str(caught.value).startswith(error)


def test_a_message_over_the_limit_is_refused_before_it_is_buffered_whole():
    reader = RelayReader(TO_RELAY, max_message=1000)
    with pytest.raises(RelayProtocolError, match="unreadable relay message|longer than the limit"):
        reader.feed(encode_audio(1, b"x" * 5000))


# -- the relay, with fake recognizer streams -------------------------------------------------


class FakeStream:
    """A recognizer stream that records its audio, says one transcript, and ends as told."""

    made: list["FakeStream"] = []

    def __init__(self, *, settings, api_key, on_event, fail: AsrError | None = None):
        self.settings, self.api_key, self.on_event = settings, api_key, on_event
        self.audio = bytearray()
        self.seconds_sent = 0.0
        FakeStream.made.append(self)

    async def run(self, audio):
        async for batch in audio:
            self.audio += batch
            self.seconds_sent = len(self.audio) / 8000
            if self.audio.startswith(b"fail"):
                raise AsrDropped("Deepgram: connection lost")
            self.on_event(TRANSCRIPT)


async def exchange(messages: list, *, expect: int) -> list:
    """Send ``messages`` to a Relay over a memory stream pair; the first ``expect`` replies."""
    ours, theirs = trio.testing.memory_stream_pair()
    reader = RelayReader(FROM_RELAY)
    replies: list = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Relay(theirs, stream_factory=FakeStream).run)
            for message in messages:
                await ours.send_all(encode(message))
            while len(replies) < expect:
                replies += reader.feed(await ours.receive_some(4096))
            await ours.aclose()  # the media process goes: the relay ends
    return replies


async def test_the_relay_runs_a_stream_per_open_and_reports_its_events_and_end():
    FakeStream.made = []
    replies = await exchange([Open(stream=1, settings=SETTINGS, api_key="key one"), Audio(stream=1, audio=b"a" * 800),
                              Audio(stream=1, audio=b"b" * 800), Close(stream=1)], expect=3)
    assert replies == [Event(stream=1, event=TRANSCRIPT), Event(stream=1, event=TRANSCRIPT),
                       End(stream=1, error=None, seconds_sent=0.2)]
    [stream] = FakeStream.made
    assert (stream.settings, stream.api_key, bytes(stream.audio)) == (SETTINGS, "key one", b"a" * 800 + b"b" * 800)


async def test_a_failed_stream_ends_with_its_error_and_the_others_go_on():
    FakeStream.made = []
    replies = await exchange([Open(stream=1, settings=SETTINGS, api_key="one"), Open(stream=2, settings=SETTINGS, api_key="two"),
                              Audio(stream=1, audio=b"fail"), Audio(stream=1, audio=b"after the failure"),
                              Audio(stream=2, audio=b"ok"), Close(stream=2)], expect=3)
    ends = {reply.stream: reply for reply in replies if isinstance(reply, End)}
    assert type(ends[1].error) is AsrDropped and str(ends[1].error) == "Deepgram: connection lost"
    assert ends[2].error is None
    assert Event(stream=2, event=TRANSCRIPT) in replies
    # The relay starts its streams' tasks in no set order: each is known by its key here.
    audio = {stream.api_key: bytes(stream.audio) for stream in FakeStream.made}
    assert audio == {"one": b"fail", "two": b"ok"}  # nothing after the failed one's end


async def test_a_stream_opened_twice_ends_the_relay():
    ours, theirs = trio.testing.memory_stream_pair()
    relay = Relay(theirs, stream_factory=FakeStream)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            await ours.send_all(encode(Open(stream=1, settings=SETTINGS, api_key="k")) * 2)
            # The relay gives up on a media process that breaks the protocol: it stops reading.
            while True:
                await trio.sleep(0.01)
                if not nursery.child_tasks:
                    break


# -- the media side, with a real relay process ----------------------------------------------------------


async def test_through_a_real_relay_process_a_refused_recognizer_fails_the_call_stream_with_its_type():
    """Nothing listens at the base URL: the relay's DeepgramStream fails to connect, and the
    call's RelayStream raises the same AsrUnavailable a stream in the media process would."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # a port nobody listens on
    relay = AsrRelay(cpus=None)
    events = []
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        assert relay.up and relay.starts == 1
        audio = CallerAudio(vad=None, on_speech=print).open_asr_channel()
        stream = relay.stream(settings=AsrSettings(base_url=f"ws://127.0.0.1:{port}"), api_key="k",
                              on_event=events.append)
        with trio.fail_after(10):
            with pytest.raises(AsrUnavailable, match=f"127.0.0.1:{port}"):
                await stream.run(audio)
        nursery.cancel_scope.cancel()
    assert events == []


async def test_a_relay_that_is_not_up_fails_new_streams_at_once():
    relay = AsrRelay(cpus=None, command=(sys.executable, "-c", "import sys; sys.exit(3)"), restart_delay=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        with trio.fail_after(5):
            while relay.up:  # the process exits at once
                await trio.sleep(0.01)
        audio = CallerAudio(vad=None, on_speech=print).open_asr_channel()
        with pytest.raises(AsrUnavailable, match="the recognizer relay is not running"):
            await relay.stream(settings=SETTINGS, api_key="k", on_event=print).run(audio)
        nursery.cancel_scope.cancel()


def test_the_relay_runs_on_the_cpus_the_server_is_not_pinned_to(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert relay_cpus("") == "1,2,3"
    assert relay_cpus("3") == "3"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert relay_cpus("") is None


async def test_writes_to_the_relay_go_at_most_one_per_interval_with_all_that_waited(autojump_clock):
    # Each write wakes the relay on its CPU: what is queued meanwhile waits for the interval.
    relay = AsrRelay(cpus=None)
    sent = []

    class Connection:
        async def send_all(self, data: bytes) -> None:
            sent.append((trio.current_time(), data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay._write, Connection(), nursery.cancel_scope)
        started = trio.current_time()
        relay._queue(b"a")
        relay._queue(b"b")
        await trio.sleep(0.001)
        relay._queue(b"c")
        await trio.sleep(0.002)
        relay._queue(b"d")
        await trio.sleep(0.050)
        relay._queue(b"e")  # long after the last write: goes at once
        await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert [(round(at - started, 4), data) for at, data in sent] == [
        (0.0, b"ab"), (WRITE_INTERVAL, b"cd"), (0.053, b"e")]


def rtp_packet(sequence: int) -> bytes:
    """An RTP datagram with 160 octets of µ-law, as the ears get them."""
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 0x1234) + bytes([sequence]) * 160


class FakeRelay:
    """The media side's view of the relay, for one RelayStream: records what the stream asks."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.closed: list[int] = []
        self.stream = None

    def open(self, stream, settings, api_key) -> int:
        self.stream = stream
        return 7

    def send_audio(self, ident: int, batch: bytes) -> bool:
        self.sent.append(batch)
        return True

    def close(self, ident: int) -> None:
        self.closed.append(ident)

    def forget(self, ident: int) -> None:
        pass


@pytest.mark.parametrize("error", [None, AsrDropped("the provider went away")])
async def test_a_stream_the_relay_ends_mid_call_returns_at_once_as_an_in_process_one_would(error):
    relay = FakeRelay()
    ears = CallerAudio(vad=None, on_speech=print)
    audio = ears.open_asr_channel()
    stream = RelayStream(relay, settings=SETTINGS, api_key="k", on_event=print)
    outcome = []

    async def run():
        try:
            await stream.run(audio)
            outcome.append("returned")
        except AsrError as caught:
            outcome.append(caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        for sequence in range(5):  # one batch, straight to the relay
            ears.feed(sequence, rtp_packet(sequence), "PCMU", sequence * 0.02)
        assert len(relay.sent) == 1
        relay.stream.end(error)  # the call goes on; its recognizer stream does not
        with trio.fail_after(1):
            while not outcome:
                await trio.sleep(0.001)
    assert outcome == ["returned" if error is None else error]


async def test_the_audio_streamed_is_the_relay_s_count_once_it_ended_the_stream():
    relay = FakeRelay()
    ears = CallerAudio(vad=None, on_speech=print)
    audio = ears.open_asr_channel()
    stream = RelayStream(relay, settings=SETTINGS, api_key="k", on_event=print)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.run, audio)
        await trio.testing.wait_all_tasks_blocked()
        for sequence in range(5):  # one batch of 100 ms queued for the relay
            ears.feed(sequence, rtp_packet(sequence), "PCMU", sequence * 0.02)
        assert stream.seconds_sent == pytest.approx(0.1)  # ours, while the stream runs
        relay.stream.end(None, 0.06)  # the relay sent less than we queued (it dropped some)
    assert stream.seconds_sent == 0.06
