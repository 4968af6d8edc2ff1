"""The Deepgram stream against a hostile server on loopback: each misdeed a clear error, bounded in time.

The server here is raw bytes over TCP (no websocket library): it reads the
handshake, answers with what the test scripts, and holds the connection open, so a
client that waited for more would hang (each test runs under ``fail_after``).
"""

from __future__ import annotations

import struct

import pytest
import trio

from eko_rtp.asr.deepgram_api import AsrSettings
from eko_rtp.asr.deepgram_client import DeepgramStream
from eko_rtp.asr.errors import AsrError, AsrProtocolError, AsrUnavailable
from eko_rtp.asr.websocket import accept_key

BOUND = 3.0  # seconds: every test ends well within


class HostileServer:
    """Answers every handshake with ``answer(key)`` then ``frames``, then holds the line."""

    def __init__(self, answer, frames: bytes = b"") -> None:
        self.answer = answer
        self.frames = frames
        self.received = bytearray()
        self.port: int | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        request = bytearray()
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some()
            if not data:
                return
            request += data
        key = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        await stream.send_all(self.answer(key) + self.frames)
        while data := await stream.receive_some():
            self.received += data


def switching(key: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")


async def run_against(nursery, server: HostileServer) -> AsrError:
    await nursery.start(server.serve)
    stream = DeepgramStream(settings=AsrSettings(base_url=f"ws://127.0.0.1:{server.port}"), api_key="k",
                            on_event=lambda event: None, connect_timeout=1.0, close_timeout=0.2)
    send, receive = trio.open_memory_channel[bytes](10)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as feeding:
            feeding.start_soon(send.send, b"\xff" * 160)
            with pytest.raises(AsrError) as raised:
                await stream.run(receive)
            feeding.cancel_scope.cancel()
    return raised.value


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (lambda key: switching(key).replace(accept_key(key).encode(), b"x3JJHMbDL1EzLkh9GBhXDw=="),
         AsrProtocolError, "websocket handshake: Sec-WebSocket-Accept 'x3JJHMbDL1EzLkh9GBhXDw==' does not match "
                           "our key"),
        (lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", AsrProtocolError,
         "Deepgram answered the handshake with 200: ok"),
        (lambda key: b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"a" * 20_000, AsrProtocolError,
         "websocket handshake: the answer's head is over 16384 bytes"),
    ],
    ids=["bad accept key", "no 101", "endless head"],
)
async def test_a_bad_handshake(nursery, answer, kind, message):
    server = HostileServer(answer)
    error = await run_against(nursery, server)
    assert type(error) is kind
    assert str(error).endswith(message)


async def test_a_handshake_never_finished_is_bounded_by_the_connect_timeout(nursery):
    server = HostileServer(lambda key: b"HTTP/1.1 101 Switching Protocols\r\n")
    error = await run_against(nursery, server)
    assert type(error) is AsrUnavailable
    assert str(error) == f"Deepgram at ws://127.0.0.1:{server.port}: no handshake within 1 s"


@pytest.mark.parametrize(
    ("frames", "code", "words"),
    [
        (bytes.fromhex("827f") + struct.pack("!Q", 1 << 40), 1009, "Exceeded maximum message size: 65536 bytes"),
        (b"".join(bytes.fromhex("0101" if index == 0 else "0001") + b"x" for index in range(100)), 1009,
         "Exceeded maximum fragment count: 64"),
        (bytes.fromhex("8102") + b"\xc3\x28", 1007, "A text message that is not UTF-8 (byte 0)"),
        (bytes.fromhex("818037fa213d"), 1002, "A masked frame from the server"),
    ],
    ids=["oversized frame", "fragment flood", "bad utf-8", "masked frame"],
)
async def test_a_bad_frame_fails_the_stream_with_a_close(nursery, frames, code, words):
    server = HostileServer(switching, frames)
    error = await run_against(nursery, server)
    assert type(error) is AsrProtocolError
    assert error.close_code == code
    assert str(error).endswith(f"of audio: {code} {words}")
    # The close frame that fails the connection went out (masked: its length byte says 0x80 | size).
    await trio.sleep(0.05)
    assert bytes((0x88, 0x80 | (2 + len(words)))) in server.received
