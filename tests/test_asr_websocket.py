"""The websocket client core: exact bytes out (RFC 6455's examples), bounded and checked bytes in."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest

from eko_rtp.asr import websocket
from eko_rtp.asr.websocket import (
    Accepted,
    ClientConnection,
    Closed,
    LocalProtocolError,
    Message,
    Pong,
    Rejected,
    RemoteProtocolError,
    State,
    accept_key,
)

NONCE = b"the sample nonce"  # RFC 6455 §1.3: its base64 is the example's key
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
MASK = bytes((0x37, 0xFA, 0x21, 0x3D))  # RFC 6455 §5.7
ANSWER = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n")


def fixed_random(size: int) -> bytes:
    """The §1.3 nonce for the key, then the §5.7 masking key over and over."""
    return NONCE if size == 16 else MASK * (size // 4)


def connection(**options) -> ClientConnection:
    return ClientConnection(host="api.example.com:443", resource="/v1/listen?model=nova-2",
                            headers=[(b"Authorization", b"Token k")], random_bytes=fixed_random, **options)


def opened(**options) -> ClientConnection:
    client = connection(**options)
    assert client.receive_data(ANSWER) == [Accepted()]
    return client


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, length: bytes | None = None) -> bytes:
    size = len(payload)
    if length is None:
        length = (bytes((size,)) if size < 126 else bytes((126,)) + struct.pack("!H", size) if size < 1 << 16
                  else bytes((127,)) + struct.pack("!Q", size))
    return bytes(((0x80 if fin else 0) | opcode,)) + length + payload


def test_the_core_does_no_io():
    tree = ast.parse(Path(websocket.__file__).read_text(encoding="utf-8"))
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots & {"trio", "socket", "ssl", "select", "asyncio"} == set()


def test_the_accept_key_of_the_rfc_example():
    assert accept_key(KEY) == ACCEPT


def test_the_handshake_request_is_exact():
    client = connection()
    assert client.key == KEY
    assert client.handshake_request() == (
        b"GET /v1/listen?model=nova-2 HTTP/1.1\r\nHost: api.example.com:443\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Token k\r\n\r\n")
    assert client.state is State.CONNECTING


def test_the_answer_may_come_a_byte_at_a_time_with_frames_behind_it():
    client = connection()
    data = ANSWER + server_frame(0x1, b"Hello")
    events = []
    for index in range(len(data)):
        events += client.receive_data(data[index:index + 1])
    assert events == [Accepted(), Message(data="Hello")]
    assert client.state is State.OPEN


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        # RFC 6455 §5.7: a single-frame masked text message, "Hello".
        (lambda client: client.send_text("Hello"), bytes.fromhex("818537fa213d7f9f4d5158")),
        (lambda client: client.send_binary(b"Hello"), bytes.fromhex("828537fa213d7f9f4d5158")),
        (lambda client: client.send_binary(b""), bytes.fromhex("828037fa213d")),
        (lambda client: client.send_ping(b"Hello"), bytes.fromhex("898537fa213d7f9f4d5158")),
        (lambda client: client.send_close(1000), bytes.fromhex("888237fa213d3412")),
        (lambda client: client.send_binary(bytes(256)),
         bytes.fromhex("82fe0100") + MASK + MASK * 64),
        (lambda client: client.send_binary(bytes(65536)),
         bytes.fromhex("82ff0000000000010000") + MASK + MASK * 16384),
    ],
    ids=["text", "binary", "empty", "ping", "close", "16-bit length", "64-bit length"],
)
def test_frames_out_are_masked_as_the_rfc_shows(send, expected):
    assert send(opened()) == expected


def test_each_frame_takes_the_next_masking_key():
    keys = iter([NONCE, bytes(range(256))])
    client = ClientConnection(host="h", resource="/", random_bytes=lambda size: next(keys))
    client.receive_data(ANSWER)
    assert [client.send_binary(b"")[2:] for _ in range(3)] == [bytes((0, 1, 2, 3)), bytes((4, 5, 6, 7)),
                                                                 bytes((8, 9, 10, 11))]


@pytest.mark.parametrize(
    ("data", "events"),
    [
        # RFC 6455 §5.7's server frames.
        (bytes.fromhex("810548656c6c6f"), [Message(data="Hello")]),
        (bytes.fromhex("010348656c") + bytes.fromhex("80026c6f"), [Message(data="Hello")]),
        (bytes.fromhex("8a0548656c6c6f"), [Pong(payload=b"Hello")]),
        (server_frame(0x2, bytes(256)), [Message(data=bytes(256))]),
        (server_frame(0x2, bytes(65536)), [Message(data=bytes(65536))]),
        # A ping between a message's fragments (§5.4: control frames may be interleaved).
        (bytes.fromhex("010348656c") + bytes.fromhex("8900") + bytes.fromhex("80026c6f"), [Message(data="Hello")]),
    ],
    ids=["text", "fragmented", "pong", "16-bit length", "64-bit length", "ping inside"],
)
def test_frames_in(data, events):
    client = opened()
    assert client.receive_data(data) == events


def test_a_ping_is_answered_with_a_masked_pong():
    client = opened()
    assert client.receive_data(bytes.fromhex("890548656c6c6f")) == []
    assert client.data_to_send() == bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert client.data_to_send() == b""


def test_a_close_from_the_server_is_echoed():
    client = opened()
    assert client.receive_data(server_frame(0x8, struct.pack("!H", 1011) + b"NET-0001")) == [
        Closed(code=1011, reason="NET-0001")]
    assert client.data_to_send() == bytes.fromhex("888237fa213d") + bytes((0x03 ^ 0x37, 0xF3 ^ 0xFA))
    assert client.state is State.CLOSED
    assert client.receive_data(b"more") == []


def test_our_close_then_the_servers():
    client = opened()
    client.send_close(1000)
    assert client.state is State.CLOSING
    assert client.receive_data(bytes.fromhex("8900")) == []  # no pong once our close is out (§5.5.1)
    assert client.receive_data(server_frame(0x8, struct.pack("!H", 1000))) == [Closed(code=1000, reason="")]
    assert (client.state, client.data_to_send()) == (State.CLOSED, b"")


def test_the_end_of_the_stream_is_a_close_without_a_frame():
    client = opened()
    assert client.receive_data(b"") == [Closed(code=1006, reason="")]
    assert client.state is State.CLOSED


def test_an_empty_close_has_no_status():
    client = opened()
    assert client.receive_data(bytes.fromhex("8800")) == [Closed(code=1005, reason="")]
    assert client.data_to_send() == bytes.fromhex("888037fa213d")


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (bytes.fromhex("c100"), 1002, "Reserved bits set, with no extension agreed"),
        (bytes.fromhex("818037fa213d"), 1002, "A masked frame from the server"),
        (bytes.fromhex("8300"), 1002, "Unknown opcode 0x3"),
        (bytes.fromhex("0900"), 1002, "A control frame fragmented or over 125 bytes"),
        (server_frame(0x9, bytes(126)), 1002, "A control frame fragmented or over 125 bytes"),
        (bytes.fromhex("8000"), 1002, "A continuation frame with no message to continue"),
        (bytes.fromhex("0100") + bytes.fromhex("8100"), 1002, "A new message inside a fragmented one"),
        (server_frame(0x1, b"caf\xc3"), 1007, "A text message that is not UTF-8 (byte 3)"),
        (server_frame(0x8, b"\x03"), 1002, "A close frame with a 1-byte payload"),
        (server_frame(0x8, struct.pack("!H", 1006)), 1002, "Close code 1006 may not be sent"),
        (server_frame(0x8, struct.pack("!H", 999)), 1002, "Close code 999 may not be sent"),
        (server_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007, "A close reason that is not UTF-8"),
        # The size is refused from the header alone: nothing of the payload has come.
        (bytes.fromhex("827f") + struct.pack("!Q", 1 << 62), 1009, "Exceeded maximum message size: 1024 bytes"),
        (bytes.fromhex("027e0300") + bytes(768) + bytes.fromhex("807e0200"), 1009,
         "Exceeded maximum message size: 1024 bytes"),
        (b"".join(server_frame(0x1 if index == 0 else 0x0, b"x", fin=False) for index in range(8)), 1009,
         "Exceeded maximum fragment count: 8"),
    ],
    ids=["rsv", "masked", "opcode", "fragmented ping", "long ping", "lone continuation", "interleaved", "utf-8",
         "1-byte close", "close 1006", "close 999", "close reason", "huge frame", "big message", "fragment flood"],
)
def test_a_server_breaking_the_rfc_fails_the_connection(data, code, message):
    client = opened(max_message_size=1024, max_frame_size=1024, max_fragments=8)
    with pytest.raises(RemoteProtocolError) as raised:
        client.receive_data(data)
    assert (str(raised.value), raised.value.close_code) == (message, code)
    assert client.state is State.CLOSED
    # §7.1.7: the close frame that fails the connection, with the code and the words.
    reason = struct.pack("!H", code) + message.encode()
    assert client.data_to_send() == bytes((0x88, 0x80 | len(reason))) + MASK + bytes(
        byte ^ MASK[index % 4] for index, byte in enumerate(reason))


def test_a_frame_over_the_frame_bound_within_the_message_bound():
    client = opened(max_message_size=4096, max_frame_size=1024)
    with pytest.raises(RemoteProtocolError, match="^Exceeded maximum frame size: 1024 bytes$"):
        client.receive_data(bytes.fromhex("827e0800"))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (ANSWER.replace(ACCEPT.encode(), b"x3JJHMbDL1EzLkh9GBhXDw=="),
         "websocket handshake: Sec-WebSocket-Accept 'x3JJHMbDL1EzLkh9GBhXDw==' does not match our key"),
        (ANSWER.replace(b"Sec-WebSocket-Accept", b"X-Accept"), "websocket handshake: the 101 answer has no "
                                                                 "Sec-WebSocket-Accept"),
        (ANSWER.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
         "websocket handshake: the 101 answer has no 'Upgrade: websocket'"),
        (ANSWER.replace(b"Connection: Upgrade", b"Connection: close"),
         "websocket handshake: the 101 answer has no 'Connection: Upgrade'"),
        (ANSWER.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
         "websocket handshake: the server chose an extension we did not offer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "websocket handshake: not an HTTP/1.1 status line: 'SSH-2.0-OpenSSH_9.6'"),
        (b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n", "websocket handshake: a malformed header line: 'no colon here'"),
        (b"HTTP/1.1 101 OK\r\nX: " + b"a" * 20_000, "websocket handshake: the answer's head is over 16384 bytes"),
    ],
    ids=["wrong accept", "no accept", "no upgrade", "no connection", "extension", "not http", "bad header",
         "endless head"],
)
def test_a_bad_handshake_answer_is_refused(answer, message):
    client = connection()
    with pytest.raises(RemoteProtocolError) as raised:
        client.receive_data(answer)
    assert str(raised.value) == message
    assert client.state is State.CLOSED


def test_a_refusal_comes_with_its_headers_and_body():
    client = connection()
    head = b"HTTP/1.1 401 Unauthorized\r\ndg-error: Invalid credentials.\r\nContent-Length: 10\r\n\r\n"
    assert client.receive_data(head + b"01234") == []
    assert client.receive_data(b"56789") == [Rejected(status=401, headers=(
        (b"dg-error", b"Invalid credentials."), (b"Content-Length", b"10")), body=b"0123456789")]
    assert client.state is State.CLOSED


def test_a_refusal_without_a_length_ends_with_the_stream_and_its_body_is_cut():
    client = connection()
    assert client.receive_data(b"HTTP/1.1 503 Busy\r\n\r\n" + b"x" * 5000) == []
    [rejected] = client.receive_data(b"")
    assert (rejected.status, rejected.body) == (503, b"x" * 4096)


def test_the_end_of_the_stream_before_an_answer():
    client = connection()
    with pytest.raises(RemoteProtocolError, match="the server closed the connection before answering"):
        client.receive_data(b"")


@pytest.mark.parametrize(
    ("act", "message"),
    [
        (lambda client: client.send_binary(b"x"), "websocket: cannot send a binary message while connecting"),
        (lambda client: client.send_close(), "websocket: cannot send a close while connecting"),
    ],
)
def test_sending_before_the_handshake_is_our_bug(act, message):
    with pytest.raises(LocalProtocolError) as raised:
        act(connection())
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("act", "message"),
    [
        (lambda client: client.send_ping(bytes(126)), "websocket: a ping payload is 125 bytes at most, got 126"),
        (lambda client: client.send_close(1006), "websocket: 1006 is not a close code one may send"),
        (lambda client: client.send_close(1000, "x" * 124), "websocket: a close reason is 123 bytes at most, got 124"),
    ],
)
def test_sends_that_break_the_rfc_are_refused(act, message):
    with pytest.raises(LocalProtocolError) as raised:
        act(opened())
    assert str(raised.value) == message


def test_nothing_may_be_sent_after_our_close():
    client = opened()
    client.send_close()
    with pytest.raises(LocalProtocolError, match="^websocket: cannot send a text message while closing$"):
        client.send_text("KeepAlive")
