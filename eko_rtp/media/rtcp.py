"""RTCP packets (RFC 3550 §6): build our compound reports, parse the peer's.

Theory of operation: every RTCP datagram is a compound packet, a run of RTCP
packets each starting with the same 4-octet header whose length field counts
32-bit words minus one (§6.4.1). We send one of two shapes, as §6.1 requires
("each individual RTCP packet ... MUST contain ... a CNAME"): SR + SDES(CNAME)
while we are sending audio, RR + SDES(CNAME) while we only listen. Peers' packets
are parsed only so the shell can log or count them; packet types we do not know
(APP, RTPFB, XR ...) are skipped by their length, as §6.1 tells receivers to.
The interval between our reports follows §6.3.1 for a two-party call: the
5-second minimum, randomised to 0.5-1.5 times, divided by e - 3/2.
"""

from __future__ import annotations

import math
import random
import struct

import attrs

__all__ = [
    "RtcpError",
    "ReportBlock",
    "SenderReport",
    "ReceiverReport",
    "SourceDescription",
    "Bye",
    "RtcpPacket",
    "NTP_UNIX_OFFSET",
    "ntp_from_unix",
    "ntp_middle_32",
    "build_sender_report",
    "build_receiver_report",
    "parse_rtcp_untrusted",
    "rtcp_report_interval",
]

# Common header (§6.4.1):
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |V=2|P|   RC    |   PT=SR=200   |             length            |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                         SSRC of sender                        |
# +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
# |              NTP timestamp, most significant word             |  sender info,
# |             NTP timestamp, least significant word             |  SR only
# |                         RTP timestamp                         |
# |                     sender's packet count                     |
# |                      sender's octet count                     |
# +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
# |                 SSRC_1 (SSRC of first source)                 |  report block,
# | fraction lost |       cumulative number of packets lost       |  RC of them
# |           extended highest sequence number received           |
# |                      interarrival jitter                      |
# |                         last SR (LSR)                         |
# |                   delay since last SR (DLSR)                  |
# +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
# RR (PT=201) is the same without the sender info. SDES (202, §6.5) has SC chunks:
# an SSRC then items (type octet, length octet, text), ended by a null octet and
# padded to a 32-bit boundary. BYE (203, §6.6) has SC SSRCs and an optional
# reason (length octet, text), padded.
_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IIIII")
_REPORT_BLOCK = struct.Struct("!IIIIII")

_VERSION_BITS = 0x80
_PADDING_BIT = 0x20
_COUNT_MASK = 0x1F
_MAX_COUNT = 31

PACKET_TYPE_SR = 200
PACKET_TYPE_RR = 201
PACKET_TYPE_SDES = 202
PACKET_TYPE_BYE = 203
SDES_END = 0
SDES_CNAME = 1

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)."""


class RtcpError(Exception):
    """An RTCP packet from the network is malformed (it is logged and dropped)."""


def _u32(instance, attribute, value) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{attribute.name} must be a 32-bit unsigned integer, not {value!r}")


def _fraction(instance, attribute, value) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"fraction_lost must be 0..255 (fixed point /256), not {value!r}")


def _cumulative(instance, attribute, value) -> None:
    # A signed 24-bit field: duplicates can make the count negative (§6.4.1).
    if not isinstance(value, int) or not -0x800000 <= value <= 0x7FFFFF:
        raise ValueError(f"cumulative_lost must fit in signed 24 bits, not {value!r}")


@attrs.frozen(kw_only=True)
class ReportBlock:
    """Reception statistics about one source (§6.4.1)."""

    ssrc: int = attrs.field(validator=_u32)
    fraction_lost: int = attrs.field(validator=_fraction)
    cumulative_lost: int = attrs.field(validator=_cumulative)
    extended_highest_sequence: int = attrs.field(validator=_u32)
    jitter: int = attrs.field(validator=_u32)
    last_sender_report: int = attrs.field(validator=_u32)
    delay_since_last_sender_report: int = attrs.field(validator=_u32)


@attrs.frozen(kw_only=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    report_blocks: tuple[ReportBlock, ...]


@attrs.frozen(kw_only=True)
class ReceiverReport:
    ssrc: int
    report_blocks: tuple[ReportBlock, ...]


@attrs.frozen(kw_only=True)
class SourceDescription:
    """SDES: for each chunk's SSRC, its CNAME (None when the chunk carries none)."""

    chunks: tuple[tuple[int, str | None], ...]


