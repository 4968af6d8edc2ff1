"""RTCP compound reports: exact bytes, parse round trips, truncated fixtures, interval."""

from __future__ import annotations

import random

import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.media.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SenderReport,
    SourceDescription,
    build_receiver_report,
    build_sender_report,
    ntp_from_unix,
    ntp_middle_32,
    parse_rtcp_untrusted,
    rtcp_report_interval,
)

BLOCK = ReportBlock(
    ssrc=0xCAFEBABE,
    fraction_lost=25,
    cumulative_lost=-3,
    extended_highest_sequence=0x0001FFFF,
    jitter=42,
    last_sender_report=0x33445566,
    delay_since_last_sender_report=98304,
)

SR_BYTES = bytes.fromhex(
    "80C80006 11223344 E3F1A2B3 80000000 01020304 0000000A 00000640"  # SR, length 6 = 28 octets
    "81CA0004 11223344 0108 656B6F40686F7374 0000"  # SDES, CNAME "eko@host", 2 null octets
)


def test_sender_report_bytes_exact():
    report = build_sender_report(
        ssrc=0x11223344,
        ntp_time=0xE3F1A2B3_80000000,
        rtp_timestamp=0x01020304,
        packet_count=10,
        octet_count=1600,
        cname="eko@host",
    )
    assert report == SR_BYTES


def test_sender_report_with_block_length_field():
    report = build_sender_report(
        ssrc=1, ntp_time=0, rtp_timestamp=0, packet_count=0, octet_count=0, report_blocks=[BLOCK], cname="abc"
    )
    # 28 + 24 octets = 13 words, length 12; RC = 1.
    assert report[:4] == bytes.fromhex("81C8000C")
    assert report[28:52] == bytes.fromhex("CAFEBABE 19FFFFFD 0001FFFF 0000002A 33445566 00018000")
    # "abc": 4 + 2 + 3 = 9 octets, padded to 12 (3 null octets): SDES length 3.
    assert report[52:] == bytes.fromhex("81CA0003 00000001 0103 616263 000000")


def test_receiver_report_bytes_exact():
    report = build_receiver_report(ssrc=0x11223344, report_blocks=(BLOCK,), cname="abcd")
    assert report == bytes.fromhex(
        "81C90007 11223344 CAFEBABE 19FFFFFD 0001FFFF 0000002A 33445566 00018000"
        "81CA0003 11223344 0104 61626364 00 00"
    )


def test_round_trip():
    compound = build_sender_report(
        ssrc=7, ntp_time=1_700_000_000.5, rtp_timestamp=99, packet_count=3, octet_count=480, report_blocks=[BLOCK], cname="eko"
    ) + build_receiver_report(ssrc=8, cname="x")
    assert parse_rtcp_untrusted(compound) == [
        SenderReport(
            ssrc=7,
            ntp_timestamp=ntp_from_unix(1_700_000_000.5),
            rtp_timestamp=99,
            packet_count=3,
            octet_count=480,
            report_blocks=(BLOCK,),
        ),
        SourceDescription(chunks=((7, "eko"),)),
        ReceiverReport(ssrc=8, report_blocks=()),
        SourceDescription(chunks=((8, "x"),)),
    ]


def test_ntp_conversions():
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(1.5) == ((2_208_988_801 << 32) | 0x80000000)
    assert ntp_middle_32(0x1122334455667788) == 0x33445566
    with pytest.raises(ValueError, match="before the NTP epoch"):
        ntp_from_unix(-3e9)


def test_parse_bye_with_reason_and_unknown_packet_skipped():
    compound = (
        bytes.fromhex("80C90001 00000009")  # RR, no blocks
        + bytes.fromhex("80CE0002 00000009 00000000")  # PSFB (206): unknown here, skipped
        + bytes.fromhex("81CB0003 00000009 04 62796521 000000")  # BYE "bye!"
    )
    assert parse_rtcp_untrusted(compound) == [
        ReceiverReport(ssrc=9, report_blocks=()),
        Bye(ssrcs=(9,), reason="bye!"),
    ]


