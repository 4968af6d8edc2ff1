"""Fuzzing the SIP message parser and the TCP framer: only SipParseError escapes, and what parses round-trips."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer
from eko_rtp.sip.message import Request, parse_message_untrusted

from fuzzing import FUZZ, only_raises
from sip_grammar import messages, mutate, mutations, requests, responses


def check_error(error: SipParseError) -> None:
    """What the user agent turns into a response must be one: a status, and a one-line printable reason."""
    assert 400 <= error.status <= 699, error
    assert error.reason.isprintable(), error
    assert error.request is None or isinstance(error.request, Request)


def parse(data: bytes, transport: str):
    try:
        return parse_message_untrusted(data, transport=transport)
    except SipParseError as error:
        check_error(error)
        return None


@FUZZ
@hypothesis.given(st.binary(max_size=2000), st.sampled_from(["udp", "tcp"]))
def test_random_bytes(data, transport):
    parse(data, transport)


@FUZZ
@hypothesis.given(messages, st.sampled_from(["udp", "tcp"]))
def test_grammar_messages_parse_or_refuse_and_round_trip(data, transport):
    message = parse(data, transport)
    if message is None:
        return
    # The typed §8.1.1 fields are those of the headers (parsed once, read everywhere).
    headers = message.headers
    assert message.call_id == headers.get("Call-ID")
    assert message.cseq is not None and message.from_ is not None and message.to is not None
    assert message.vias and len(message.vias) >= len(headers.get_all("Via"))
    # message.py: "a parse of bytes(message) then equals the message" (over a stream too:
    # serialising always writes Content-Length).
    again = parse_message_untrusted(bytes(message), transport="tcp")
    assert again == message
    assert again.vias == message.vias and again.cseq == message.cseq and again.to == message.to


@st.composite
def streams(draw) -> list[bytes]:
    """A TCP byte stream of messages and keepalives, cut into the reads a socket might return."""
    parts = draw(st.lists(st.one_of(requests(), responses(), st.sampled_from([b"\r\n\r\n", b"\r\n", b"\r\n\r\n\r\n"])),
                          min_size=1, max_size=4))
    stream = b"".join(parts)
    if draw(st.integers(0, 3)) == 0:
        stream = mutate(stream, draw(mutations))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


def frame(chunks: list[bytes], max_message_size: int) -> tuple[list[bytes], int, SipParseError | None]:
    framer = StreamFramer(max_message_size=max_message_size)
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out += framer.feed(chunk)
            assert framer.pending <= max_message_size + len(chunk)
    except SipParseError as error:
        check_error(error)
        return out, framer.take_pings(), error
    return out, framer.take_pings(), None


@FUZZ
@hypothesis.given(streams(), st.sampled_from([65536, 1024, 300]))
def test_framer_cuts_the_same_messages_whatever_the_reads(chunks, max_message_size):
    messages_read, pings, error = frame(chunks, max_message_size)
    at_once, pings_at_once, error_at_once = frame([b"".join(chunks)], max_message_size)
    # An unframeable stream is unframeable however it arrives, and a framed one is cut
    # the same way: reads must not change what the peer said.
    assert (error is None) == (error_at_once is None), (error, error_at_once)
    if error is None:
        assert messages_read == at_once
        assert pings == pings_at_once
    else:
        assert at_once == [] or messages_read[:len(at_once)] == at_once
    stream = b"".join(chunks)
    for message in messages_read:
        assert message in stream
        assert len(message) <= max_message_size
        parse(message, "tcp")


@FUZZ
@hypothesis.given(st.lists(st.binary(max_size=300), max_size=6))
def test_framer_random_reads(chunks):
    framer = StreamFramer(max_message_size=1024)
    with only_raises(SipParseError):
        for chunk in chunks:
            for message in framer.feed(chunk):
                parse(message, "tcp")


@FUZZ
@hypothesis.given(streams(), st.lists(st.floats(0, 10), min_size=8, max_size=8), st.sampled_from([1.0, 5.0]),
                  st.sampled_from([0.5, 2.0]))
def test_framer_reads_one_message_at_a_time_and_keeps_its_deadlines(chunks, gaps, idle, headers):
    """The shell's way (receive_data, then next_message until None) cuts what feed cuts; a
    fault repeats on every later call; the deadline is the one ``expired`` goes by."""
    framer = StreamFramer(idle_timeout=idle, header_timeout=headers, now=0.0)
    now, out, error = 0.0, [], None
    for chunk, gap in zip(chunks, gaps):
        now += gap
        deadline = framer.deadline
        assert deadline > -1 and deadline == deadline  # finite, not NaN
        assert (framer.expired(now) is None) == (now < deadline), (now, deadline, framer.expired(now))
        framer.receive_data(chunk, now)
        try:
            while (message := framer.next_message()) is not None:
                out.append(message)
        except SipParseError as caught:
            check_error(caught)
            error = caught
            break
    if error is not None:
        for _ in range(2):
            try:
                framer.next_message()
                raise AssertionError("an unframeable stream gave a message after its fault")
            except SipParseError as again:
                assert (again.status, again.reason) == (error.status, error.reason)
    # feed() cuts the same (it loses the messages before a fault in the read that has it).
    fed, _, fed_error = frame(chunks[:len(gaps)], 65536)
    assert (error is None) == (fed_error is None)
    assert out == fed if error is None else out[:len(fed)] == fed
