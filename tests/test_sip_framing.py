"""TCP framing: messages cut by Content-Length, keepalive pings counted, unframeable streams refused."""

from __future__ import annotations

import pathlib

import pytest

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer

INVITE = (pathlib.Path(__file__).parent / "sip_torture" / "captured_sipp_invite.sip").read_bytes()


def test_messages_split_across_and_within_reads():
    framer = StreamFramer()
    stream = INVITE + b"\r\n" + INVITE
    cut = 100
    assert framer.feed(stream[:cut]) == []
    assert framer.feed(stream[cut:len(INVITE) - 1]) == []
    assert framer.feed(stream[len(INVITE) - 1:]) == [INVITE, INVITE]
    assert framer.take_pings() == 0


def test_byte_at_a_time():
    framer = StreamFramer()
    out = []
    for index in range(len(INVITE)):
        out += framer.feed(INVITE[index:index + 1])
    assert out == [INVITE]


@pytest.mark.parametrize("chunks, pings", [
    ([b"\r\n\r\n"], 1),
    ([b"\r\n", b"\r\n"], 1),
    ([b"\r", b"\n\r", b"\n"], 1),
    ([b"\r\n\r\n\r\n\r\n"], 2),
    ([b"\r\n"], 0),
])
def test_keepalive_pings_are_counted_once(chunks, pings):
    framer = StreamFramer()
    for chunk in chunks:
        assert framer.feed(chunk) == []
    assert framer.take_pings() == pings
    assert framer.take_pings() == 0
    assert framer.feed(INVITE) == [INVITE]


@pytest.mark.parametrize("data, status, reason", [
    (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 400, "Content-Length is required over a stream transport"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nl: ten\r\n\r\n", 400, "bad Content-Length 'ten' on the stream"),
    (b"\nOPTIONS", 400, "bare CR or LF between messages on the stream"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2000\r\n\r\n", 513,
     "message of 2049 bytes exceeds the 1024-byte limit"),
    (b"X" * 1025, 513, "headers longer than the 1024-byte limit"),
])
def test_unframeable_streams(data, status, reason):
    framer = StreamFramer(max_message_size=1024)
    with pytest.raises(SipParseError) as caught:
        framer.feed(data)
    assert (caught.value.status, caught.value.reason) == (status, reason)