def test_parse_padding_on_last_packet_and_sdes_other_items():
    compound = bytes.fromhex(
        "80C90001 00000009"
        # SDES with a NAME item (2) before CNAME, then padding of 4 octets (P bit).
        "A1CA0004 00000009 0201 41 0102 6869 00 00000004"
    )
    assert parse_rtcp_untrusted(compound)[1] == SourceDescription(chunks=((9, "hi"),))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP packet truncated: 0 octets, a header needs 4"),
        (bytes.fromhex("80C8"), "RTCP packet truncated: 2 octets, a header needs 4"),
        (bytes.fromhex("40C90001 00000009"), "RTCP packet 1 at octet 0: RTCP version 1, expected 2"),
        (bytes.fromhex("80C90002 00000009"), "RTCP packet 1 at octet 0: length field says 12 octets, only 8 remain"),
        (bytes.fromhex("80C90001 00000009 80"), "RTCP packet 2 at octet 8: truncated header (1 octets)"),
        (SR_BYTES[:4] + bytes.fromhex("0000000A"), "RTCP packet 1 at octet 0: length field says 28 octets, only 8 remain"),
        (bytes.fromhex("80C80001 00000009"), "RTCP packet 1 at octet 0: SR with 0 report blocks needs 28 octets, has 8"),
        (bytes.fromhex("81C90001 00000009"), "RTCP packet 1 at octet 0: RR with 1 report blocks needs 32 octets, has 8"),
        (bytes.fromhex("81CA0001 00000009"), "RTCP packet 1 at octet 0: SDES chunk 1 has no end of its item list"),
        (bytes.fromhex("82CA0001 00000009"), "RTCP packet 1 at octet 0: SDES chunk 1 has no end of its item list"),
        (bytes.fromhex("81CA0002 00000009 0109 6162"), "RTCP packet 1 at octet 0: SDES item of type 1 truncated"),
        (bytes.fromhex("82CB0001 00000009"), "RTCP packet 1 at octet 0: BYE lists 2 SSRCs but has 4 octets"),
        (bytes.fromhex("81CB0002 00000009 09616263"), "RTCP packet 1 at octet 0: BYE reason of 9 octets truncated"),
        (bytes.fromhex("A0C90001 00000000"), "RTCP packet 1 at octet 0: invalid padding"),
        (bytes.fromhex("A0C90001 00000009 80C90001 00000009"), "RTCP packet 1 at octet 0: invalid padding"),
    ],
)
def test_parse_rejects_truncated_and_invalid(data, message):
    with pytest.raises(RtcpError) as caught:
        parse_rtcp_untrusted(data)
    assert str(caught.value) == message


def test_builder_argument_errors():
    with pytest.raises(ValueError, match="CNAME must be 1..255 octets of UTF-8, got 0"):
        build_receiver_report(ssrc=1, cname="")
    with pytest.raises(ValueError, match="at most 31 report blocks fit one report, got 32"):
        build_receiver_report(ssrc=1, report_blocks=[BLOCK] * 32, cname="a")
    with pytest.raises(ValueError, match="cumulative_lost must fit in signed 24 bits, not 8388608"):
        ReportBlock(
            ssrc=1, fraction_lost=0, cumulative_lost=0x800000, extended_highest_sequence=0,
            jitter=0, last_sender_report=0, delay_since_last_sender_report=0,
        )


class EdgeRandom(random.Random):
    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.value


@pytest.mark.parametrize(
    ("draw", "initial", "expected"),
    [(0.0, False, 2.0521), (0.5, False, 4.1041), (1.0, False, 6.1562), (0.5, True, 2.0521)],
)
def test_report_interval(draw, initial, expected):
    assert rtcp_report_interval(rng=EdgeRandom(draw), initial=initial) == pytest.approx(expected, abs=1e-4)


def test_report_interval_default_random_is_in_range():
    values = [rtcp_report_interval() for _ in range(200)]
    assert min(values) >= 2.05 and max(values) <= 6.16 and len(set(values)) > 100


@hypothesis.given(st.binary(max_size=120))
def test_random_bytes_raise_only_rtcp_error(data):
    try:
        parse_rtcp_untrusted(data)
    except RtcpError:
        pass


@hypothesis.given(st.binary(min_size=4, max_size=60))
def test_random_bodies_behind_valid_headers_raise_only_rtcp_error(body):
    packet_type = 200 + body[0] % 4
    data = bytes((0x80 | body[1] % 32, packet_type)) + (len(body) // 4 - 1).to_bytes(2, "big") + body[: len(body) // 4 * 4 - 4]
    try:
        parse_rtcp_untrusted(data)
    except RtcpError:
        pass
