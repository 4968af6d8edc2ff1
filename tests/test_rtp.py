"""RTP headers, packet parsing, wraparound helpers and RFC 3550 Appendix A statistics."""

from __future__ import annotations

import ast
import pathlib
import random
import tracemalloc

import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.media.rtcp import ReportBlock
from eko_rtp.media.rtp import (
    ReceiverStatistics,
    RtpError,
    RtpSender,
    is_rtcp,
    parse_rtp_untrusted,
    payload_bounds_untrusted,
)
from eko_rtp.media.sequence import Unwrapper, seq_diff, seq_newer, timestamp_diff, timestamp_newer


class FixedRandom(random.Random):
    """Hands out chosen values for SSRC, first sequence number, first timestamp."""

    def __init__(self, *values: int):
        super().__init__(0)
        self._values = list(values)

    def getrandbits(self, bits: int) -> int:
        return self._values.pop(0)


def sender(ssrc=0x11223344, sequence=0x0102, timestamp=0x0A0B0C0D, payload_type=0) -> RtpSender:
    return RtpSender(payload_type=payload_type, rng=FixedRandom(ssrc, sequence, timestamp))


def test_header_bytes_exact():
    rtp = sender()
    assert bytes(rtp.header_for_next_frame(marker=True)) == bytes.fromhex("80 80 0102 0A0B0C0D 11223344")
    assert bytes(rtp.header_for_next_frame()) == bytes.fromhex("80 00 0103 0A0B0CAD 11223344")
    rtp.set_payload_type(8)
    assert bytes(rtp.header_for_next_frame()) == bytes.fromhex("80 08 0104 0A0B0D4D 11223344")
    assert (rtp.packets_sent, rtp.octets_sent) == (3, 480)


def test_sequence_and_timestamp_wrap():
    rtp = sender(sequence=0xFFFF, timestamp=0xFFFFFFFF - 159)
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("FFFF FFFFFF60")
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("0000 00000000")
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("0001 000000A0")


def test_marker_only_when_asked_and_skip_advances_timestamp():
    rtp = sender(timestamp=0)
    markers = [rtp.header_for_next_frame(marker=flag)[1] >> 7 for flag in (True, False, False)]
    rtp.skip(800)  # a 100 ms pause we do not send
    markers.append(rtp.header_for_next_frame(marker=True)[1] >> 7)
    assert markers == [1, 0, 0, 1]
    assert rtp.next_timestamp == 4 * 160 + 800


def test_header_is_one_reused_buffer_without_allocation():
    rtp = sender()
    first = rtp.header_for_next_frame()
    assert all(rtp.header_for_next_frame() is first for _ in range(100))
    tracemalloc.start()
    try:
        for _ in range(1000):
            rtp.header_for_next_frame()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(10_000):
            rtp.header_for_next_frame()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024


def test_default_random_origins_differ():
    first, second = RtpSender(payload_type=0), RtpSender(payload_type=0)
    assert (first.ssrc, first.next_sequence, first.next_timestamp) != (second.ssrc, second.next_sequence, second.next_timestamp)


def test_invalid_payload_type():
    with pytest.raises(ValueError, match="payload type must be 0..127, not 128"):
        RtpSender(payload_type=128)


