"""TCP framing: messages cut by Content-Length, keepalive pings counted, unframeable streams refused,
deadlines kept (idle, headers), and work linear in the bytes fed."""

from __future__ import annotations

import math
import pathlib
import time

import pytest

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import MessageTooLarge, StreamFramer, StreamTimeout

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
    (b"X" * 1025, 513, "header block exceeds the 1024-byte limit"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"x" * 1020 + b"\r\nl: 0\r\n\r\n", 513,
     "header block exceeds the 1024-byte limit"),
])
def test_unframeable_streams(data, status, reason):
    framer = StreamFramer(max_message_size=1024)
    with pytest.raises(SipParseError) as caught:
        framer.feed(data)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_a_fault_comes_after_the_messages_before_it_and_stays():
    framer = StreamFramer(max_message_size=1024)
    framer.receive_data(INVITE + b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n" + INVITE)
    assert framer.next_message() == INVITE
    for _ in range(2):  # the stream stays unframeable: nothing after the fault is handed out
        with pytest.raises(SipParseError, match="Content-Length is required over a stream transport"):
            framer.next_message()
    framer.receive_data(INVITE)
    with pytest.raises(SipParseError, match="Content-Length is required"):
        framer.next_message()


@pytest.mark.parametrize("head, too_large", [
    # The headers are complete and within the limit: a 513 can be addressed from them.
    (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\nContent-Length: 2000\r\n\r\n", True),
    # A header block alone over the limit is never handed on.
    (b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"x" * 1100 + b"\r\nContent-Length: 0\r\n\r\n", False),
])
def test_a_message_too_large_carries_its_header_block_when_it_fits(head, too_large):
    framer = StreamFramer(max_message_size=1024)
    framer.receive_data(head + b"body")
    with pytest.raises(MessageTooLarge) as caught:
        framer.next_message()
    assert caught.value.status == 513
    assert caught.value.head == (head if too_large else None)


# (time, bytes read then) -> (messages out, deadline after, which deadline has passed at that time)
IDLE, HEADERS = StreamTimeout.IDLE, StreamTimeout.HEADERS
OPTIONS = b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n"


@pytest.mark.parametrize("steps", [
    pytest.param([(0.0, None, 0, 100.0, None), (99.9, None, 0, 100.0, None), (100.0, None, 0, 100.0, IDLE)],
                 id="silent-connection-idles-out"),
    pytest.param([(0.0, None, 0, 100.0, None), (60.0, OPTIONS, 1, 160.0, None), (160.0, None, 0, 160.0, IDLE)],
                 id="a-message-restarts-the-idle-clock"),
    pytest.param([(90.0, b"\r\n\r\n", 0, 190.0, None), (180.0, b"\r\n", 0, 280.0, None),
                  (200.0, b"\r\n", 0, 300.0, None)], id="keepalives-count-as-activity"),
    pytest.param([(5.0, b"OPT", 0, 15.0, None), (14.0, b"IONS sip:a@b", 0, 15.0, None),
                  (15.0, None, 0, 15.0, HEADERS)], id="slowloris-headers-time-out"),
    pytest.param([(5.0, b"OPT", 0, 15.0, None), (6.0, b"IONS sip:a@b SIP/2.0\r\nl: 4\r\n\r\n", 0, 100.0, None),
                  (99.0, b"abc", 0, 100.0, None), (100.0, None, 0, 100.0, IDLE)],
                 id="a-body-still-coming-is-bounded-by-the-idle-clock"),
    pytest.param([(5.0, OPTIONS + b"OPT", 1, 15.0, None),
                  (14.0, b"IONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n", 1, 114.0, None)],
                 id="the-next-message-starts-its-own-header-clock"),
])
def test_deadlines(steps):
    framer = StreamFramer(idle_timeout=100.0, header_timeout=10.0, now=0.0)
    for now, data, count, deadline, expired in steps:
        if data is not None:
            framer.receive_data(data, now)
        messages = []
        while (message := framer.next_message()) is not None:
            messages.append(message)
        assert (len(messages), framer.deadline, framer.expired(now)) == (count, deadline, expired)


def test_no_timeouts_by_default():
    framer = StreamFramer()
    framer.receive_data(b"OPT", 5.0)
    assert framer.next_message() is None
    assert (framer.deadline, framer.expired(1e12)) == (math.inf, None)


def test_headers_fed_a_byte_at_a_time_cost_linear_time():
    # The empty-line search resumes where it stopped: the whole buffer searched on
    # every read made a 63 KiB header fed byte by byte cost a square of its length.
    def cost(size: int) -> float:
        head = b"OPTIONS sip:a@b SIP/2.0\r\nX-Padding: " + b"x" * size
        best = math.inf
        for _ in range(3):
            framer = StreamFramer(max_message_size=1 << 20)
            started = time.perf_counter()
            for index in range(len(head)):
                framer.feed(head[index:index + 1])
            best = min(best, time.perf_counter() - started)
        return best

    ratio = cost(60 * 1024) / cost(6 * 1024)
    assert ratio < 30, f"10 times the bytes cost {ratio:.0f} times the time (linear: about 10)"
