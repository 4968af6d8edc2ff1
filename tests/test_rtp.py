"""RTP headers, packet parsing, wraparound helpers and RFC 3550 Appendix A statistics.

The sender's header and the statistics' per-packet state have a compiled twin
(media/_rtp.c): every test of them runs against both, and the last ones feed both
the same random streams and compare everything they say."""

from __future__ import annotations

import ast
import os
import pathlib
import random
import tracemalloc

import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.media.rtcp import ReportBlock
from eko_rtp.media import rtp as rtp_module
from eko_rtp.media.rtp import (
    PythonRtpSender,
    PythonStatisticsState,
    ReceiverStatistics,
    RtpError,
    StatisticsReports,
    is_rtcp,
    parse_rtp_untrusted,
    payload_bounds_untrusted,
)
from eko_rtp.media.sequence import Unwrapper, seq_diff, seq_newer, timestamp_diff, timestamp_newer


try:
    from eko_rtp.media import _rtp as compiled
except ImportError:  # not built here (no C compiler or no Python headers at install)
    compiled = None


class PythonStatistics(StatisticsReports, PythonStatisticsState):
    __slots__ = ()


if compiled is not None:
    class CompiledStatistics(StatisticsReports, compiled.StatisticsState):
        __slots__ = ()

_NOT_BUILT = pytest.mark.skipif(compiled is None, reason="media/_rtp.c was not built (no C compiler or Python.h)")
SENDERS = [pytest.param(PythonRtpSender, id="python"),
           pytest.param(compiled.RtpSender if compiled else None, id="compiled", marks=_NOT_BUILT)]
STATISTICS = [pytest.param(PythonStatistics, id="python"),
              pytest.param(CompiledStatistics if compiled else None, id="compiled", marks=_NOT_BUILT)]
with_senders = pytest.mark.parametrize("Sender", SENDERS)
with_statistics = pytest.mark.parametrize("Statistics", STATISTICS)


class FixedRandom(random.Random):
    """Hands out chosen values for SSRC, first sequence number, first timestamp."""

    def __init__(self, *values: int):
        super().__init__(0)
        self._values = list(values)

    def getrandbits(self, bits: int) -> int:
        return self._values.pop(0)


def sender(Sender, ssrc=0x11223344, sequence=0x0102, timestamp=0x0A0B0C0D, payload_type=0):
    return Sender(payload_type=payload_type, rng=FixedRandom(ssrc, sequence, timestamp))


@with_senders
def test_header_bytes_exact(Sender):
    rtp = sender(Sender)
    assert bytes(rtp.header_for_next_frame(marker=True)) == bytes.fromhex("80 80 0102 0A0B0C0D 11223344")
    assert bytes(rtp.header_for_next_frame()) == bytes.fromhex("80 00 0103 0A0B0CAD 11223344")
    rtp.set_payload_type(8)
    assert bytes(rtp.header_for_next_frame()) == bytes.fromhex("80 08 0104 0A0B0D4D 11223344")
    assert (rtp.packets_sent, rtp.octets_sent) == (3, 480)


@with_senders
def test_sequence_and_timestamp_wrap(Sender):
    rtp = sender(Sender, sequence=0xFFFF, timestamp=0xFFFFFFFF - 159)
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("FFFF FFFFFF60")
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("0000 00000000")
    assert bytes(rtp.header_for_next_frame())[2:8] == bytes.fromhex("0001 000000A0")


@with_senders
def test_marker_only_when_asked_and_skip_advances_timestamp(Sender):
    rtp = sender(Sender, timestamp=0)
    markers = [rtp.header_for_next_frame(marker=flag)[1] >> 7 for flag in (True, False, False)]
    rtp.skip(800)  # a 100 ms pause we do not send
    markers.append(rtp.header_for_next_frame(marker=True)[1] >> 7)
    assert markers == [1, 0, 0, 1]
    assert rtp.next_timestamp == 4 * 160 + 800


@with_senders
def test_header_is_one_reused_buffer_without_allocation(Sender):
    rtp = sender(Sender)
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


@with_senders
def test_default_random_origins_differ(Sender):
    first, second = Sender(payload_type=0), Sender(payload_type=0)
    assert (first.ssrc, first.next_sequence, first.next_timestamp) != (second.ssrc, second.next_sequence, second.next_timestamp)


@with_senders
def test_invalid_payload_type(Sender):
    with pytest.raises(ValueError, match="payload type must be 0..127, not 128"):
        Sender(payload_type=128)


@with_senders
def test_parse_round_trip_of_our_header(Sender):
    rtp = sender(Sender, payload_type=8)
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