def test_parse_round_trip_of_our_header():
    rtp = sender(payload_type=8)
    datagram = bytes(rtp.header_for_next_frame(marker=True)) + b"\xd5" * 160
    packet = parse_rtp_untrusted(datagram)
    assert (packet.marker, packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (
        True, 8, 0x0102, 0x0A0B0C0D, 0x11223344,
    )
    assert packet.csrcs == () and packet.extension is None and packet.padding == 0
    assert isinstance(packet.payload, memoryview) and bytes(packet.payload) == b"\xd5" * 160


def test_parse_padding_csrc_and_extension():
    # V=2 P=1 X=1 CC=2, M=0 PT=101, two CSRCs, a one-word extension, 4 payload
    # octets, then 3 octets of padding whose last says 3.
    datagram = bytes.fromhex(
        "B2 65 1234 00000FA0 DEADBEEF"
        "00000001 00000002"
        "BEDE 0001 11223344"
        "0B8000A0"
        "000003"
    )
    packet = parse_rtp_untrusted(datagram)
    assert packet.payload_type == 101 and packet.marker is False
    assert packet.csrcs == (1, 2)
    assert (packet.extension_profile, packet.extension) == (0xBEDE, bytes.fromhex("11223344"))
    assert packet.padding == 3
    assert bytes(packet.payload) == bytes.fromhex("0B8000A0")


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "RTP packet truncated: 0 octets, the fixed header needs 12"),
        (bytes.fromhex("8000 0001 00000000 000000"), "RTP packet truncated: 11 octets, the fixed header needs 12"),
        (bytes.fromhex("4000 0001 00000000 00000000"), "RTP version 1, expected 2"),
        (bytes.fromhex("8300 0001 00000000 00000000 00000001"), "RTP packet truncated: 16 octets, a header with 3 CSRCs needs 24"),
        (bytes.fromhex("9000 0001 00000000 00000000 BEDE"), "RTP packet truncated: 14 octets, the header extension starts at 12 and needs 4"),
        (bytes.fromhex("9000 0001 00000000 00000000 BEDE0002 00000000"), "RTP packet truncated: 20 octets, the header extension of 2 words needs 24"),
        (bytes.fromhex("A000 0001 00000000 00000000 AABB00"), "RTP padding count 0 invalid: 3 octets follow the header"),
        (bytes.fromhex("A000 0001 00000000 00000000 AABB09"), "RTP padding count 9 invalid: 3 octets follow the header"),
        (bytes.fromhex("A000 0001 00000000 00000000"), "RTP padding count 0 invalid: 0 octets follow the header"),
    ],
)
def test_parse_rejects_truncated_and_invalid(datagram, message):
    with pytest.raises(RtpError) as caught:
        parse_rtp_untrusted(datagram)
    assert str(caught.value) == message


def test_parse_accepts_memoryview_and_views_into_it():
    buffer = bytearray(bytes.fromhex("8000 0001 00000000 00000000") + b"abc")
    packet = parse_rtp_untrusted(memoryview(buffer))
    buffer[12] = ord("x")
    assert bytes(packet.payload) == b"xbc"


@pytest.mark.parametrize(
    ("second_octet", "expected"),
    [(0, False), (8, False), (0x80 | 101, False), (191, False), (192, True), (200, True), (201, True), (223, True), (224, False)],
)
def test_is_rtcp_demux(second_octet, expected):
    assert is_rtcp(bytes((0x80, second_octet, 0, 1))) is expected


def test_is_rtcp_short_datagram():
    assert is_rtcp(b"\x80") is False


@pytest.mark.parametrize(
    ("a", "b", "difference", "newer"),
    [(1, 0, 1, True), (0, 1, -1, False), (0, 0xFFFF, 1, True), (0xFFFF, 0, -1, False), (5, 5, 0, False),
     (0x8000, 0, -0x8000, False), (0x7FFF, 0, 0x7FFF, True)],
)
def test_sequence_arithmetic(a, b, difference, newer):
    assert (seq_diff(a, b), seq_newer(a, b)) == (difference, newer)


@pytest.mark.parametrize(
    ("a", "b", "difference", "newer"),
    [(160, 0, 160, True), (0, 0xFFFFFF60, 160, True), (0xFFFFFF60, 0, -160, False), (1 << 31, 0, -(1 << 31), False)],
)
def test_timestamp_arithmetic(a, b, difference, newer):
    assert (timestamp_diff(a, b), timestamp_newer(a, b)) == (difference, newer)


def test_unwrapper_extends_across_wraps_and_reorder():
    unwrapper = Unwrapper(16)
    fed = [0xFFFD, 0xFFFE, 0xFFFF, 0x0000, 0xFFFE, 0x0001, 0x8000, 0x0002 + 0x7FFF]
    assert [unwrapper.extend(value) for value in fed] == [
        0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0xFFFE, 0x10001, 0x18000, 0x18001,
    ]
    assert unwrapper.highest == 0x18001
    assert Unwrapper(32).extend(0xFFFFFFFF) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="counter value 65536 outside 0..65535"):
        unwrapper.extend(0x10000)


