"""RFC 4733 telephone-events to digits, and SIP INFO dtmf-relay bodies."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.media.dtmf import (
    DtmfDetector,
    DtmfError,
    TelephoneEvent,
    digit_for_event,
    parse_dtmf_relay_untrusted,
    parse_info_dtmf_untrusted,
    parse_telephone_event_untrusted,
    peek_telephone_event_untrusted,
)


def payload(event: int, *, end: bool = False, volume: int = 10, duration: int = 400) -> bytes:
    return bytes((event, (0x80 if end else 0) | volume)) + duration.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("05 0A 00A0"), TelephoneEvent(event=5, end=False, volume=10, duration=160)),
        (bytes.fromhex("0B 8A 0320"), TelephoneEvent(event=11, end=True, volume=10, duration=800)),
        (bytes.fromhex("0A BF FFFF"), TelephoneEvent(event=10, end=True, volume=63, duration=0xFFFF)),
        # The R bit is reserved and ignored; extra (redundant) blocks follow the first.
        (bytes.fromhex("01 4A 00A0 01 8A 0320"), TelephoneEvent(event=1, end=False, volume=10, duration=160)),
    ],
)
def test_parse_telephone_event(data, expected):
    assert parse_telephone_event_untrusted(data) == expected


def test_parse_truncated_telephone_event():
    with pytest.raises(DtmfError) as caught:
        parse_telephone_event_untrusted(b"\x05\x0a\x00")
    assert str(caught.value) == "telephone-event payload truncated: 3 octets, needs 4"


@pytest.mark.parametrize(
    ("event", "digit"),
    [(0, "0"), (9, "9"), (10, "*"), (11, "#"), (12, "A"), (15, "D"), (16, None), (32, None), (255, None)],
)
def test_digit_for_event(event, digit):
    assert digit_for_event(event) == digit


def run(detector: DtmfDetector, packets) -> list[str]:
    """Feed (event, end, duration, timestamp, marker) packets; the digits reported."""
    digits = []
    for event, end, duration, timestamp, marker in packets:
        parsed = parse_telephone_event_untrusted(payload(event, end=end, duration=duration))
        digit = detector.feed(event=parsed, rtp_timestamp=timestamp, marker=marker)
        if digit is not None:
            digits.append(digit)
    return digits


def press(event: int, timestamp: int, *, marker: bool = True, updates: int = 3, duration_step: int = 400):
    """A key press as senders emit it: updates, then three redundant end packets."""
    packets = [(event, False, duration_step * (index + 1), timestamp, marker and index == 0) for index in range(updates)]
    final = duration_step * (updates + 1)
    packets += [(event, True, final, timestamp, False)] * 3
    return packets


@pytest.mark.parametrize(
    ("packets", "digits"),
    [
        # One digit with three redundant end packets: counted once.
        (press(5, 1000), ["5"]),
        # The carrier omits the marker bit altogether.
        (press(7, 1000, marker=False), ["7"]),
        # Two presses of the same digit: a new start timestamp is a new press.
        (press(1, 1000) + press(1, 9000), ["1", "1"]),
        # Different digits back to back.
        (press(1, 1000) + press(10, 5000) + press(11, 9000), ["1", "*", "#"]),
        # Only the end packets arrive (the updates were lost).
        (press(3, 1000)[3:], ["3"]),
        # Late packet of the earlier event after the next one started: ignored.
        (press(4, 1000)[:2] + press(6, 5000)[:2] + [(4, True, 1600, 1000, False)] + press(6, 5000)[2:], ["4", "6"]),
        # The timestamp wraps at 2^32 between presses.
        (press(8, 0xFFFFFE00) + press(9, 0x00000300), ["8", "9"]),
        # A press whose packets straddle the wrap keeps its start timestamp.
        (press(2, 0xFFFFFFF0) + press(2, 0x00001000), ["2", "2"]),
        # Non-DTMF events (16 = flash) give no digit and are not remembered as one.
        (press(16, 1000) + press(16, 1000), []),
        # Same digit, end packets lost, next press after a gap: a new press.
        (press(5, 1000)[:3] + press(5, 8000), ["5", "5"]),
    ],
)
def test_detector(packets, digits):
    assert run(DtmfDetector(), packets) == digits


def test_detector_long_event_segments_are_one_press():
    # RFC 4733 §2.5.1.3: a held key past 0xFFFF samples continues in a new segment
    # whose timestamp is the previous one plus its duration.
    packets = [(0, False, 0xFFFF, 1000, True), (0, False, 800, 1000 + 0xFFFF, False)]
    packets += [(0, True, 1600, 1000 + 0xFFFF, False)] * 3
    assert run(DtmfDetector(), packets) == ["0"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        (b"Signal=*\nDuration=250\n", ("*", 250)),
        (b"signal = #\r\nduration = 100", ("#", 100)),
        (b"Signal=10\r\nDuration=160\r\n", ("*", 160)),
        (b"Signal=11\r\n", ("#", None)),
        (b"Signal=d\r\nDuration=0\r\n", ("D", 0)),
        (b"\r\nSignal=0\r\nX-Other=1\r\n\r\n", ("0", None)),
    ],
)
def test_dtmf_relay(body, expected):
    assert parse_dtmf_relay_untrusted(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "dtmf-relay body has no Signal line"),
        (b"Duration=160\r\n", "dtmf-relay body has no Signal line"),
        (b"Signal=12\r\n", "dtmf-relay line 1: Signal '12' is not a DTMF key"),
        (b"Signal=\r\n", "dtmf-relay line 1: Signal '' is not a DTMF key"),
        (b"Signal=5\r\nDuration=abc\r\n", "dtmf-relay line 2: Duration 'abc' is not a number of milliseconds"),
        (b"Signal=5\r\nDuration=-1\r\n", "dtmf-relay line 2: Duration '-1' is not a number of milliseconds"),
        (b"hello\r\n", "dtmf-relay line 1: expected key=value, got 'hello'"),
        (b"Signal=\xc3\xa9\r\n", "dtmf-relay body is not ASCII (octet 7)"),
        (b"Signal=5\r\n" * 200, "dtmf-relay body too long: 2000 octets (limit 1024)"),
    ],
)
def test_dtmf_relay_garbage(body, message):
    with pytest.raises(DtmfError) as caught:
        parse_dtmf_relay_untrusted(body)
    assert str(caught.value) == message


@hypothesis.given(st.binary(max_size=12))
def test_random_payloads_raise_only_dtmf_error(data):
    try:
        parse_telephone_event_untrusted(data)
    except DtmfError:
        pass


@hypothesis.given(st.binary(max_size=200))
def test_random_relay_bodies_raise_only_dtmf_error(data):
    try:
        digit, duration = parse_dtmf_relay_untrusted(data)
    except DtmfError:
        return
    assert digit in "0123456789*#ABCD" and (duration is None or duration >= 0)


@hypothesis.given(
    st.lists(
        st.tuples(st.integers(0, 255), st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.booleans()),
        max_size=50,
    )
)
def test_detector_repeated_packet_never_reports_again(packets):
    detector = DtmfDetector()
    for event, end, duration, timestamp, marker in packets:
        parsed = TelephoneEvent(event=event, end=end, volume=0, duration=duration)
        first = detector.feed(event=parsed, rtp_timestamp=timestamp, marker=marker)
        assert first in (None, digit_for_event(event))
        assert detector.feed(event=parsed, rtp_timestamp=timestamp, marker=marker) is None


@pytest.mark.parametrize(
    ("media_type", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        ("application/dtmf", b"5", ("5", None)),
        ("application/dtmf", b" #\r\n", ("#", None)),
        ("application/dtmf", b"10", ("*", None)),
    ],
)
def test_info_dtmf_by_media_type(media_type, body, expected):
    assert parse_info_dtmf_untrusted(media_type, body) == expected


@pytest.mark.parametrize(
    ("media_type", "body", "message"),
    [
        ("application/dtmf", b"55", "dtmf body '55' is not a DTMF key"),
        ("application/dtmf", b"\xff", "dtmf body is not ASCII (octet 0)"),
        ("application/dtmf", b"5" * 2000, "dtmf body too long: 2000 octets (limit 1024)"),
        ("text/plain", b"5", "'text/plain' is not a DTMF body type"),
    ],
)
def test_info_dtmf_garbage(media_type, body, message):
    with pytest.raises(DtmfError) as caught:
        parse_info_dtmf_untrusted(media_type, body)
    assert str(caught.value) == message


def test_peek_telephone_event_reads_in_place():
    data = b"\x00" * 12 + bytes.fromhex("0B 8A 0320") + b"\x00\x00\x00\x04"
    assert peek_telephone_event_untrusted(data, 12, 16) == (11, True, 800)
    with pytest.raises(DtmfError) as caught:
        peek_telephone_event_untrusted(data, 12, 15)
    assert str(caught.value) == "telephone-event payload truncated: 3 octets, needs 4"


@hypothesis.given(st.lists(st.tuples(st.integers(0, 17), st.booleans(), st.integers(0, 0xFFFF),
                                     st.integers(0, 5000)), max_size=30))
def test_feed_fields_is_feed(packets):
    by_object, by_fields = DtmfDetector(), DtmfDetector()
    for event, end, duration, timestamp in packets:
        parsed = TelephoneEvent(event=event, end=end, volume=10, duration=duration)
        assert by_object.feed(event=parsed, rtp_timestamp=timestamp) == by_fields.feed_fields(
            event, end, duration, timestamp)