@with_statistics
def test_statistics_probation_then_counting(Statistics):
    statistics = Statistics()
    assert feed_all(statistics, [100, 101, 102, 103]) == [False, True, True, True]
    block = statistics.report_block(now=1.0)
    assert block == ReportBlock(
        ssrc=0xCAFE, fraction_lost=0, cumulative_lost=0, extended_highest_sequence=103,
        jitter=0, last_sender_report=0, delay_since_last_sender_report=0,
    )


@with_statistics
def test_statistics_loss_and_fraction_per_interval(Statistics):
    statistics = Statistics()
    # 101..110 expected (probation packet 100 not counted); 104 and 107 lost.
    feed_all(statistics, [100, 101, 102, 103, 105, 106, 108, 109, 110])
    first = statistics.report_block(now=1.0)
    assert (first.cumulative_lost, first.fraction_lost, first.extended_highest_sequence) == (2, 2 * 256 // 10, 110)
    feed_all(statistics, [111, 112, 113, 114], start=1.0)
    second = statistics.report_block(now=2.0)
    assert (second.cumulative_lost, second.fraction_lost) == (2, 0)


@with_statistics
def test_statistics_wrap_extends_highest_sequence(Statistics):
    statistics = Statistics()
    feed_all(statistics, [0xFFFE, 0xFFFF, 0x10000, 0x10001])
    block = statistics.report_block(now=1.0)
    assert (block.extended_highest_sequence, block.cumulative_lost) == (0x10001, 0)


@with_statistics
def test_statistics_duplicates_give_negative_loss_and_zero_fraction(Statistics):
    statistics = Statistics()
    feed_all(statistics, [10, 11, 12, 12, 12])
    block = statistics.report_block(now=1.0)
    assert (block.cumulative_lost, block.fraction_lost) == (-2, 0)


@with_statistics
def test_statistics_jitter_converges_on_alternating_delay(Statistics):
    statistics = Statistics()
    # Every other packet 10 ms late: |D| alternates 80 timestamp units.
    feed_all(statistics, range(1000, 1400), jitter_of=lambda index: 0.010 * (index % 2))
    assert statistics.report_block(now=10.0).jitter == 79  # J -> 80 from below


@with_statistics
def test_statistics_restart_after_big_jump_and_new_ssrc(Statistics):
    statistics = Statistics()
    feed_all(statistics, [10, 11, 12])
    assert statistics.feed(sequence=30000, rtp_timestamp=0, arrival_time=1.0, ssrc=0xCAFE) is False
    assert statistics.feed(sequence=30001, rtp_timestamp=160, arrival_time=1.02, ssrc=0xCAFE) is True
    assert statistics.extended_highest_sequence == 30001 and statistics.received == 1
    assert statistics.feed(sequence=5, rtp_timestamp=0, arrival_time=2.0, ssrc=0xBEEF) is False
    assert statistics.ssrc == 0xBEEF and statistics.received == 0


@with_statistics
def test_statistics_last_sender_report_and_delay(Statistics):
    statistics = Statistics()
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


@with_statistics
@hypothesis.given(st.lists(st.integers(0, 0xFFFF), max_size=200))
def test_statistics_never_raise_on_random_sequences(Statistics, sequences):
    statistics = Statistics()
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


@with_statistics
@hypothesis.given(
    st.lists(st.sampled_from([1, 1, 1, 1, 1, 0, 2, -1, 3000, 40000]), max_size=300),
    st.lists(st.floats(0, 0.01), min_size=300, max_size=300),
)
def test_statistics_in_order_fast_path_matches_the_appendix_a_path(Statistics, steps, delays):
    """feed() takes a shortcut for the next packet in order; the same packets fed with
    an SSRC (which always goes through A.1 update_seq) must give the same report."""
    shortcut, reference = Statistics(), Statistics()
    for index, sequence in enumerate(_in_order_runs(steps)):
        arrival = index * 0.02 + delays[index]
        accepted = shortcut.feed(sequence, index * 160, arrival)
        assert accepted == reference.feed(sequence, index * 160, arrival, ssrc=0x1234)
        assert (shortcut.received, shortcut.expected, shortcut.extended_highest_sequence, shortcut.jitter) == (
            reference.received, reference.expected, reference.extended_highest_sequence, reference.jitter)


def _report(statistics) -> tuple:
    block = statistics.report_block(now=1000.0)
    return (statistics.ssrc, statistics.received, statistics.expected, statistics.extended_highest_sequence,
            statistics._jitter, statistics._transit, block)


@_NOT_BUILT
@hypothesis.given(st.lists(st.tuples(
    st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, -1, -5, 3000, 40000, 65535]),  # sequence step
    st.integers(0, 0xFFFFFFFF),  # timestamp jump, folded over the 2^32 wrap
    st.one_of(st.none(), st.floats(0, 0.05)),  # arrival delay, None: a telephone-event
    st.sampled_from([None, None, None, 0xCAFE, 0xBEEF]),  # the SSRC when given
    st.booleans(),  # a report block (the interval counts reset) after this packet
), max_size=400))
def test_the_compiled_statistics_say_what_the_python_ones_say(packets):
    twins = [PythonStatistics(), CompiledStatistics()]
    sequence, timestamp, arrival = 0xFFF0, 0xFFFFF000, 0.0
    for step, jump, delay, ssrc, report in packets:
        sequence = (sequence + step) & 0xFFFF
        timestamp = (timestamp + (160 if step == 1 else jump)) & 0xFFFFFFFF
        arrival += 0.02
        when = None if delay is None else arrival + delay
        assert len({twin.feed(sequence, timestamp, when, ssrc) for twin in twins}) == 1
        if report:
            assert _report(twins[0]) == _report(twins[1])
    assert _report(twins[0]) == _report(twins[1])