def feed_all(statistics: ReceiverStatistics, sequences, *, start=0.0, spacing=0.02, jitter_of=lambda index: 0.0):
    accepted = []
    for index, sequence in enumerate(sequences):
        accepted.append(
            statistics.feed(
                sequence=sequence & 0xFFFF,
                rtp_timestamp=(sequence * 160) & 0xFFFFFFFF,
                arrival_time=start + index * spacing + jitter_of(index),
                ssrc=0xCAFE,
            )
        )
    return accepted


def test_statistics_probation_then_counting():
    statistics = ReceiverStatistics()
    assert feed_all(statistics, [100, 101, 102, 103]) == [False, True, True, True]
    block = statistics.report_block(now=1.0)
    assert block == ReportBlock(
        ssrc=0xCAFE, fraction_lost=0, cumulative_lost=0, extended_highest_sequence=103,
        jitter=0, last_sender_report=0, delay_since_last_sender_report=0,
    )


def test_statistics_loss_and_fraction_per_interval():
    statistics = ReceiverStatistics()
    # 101..110 expected (probation packet 100 not counted); 104 and 107 lost.
    feed_all(statistics, [100, 101, 102, 103, 105, 106, 108, 109, 110])
    first = statistics.report_block(now=1.0)
    assert (first.cumulative_lost, first.fraction_lost, first.extended_highest_sequence) == (2, 2 * 256 // 10, 110)
    feed_all(statistics, [111, 112, 113, 114], start=1.0)
    second = statistics.report_block(now=2.0)
    assert (second.cumulative_lost, second.fraction_lost) == (2, 0)


def test_statistics_wrap_extends_highest_sequence():
    statistics = ReceiverStatistics()
    feed_all(statistics, [0xFFFE, 0xFFFF, 0x10000, 0x10001])
    block = statistics.report_block(now=1.0)
    assert (block.extended_highest_sequence, block.cumulative_lost) == (0x10001, 0)


def test_statistics_duplicates_give_negative_loss_and_zero_fraction():
    statistics = ReceiverStatistics()
    feed_all(statistics, [10, 11, 12, 12, 12])
    block = statistics.report_block(now=1.0)
    assert (block.cumulative_lost, block.fraction_lost) == (-2, 0)


def test_statistics_jitter_converges_on_alternating_delay():
    statistics = ReceiverStatistics()
    # Every other packet 10 ms late: |D| alternates 80 timestamp units.
    feed_all(statistics, range(1000, 1400), jitter_of=lambda index: 0.010 * (index % 2))
    assert statistics.report_block(now=10.0).jitter == 79  # J -> 80 from below


def test_statistics_restart_after_big_jump_and_new_ssrc():
    statistics = ReceiverStatistics()
    feed_all(statistics, [10, 11, 12])
    assert statistics.feed(sequence=30000, rtp_timestamp=0, arrival_time=1.0, ssrc=0xCAFE) is False
    assert statistics.feed(sequence=30001, rtp_timestamp=160, arrival_time=1.02, ssrc=0xCAFE) is True
    assert statistics.extended_highest_sequence == 30001 and statistics.received == 1
    assert statistics.feed(sequence=5, rtp_timestamp=0, arrival_time=2.0, ssrc=0xBEEF) is False
    assert statistics.ssrc == 0xBEEF and statistics.received == 0


def test_statistics_last_sender_report_and_delay():
    statistics = ReceiverStatistics()
    feed_all(statistics, [1, 2, 3])
    statistics.note_sender_report(ntp_timestamp=0x1122334455667788, arrival_time=5.0)
    block = statistics.report_block(now=6.5)
    assert (block.last_sender_report, block.delay_since_last_sender_report) == (0x33445566, 98304)


@hypothesis.given(st.binary(max_size=80))
def test_random_bytes_raise_only_rtp_error(datagram):
    try:
        packet = parse_rtp_untrusted(datagram)
    except RtpError:
        return
    assert len(packet.payload) <= len(datagram) - 12


@hypothesis.given(st.lists(st.integers(0, 0xFFFF), max_size=200))
def test_statistics_never_raise_on_random_sequences(sequences):
    statistics = ReceiverStatistics()
    for index, sequence in enumerate(sequences):
        statistics.feed(sequence=sequence, rtp_timestamp=index * 160, arrival_time=index * 0.02)
    statistics.report_block(now=100.0)


def _in_order_runs(draw_steps):
    """Mostly the next sequence number, with jumps, repeats and a wrap mixed in."""
    sequence, out = 0xFFF0, []
    for step in draw_steps:
        sequence = (sequence + step) & 0xFFFF
        out.append(sequence)
    return out


@hypothesis.given(
    st.lists(st.sampled_from([1, 1, 1, 1, 1, 0, 2, -1, 3000, 40000]), max_size=300),
    st.lists(st.floats(0, 0.01), min_size=300, max_size=300),
)
def test_statistics_in_order_fast_path_matches_the_appendix_a_path(steps, delays):
    """feed() takes a shortcut for the next packet in order; the same packets fed with
    an SSRC (which always goes through A.1 update_seq) must give the same report."""
    shortcut, reference = ReceiverStatistics(), ReceiverStatistics()
    for index, sequence in enumerate(_in_order_runs(steps)):
        arrival = index * 0.02 + delays[index]
        accepted = shortcut.feed(sequence, index * 160, arrival)
        assert accepted == reference.feed(sequence, index * 160, arrival, ssrc=0x1234)
        assert (shortcut.received, shortcut.expected, shortcut.extended_highest_sequence, shortcut.jitter) == (
            reference.received, reference.expected, reference.extended_highest_sequence, reference.jitter)


MEDIA = pathlib.Path(__file__).resolve().parent.parent / "eko_rtp" / "media"


@pytest.mark.parametrize("module", ["sdp.py", "rtp.py", "rtcp.py", "dtmf.py", "sequence.py"])
def test_core_modules_import_neither_trio_nor_socket(module):
    tree = ast.parse((MEDIA / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "asyncio", "select"}
    assert imported  # the scan saw this module's imports at all


@pytest.mark.parametrize(
    ("data", "bounds"),
    [
        (bytes.fromhex("80 65 0001 000000a0 11223344") + b"\x05\x0a\x00\xa0", (12, 16)),
        # one CSRC
        (bytes.fromhex("81 65 0001 000000a0 11223344 55667788") + b"\x05\x0a\x00\xa0", (16, 20)),
        # X: a one-word RFC 8285 extension block (profile 0xBEDE)
        (bytes.fromhex("90 65 0001 000000a0 11223344 BEDE0001 10AA0000") + b"\x05\x0a\x00\xa0", (20, 24)),
        # P: 4 octets of padding, the last one counting them
        (bytes.fromhex("a0 65 0001 000000a0 11223344") + b"\x05\x0a\x00\xa0" + b"\x00\x00\x00\x04", (12, 16)),
    ],
)
def test_payload_bounds(data, bounds):
    assert payload_bounds_untrusted(data) == bounds
    packet = parse_rtp_untrusted(data)
    assert bytes(packet.payload) == data[bounds[0]:bounds[1]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x65", "RTP packet truncated: 2 octets, the fixed header needs 12"),
        (bytes.fromhex("40 65 0001 000000a0 11223344"), "RTP version 1, expected 2"),
        (bytes.fromhex("90 65 0001 000000a0 11223344 BEDE"),
         "RTP packet truncated: 14 octets, the header extension starts at 12 and needs 4"),
        (bytes.fromhex("90 65 0001 000000a0 11223344 BEDE0002 00000000"),
         "RTP packet truncated: 20 octets, the header extension of 2 words needs 24"),
        (bytes.fromhex("a0 65 0001 000000a0 11223344 05"), "RTP padding count 5 invalid: 1 octets follow the header"),
    ],
)
def test_payload_bounds_of_bad_packets(data, message):
    with pytest.raises(RtpError) as caught:
        payload_bounds_untrusted(data)
    assert str(caught.value) == message


@hypothesis.given(st.binary(max_size=64))
def test_payload_bounds_agree_with_the_full_parser(data):
    try:
        packet = parse_rtp_untrusted(data)
    except RtpError as error:
        with pytest.raises(RtpError) as caught:
            payload_bounds_untrusted(data)
        assert str(caught.value) == str(error)
        return
    start, end = payload_bounds_untrusted(data)
    assert bytes(packet.payload) == data[start:end]