@attrs.frozen(kw_only=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str | None


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye


def ntp_from_unix(unix_time: float) -> int:
    """The 64-bit NTP timestamp (32.32 fixed point since 1900) for a Unix time."""
    if unix_time < -NTP_UNIX_OFFSET:
        raise ValueError(f"unix time {unix_time!r} is before the NTP epoch")
    return round((unix_time + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle_32(ntp_timestamp: int) -> int:
    """The middle 32 bits of an NTP timestamp: an SR's identity in LSR (§6.4.1)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def _header(packet_type: int, count: int, length_octets: int) -> bytes:
    # length: "in 32-bit words minus one, including the header" (§6.4.1).
    return _HEADER.pack(_VERSION_BITS | count, packet_type, length_octets // 4 - 1)


def _pack_blocks(report_blocks) -> bytes:
    if len(report_blocks) > _MAX_COUNT:
        # More would need a second RR in the compound packet; a call has one peer.
        raise ValueError(f"at most {_MAX_COUNT} report blocks fit one report, got {len(report_blocks)}")
    return b"".join(
        _REPORT_BLOCK.pack(
            block.ssrc,
            (block.fraction_lost << 24) | (block.cumulative_lost & 0xFFFFFF),
            block.extended_highest_sequence,
            block.jitter,
            block.last_sender_report,
            block.delay_since_last_sender_report,
        )
        for block in report_blocks
    )


def _sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode("utf-8")
    if not 1 <= len(text) <= 255:
        raise ValueError(f"CNAME must be 1..255 octets of UTF-8, got {len(text)}")
    chunk = _SSRC.pack(ssrc) + bytes((SDES_CNAME, len(text))) + text
    # At least one null octet ends the item list, then pad to 32 bits (§6.5).
    chunk += b"\x00" * (4 - len(chunk) % 4)
    return _header(PACKET_TYPE_SDES, 1, 4 + len(chunk)) + chunk


def _ntp_value(ntp_time: float | int) -> int:
    if isinstance(ntp_time, float):
        return ntp_from_unix(ntp_time)
    if isinstance(ntp_time, int) and 0 <= ntp_time <= 0xFFFF_FFFF_FFFF_FFFF:
        return ntp_time
    raise ValueError(f"ntp_time must be float unix seconds or a 64-bit NTP value, not {ntp_time!r}")


def build_sender_report(
    *,
    ssrc: int,
    ntp_time: float | int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    report_blocks: tuple[ReportBlock, ...] | list[ReportBlock] = (),
    cname: str,
) -> bytes:
    """A compound SR + SDES(CNAME) packet.

    ``ntp_time`` is a float of Unix seconds (converted) or an int already in
    64-bit NTP format. ``rtp_timestamp`` must be the RTP time of that same
    instant (§6.4.1), not the timestamp of the last packet sent. The counts wrap
    at 2^32 as the fields do.
    """
    ntp = _ntp_value(ntp_time)
    body = _SSRC.pack(ssrc) + _SENDER_INFO.pack(
        ntp >> 32,
        ntp & 0xFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    )
    body += _pack_blocks(report_blocks)
    return _header(PACKET_TYPE_SR, len(report_blocks), 4 + len(body)) + body + _sdes_cname(ssrc, cname)


def build_receiver_report(
    *,
    ssrc: int,
    report_blocks: tuple[ReportBlock, ...] | list[ReportBlock] = (),
    cname: str,
) -> bytes:
    """A compound RR + SDES(CNAME) packet, for when we are not sending."""
    body = _SSRC.pack(ssrc) + _pack_blocks(report_blocks)
    return _header(PACKET_TYPE_RR, len(report_blocks), 4 + len(body)) + body + _sdes_cname(ssrc, cname)


def rtcp_report_interval(*, rng: random.Random | None = None, initial: bool = False, minimum: float = 5.0) -> float:
    """Seconds until our next report (RFC 3550 §6.3.1).

    With two participants and G.711's bandwidth the computed interval is below
    the minimum Tmin = 5 s, so T = Tmin (halved for the first report, §6.2);
    the result is T times a uniform draw in [0.5, 1.5], divided by e - 3/2 to
    compensate for timer reconsideration. The mean is thus about 4.1 s.
    """
    rng = rng if rng is not None else _interval_random
    base = minimum / 2 if initial else minimum
    return base * rng.uniform(0.5, 1.5) / (math.e - 1.5)


_interval_random = random.Random()


def _parse_blocks(data: memoryview, offset: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(
            ReportBlock(
                ssrc=ssrc,
                fraction_lost=lost >> 24,
                cumulative_lost=cumulative,
                extended_highest_sequence=highest,
                jitter=jitter,
                last_sender_report=lsr,
                delay_since_last_sender_report=dlsr,
            )
        )
        offset += _REPORT_BLOCK.size
    return tuple(blocks)


def _parse_sdes(body: memoryview, count: int, where: str) -> SourceDescription:
    chunks = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(body):
            raise RtcpError(f"{where}: SDES chunk {index + 1} of {count} truncated")
        (ssrc,) = _SSRC.unpack_from(body, offset)
        offset += 4
        cname = None
        while True:
            if offset >= len(body):
                raise RtcpError(f"{where}: SDES chunk {index + 1} has no end of its item list")
            item_type = body[offset]
            if item_type == SDES_END:
                # Skip the null octet and the padding to the next 32-bit boundary.
                offset = (offset + 4) & ~3
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtcpError(f"{where}: SDES item of type {item_type} truncated")
            length = body[offset + 1]
            if item_type == SDES_CNAME and cname is None:
                cname = bytes(body[offset + 2 : offset + 2 + length]).decode("utf-8", errors="replace")
            offset += 2 + length
        chunks.append((ssrc, cname))
    return SourceDescription(chunks=tuple(chunks))


def _parse_bye(body: memoryview, count: int, where: str) -> Bye:
    if 4 * count > len(body):
        raise RtcpError(f"{where}: BYE lists {count} SSRCs but has {len(body)} octets")
    ssrcs = tuple(_SSRC.unpack_from(body, 4 * index)[0] for index in range(count))
    reason = None
    offset = 4 * count
    if offset < len(body):
        length = body[offset]
        if offset + 1 + length > len(body):
            raise RtcpError(f"{where}: BYE reason of {length} octets truncated")
        reason = bytes(body[offset + 1 : offset + 1 + length]).decode("utf-8", errors="replace")
    return Bye(ssrcs=ssrcs, reason=reason)


def parse_rtcp_untrusted(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a compound RTCP packet into SR, RR, SDES and BYE records.

    Unknown packet types are skipped. Raises only :class:`RtcpError`, naming the
    packet (by its position in the compound) and what was wrong.
    """
    view = memoryview(data)
    if view.format != "B":
        view = view.cast("B")
    packets: list[RtcpPacket] = []
    offset = 0
    index = 0
    if len(view) < _HEADER.size:
        raise RtcpError(f"RTCP packet truncated: {len(view)} octets, a header needs 4")
    while offset < len(view):
        index += 1
        where = f"RTCP packet {index} at octet {offset}"
        if len(view) - offset < _HEADER.size:
            raise RtcpError(f"{where}: truncated header ({len(view) - offset} octets)")
        first, packet_type, length_words = _HEADER.unpack_from(view, offset)
        if first >> 6 != 2:
            raise RtcpError(f"{where}: RTCP version {first >> 6}, expected 2")
        size = 4 * (length_words + 1)
        if offset + size > len(view):
            raise RtcpError(f"{where}: length field says {size} octets, only {len(view) - offset} remain")
        body = view[offset + 4 : offset + size]
        if first & _PADDING_BIT:
            # Only the last packet of a compound may be padded (§6.4.1); the last
            # octet counts the padding, itself included.
            padding = body[-1] if len(body) else 0
            if offset + size != len(view) or padding == 0 or padding > len(body):
                raise RtcpError(f"{where}: invalid padding")
            body = body[: len(body) - padding]
        count = first & _COUNT_MASK
        if packet_type == PACKET_TYPE_SR:
            needed = 4 + _SENDER_INFO.size + count * _REPORT_BLOCK.size
            if len(body) < needed:
                raise RtcpError(f"{where}: SR with {count} report blocks needs {needed + 4} octets, has {len(body) + 4}")
            (ssrc,) = _SSRC.unpack_from(body, 0)
            ntp_high, ntp_low, rtp_timestamp, packet_count, octet_count = _SENDER_INFO.unpack_from(body, 4)
            packets.append(
                SenderReport(
                    ssrc=ssrc,
                    ntp_timestamp=(ntp_high << 32) | ntp_low,
                    rtp_timestamp=rtp_timestamp,
                    packet_count=packet_count,
                    octet_count=octet_count,
                    report_blocks=_parse_blocks(body, 4 + _SENDER_INFO.size, count),
                )
            )
        elif packet_type == PACKET_TYPE_RR:
            needed = 4 + count * _REPORT_BLOCK.size
            if len(body) < needed:
                raise RtcpError(f"{where}: RR with {count} report blocks needs {needed + 4} octets, has {len(body) + 4}")
            (ssrc,) = _SSRC.unpack_from(body, 0)
            packets.append(ReceiverReport(ssrc=ssrc, report_blocks=_parse_blocks(body, 4, count)))
        elif packet_type == PACKET_TYPE_SDES:
            packets.append(_parse_sdes(body, count, where))
        elif packet_type == PACKET_TYPE_BYE:
            packets.append(_parse_bye(body, count, where))
        offset += size
    return packets