@_NOT_BUILT
@hypothesis.given(st.lists(st.one_of(
    st.tuples(st.just("frame"), st.booleans()),
    st.tuples(st.just("skip"), st.integers(0, 1 << 40)),
    st.tuples(st.just("rewind"), st.integers(0, 160)),
    st.tuples(st.just("set_payload_type"), st.integers(0, 127)),
), max_size=200), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_the_compiled_sender_writes_what_the_python_one_writes(steps, ssrc, sequence, timestamp):
    twins = [Sender(payload_type=0, rng=FixedRandom(ssrc, sequence, timestamp))
             for Sender in (PythonRtpSender, compiled.RtpSender)]
    for operation, argument in steps:
        results = [getattr(twin, "header_for_next_frame" if operation == "frame" else operation)(argument)
                   for twin in twins]
        if operation == "frame":
            assert bytes(results[0]) == bytes(results[1])
        assert [(twin.ssrc, twin.payload_type, twin.next_sequence, twin.next_timestamp, twin.packets_sent,
                 twin.octets_sent) for twin in twins].count(
            (twins[0].ssrc, twins[0].payload_type, twins[0].next_sequence, twins[0].next_timestamp,
             twins[0].packets_sent, twins[0].octets_sent)) == 2


@with_senders
@pytest.mark.parametrize("call, message", [
    (lambda rtp: rtp.rewind(161), "can rewind 0..160 samples, not 161"),
    (lambda rtp: rtp.rewind(-1), "can rewind 0..160 samples, not -1"),
    (lambda rtp: rtp.skip(-1), r"cannot skip a negative number of samples \(-1\)"),
    (lambda rtp: rtp.set_payload_type(200), "payload type must be 0..127, not 200"),
    (lambda rtp: rtp.set_payload_type(True), "payload type must be 0..127, not True"),
])
def test_sender_refuses_what_it_cannot_do_and_keeps_its_state(Sender, call, message):
    rtp = sender(Sender)
    with pytest.raises(ValueError, match=message):
        call(rtp)
    assert (rtp.payload_type, rtp.next_sequence, rtp.next_timestamp) == (0, 0x0102, 0x0A0B0C0D)


@_NOT_BUILT
@pytest.mark.skipif(bool(os.environ.get("EKO_RTP_PURE_PYTHON")), reason="EKO_RTP_PURE_PYTHON asks for the Python twins")
def test_the_server_runs_the_compiled_twins_when_they_were_built():
    assert rtp_module.RtpSender is compiled.RtpSender
    assert rtp_module.payload_bounds_untrusted is compiled.payload_bounds_untrusted
    assert issubclass(ReceiverStatistics, compiled.StatisticsState)


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


_VERSION_2_DATAGRAMS = st.tuples(st.integers(0x80, 0xBF), st.binary(max_size=80)).map(
    lambda parts: bytes([parts[0]]) + parts[1])


@_NOT_BUILT
@hypothesis.given(st.binary(max_size=64) | _VERSION_2_DATAGRAMS)
def test_the_compiled_payload_bounds_agree_with_the_python_ones(data):
    compiled.bind_rtp_error(RtpError)  # rtp.py does it when it takes the compiled twins; not under PURE_PYTHON

    def outcome(bounds):
        try:
            return bounds(data)
        except RtpError as error:
            return str(error)

    assert outcome(compiled.payload_bounds_untrusted) == outcome(rtp_module.python_payload_bounds_untrusted)


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


@with_statistics
def test_statistics_whose_init_was_skipped_still_count(Statistics):
    class Skipping(Statistics):
        __slots__ = ()

        def __init__(self):  # a subclass that forgets super().__init__()
            pass

    statistics = Skipping()
    if not hasattr(statistics, "_probation"):  # the Python twin has nothing to count with
        with pytest.raises(AttributeError):
            statistics.feed(1, 160, 0.02)
        return
    assert [statistics.feed(n, 160 * n, 0.02 * n) for n in (1, 2, 3)] == [False, True, True]
    assert (statistics.ssrc, statistics.clock_rate, statistics.received) == (None, 8000, 2)
