"""RTP data packets (RFC 3550 §5): our sender's headers, the peer's packets, and
reception statistics for RTCP.

Theory of operation: on the send side the header is all that changes per packet,
so :class:`RtpSender` owns ONE 12-octet ``bytearray`` and rewrites it in place
with ``struct.pack_into``; the shell hands it with the cached payload to
``sendmsg([header, payload])`` before asking for the next one, so nothing is
allocated or copied per packet. SSRC, first sequence number and first timestamp
are random (§5.1: "SHOULD be random (unpredictable)"). On the receive side,
:func:`parse_rtp_untrusted` validates a datagram and returns a payload view into
it, and :class:`ReceiverStatistics` runs the Appendix A algorithms (A.1 sequence
validation, A.3 loss, A.8 jitter) that fill an RTCP report block.
"""

from __future__ import annotations

import os
import random
import secrets
import struct

import attrs

from eko_rtp.codec.frame import SAMPLES_PER_FRAME
from eko_rtp.media.rtcp import ReportBlock

__all__ = [
    "RtpError",
    "RtpPacket",
    "RtpSender",
    "ReceiverStatistics",
    "parse_rtp_untrusted",
    "peek_rtp_untrusted",
    "payload_bounds_untrusted",
    "is_rtcp",
    "HEADER_SIZE",
]

# Fixed header (§5.1); CSRCs and the extension follow only when CC / X say so:
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |V=2|P|X|  CC   |M|     PT      |       sequence number         |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                           timestamp                           |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |           synchronization source (SSRC) identifier            |
# +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
# |            contributing source (CSRC) identifiers             |
# |                             ....                              |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# Header extension (§5.3.1):
# |      defined by profile       |           length              |
# |                        header extension                       |   length words
_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
HEADER_SIZE = _HEADER.size

_VERSION_2 = 0x80
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_CSRC_COUNT_MASK = 0x0F
_MARKER_BIT = 0x80
_PAYLOAD_TYPE_MASK = 0x7F


class RtpError(Exception):
    """An RTP packet from the network is malformed (the shell counts and drops it)."""


def _payload_type(instance, attribute, value) -> None:
    if not isinstance(value, int) or not 0 <= value <= 127:
        raise ValueError(f"{attribute.name} must be 0..127, not {value!r}")


@attrs.frozen(kw_only=True)
class RtpPacket:
    """One received RTP packet; ``payload`` is a view into the datagram."""

    marker: bool
    payload_type: int = attrs.field(validator=_payload_type)
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes | None = None
    padding: int = 0
    payload: memoryview


def parse_rtp_untrusted(data: bytes | bytearray | memoryview) -> RtpPacket:
    """Parse one RTP datagram, raising only :class:`RtpError` with what was wrong."""
    view = memoryview(data)
    start, end = payload_bounds_untrusted(view)  # every length and the version checked here
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(view, 0)
    csrc_count = first & _CSRC_COUNT_MASK
    csrcs = struct.unpack_from(f"!{csrc_count}I", view, HEADER_SIZE) if csrc_count else ()
    extension_profile = None
    extension = None
    if first & _EXTENSION_BIT:
        offset = HEADER_SIZE + 4 * csrc_count
        extension_profile = _EXTENSION_HEADER.unpack_from(view, offset)[0]
        extension = bytes(view[offset + 4 : start])
    return RtpPacket(
        marker=bool(second & _MARKER_BIT),
        payload_type=second & _PAYLOAD_TYPE_MASK,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        extension_profile=extension_profile,
        extension=extension,
        padding=len(view) - end,
        payload=view[start:end],
    )


def python_payload_bounds_untrusted(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Where the payload of an RTP datagram starts and ends: ``(start, end)`` offsets.

    Past the fixed header, the CSRCs (§5.1, CC), the header extension (§5.3.1, X)
    and before the padding (§5.1, P). Allocates nothing but the pair, so the
    receive path can use it per packet. Raises only :class:`RtpError`.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise RtpError(f"RTP packet truncated: {size} octets, the fixed header needs {HEADER_SIZE}")
    first = data[0]
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    csrc_count = first & _CSRC_COUNT_MASK
    start = HEADER_SIZE + 4 * csrc_count
    if size < start:
        raise RtpError(f"RTP packet truncated: {size} octets, a header with {csrc_count} CSRCs needs {start}")
    if first & _EXTENSION_BIT:
        if size < start + 4:
            raise RtpError(f"RTP packet truncated: {size} octets, the header extension starts at {start} and needs 4")
        extension_words = _EXTENSION_HEADER.unpack_from(data, start)[1]
        extension_end = start + 4 + 4 * extension_words
        if size < extension_end:
            raise RtpError(
                f"RTP packet truncated: {size} octets, the header extension of {extension_words} words needs {extension_end}")
        start = extension_end
    end = size
    if first & _PADDING_BIT:
        # §5.1: "The last octet of the padding contains a count of how many
        # padding octets should be ignored, including itself."
        padding = data[-1]
        if padding == 0 or padding > size - start:
            raise RtpError(f"RTP padding count {padding} invalid: {size - start} octets follow the header")
        end = size - padding
    return start, end


def peek_rtp_untrusted(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """The fixed header's ``(marker and payload type octet, sequence, timestamp, SSRC)``.

    The receive path's per-packet look: it checks length and version and reads
    nothing past the fixed header, so most packets (audio) cost one ``unpack``;
    packets whose payload matters (telephone-events) go through
    :func:`parse_rtp_untrusted`, which honours CSRCs, the extension and padding.
    Raises only :class:`RtpError`.
    """
    if len(data) < HEADER_SIZE:
        raise RtpError(f"RTP packet truncated: {len(data)} octets, the fixed header needs {HEADER_SIZE}")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data, 0)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    return second, sequence, timestamp, ssrc


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram on an rtcp-mux port is RTCP rather than RTP.

    RFC 5761 §4: RTCP packet types 192-223 occupy the second octet where RTP
    has M + PT; RTP payload types 64-95 are avoided so the ranges never meet.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


class PythonRtpSender:
    """Header state of our outgoing stream (one per call); :data:`RtpSender` is this
    or its compiled twin (media/_rtp.c).

    ``rng`` supplies SSRC, first sequence number and first timestamp; the default
    draws from :mod:`secrets` (RFC 3550 §5.1 wants them unpredictable, which also
    makes a known-plaintext attack on SRTP harder should we ever add it).
    """

    __slots__ = ("ssrc", "payload_type", "_sequence", "_timestamp", "_header", "packets_sent", "octets_sent")

    def __init__(self, *, payload_type: int, rng: random.Random | None = None):
        rng = rng if rng is not None else secrets.SystemRandom()
        self._check_payload_type(payload_type)
        self.payload_type = payload_type
        self.ssrc = rng.getrandbits(32)
        self._sequence = rng.getrandbits(16)
        self._timestamp = rng.getrandbits(32)
        self._header = bytearray(HEADER_SIZE)
        self.packets_sent = 0
        self.octets_sent = 0

    @staticmethod
    def _check_payload_type(payload_type: int) -> None:
        if not isinstance(payload_type, int) or isinstance(payload_type, bool) or not 0 <= payload_type <= 127:
            raise ValueError(f"payload type must be 0..127, not {payload_type!r}")

    @property
    def next_sequence(self) -> int:
        """The sequence number the next header will carry."""
        return self._sequence

    @property
    def next_timestamp(self) -> int:
        """The RTP timestamp the next header will carry."""
        return self._timestamp

    def set_payload_type(self, payload_type: int) -> None:
        """Switch codec after a re-INVITE; sequence and timestamp run on (§5.1)."""
        self._check_payload_type(payload_type)
        self.payload_type = payload_type

    def header_for_next_frame(self, marker: bool = False) -> bytearray:
        """Write the next packet's header into the shared buffer and return it.

        One frame is 20 ms of G.711: 160 samples and 160 octets. The same
        ``bytearray`` comes back every time: send it before the next call.
        ``marker`` is for the first packet of a talkspurt only (RFC 3551 §4.1).
        The timestamp then advances by 160 and the sequence number by one. This
        runs for every frame of every call, hence the locals.
        """
        sequence = self._sequence
        timestamp = self._timestamp
        _HEADER.pack_into(
            self._header,
            0,
            _VERSION_2,
            (_MARKER_BIT | self.payload_type) if marker else self.payload_type,
            sequence,
            timestamp,
            self.ssrc,
        )
        self._sequence = (sequence + 1) & 0xFFFF
        self._timestamp = (timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += SAMPLES_PER_FRAME
        return self._header

    def rewind(self, samples: int) -> None:
        """Take back part of the frame just counted: the next frame is sampled
        ``samples`` earlier than one frame after the last (a talkspurt started early,
        RFC 3551 §4.1: the timestamp is the sampling instant). At most one frame."""
        if not 0 <= samples <= SAMPLES_PER_FRAME:
            raise ValueError(f"can rewind 0..{SAMPLES_PER_FRAME} samples, not {samples}")
        self._timestamp = (self._timestamp - samples) & 0xFFFFFFFF

    def skip(self, samples: int) -> None:
        """Advance the timestamp over a silence we do not send (RFC 3551 §4.1:
        the timestamp keeps counting sampling instants through a pause)."""
        if samples < 0:
            raise ValueError(f"cannot skip a negative number of samples ({samples})")
        self._timestamp = (self._timestamp + samples) & 0xFFFFFFFF


# RFC 3550 Appendix A.1 constants.
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_MIN_SEQUENTIAL = 2
_SEQUENCE_MOD = 1 << 16


class PythonStatisticsState:
    """What :class:`ReceiverStatistics` keeps of the caller's stream, and the
    per-packet steps that keep it: A.1 sequence validation and A.8 jitter.

    The reference code; ``StatisticsState`` is this or its compiled twin
    (media/_rtp.c), which tests/test_rtp.py holds to the same tables.
    """

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = (
        "clock_rate", "ssrc", "_started", "_probation", "_max_seq", "_cycles", "_base_seq", "_bad_seq", "received",
        "_expected_prior", "_received_prior", "_transit", "_jitter", "_last_sr", "_last_sr_arrival",
    )

    def __init__(self, *, clock_rate: int = 8000):
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, not {clock_rate!r}")
        self.clock_rate = clock_rate
        self._reset(ssrc=None)

    def _reset(self, *, ssrc: int | None) -> None:
        self.ssrc = ssrc
        self._started = False
        self._probation = _MIN_SEQUENTIAL
        self._max_seq = 0
        self._cycles = 0
        self._base_seq = 0
        self._bad_seq = _SEQUENCE_MOD + 1
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0
        self._last_sr: int = 0
        self._last_sr_arrival: float | None = None

    def _init_seq(self, sequence: int) -> None:
        self._base_seq = sequence
        self._max_seq = sequence
        self._bad_seq = _SEQUENCE_MOD + 1
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0

    def _update_seq(self, sequence: int) -> bool:
        # Appendix A.1, update_seq(), kept close to the RFC's structure.
        udelta = (sequence - self._max_seq) & 0xFFFF
        if self._probation:
            if sequence == (self._max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self._max_seq = sequence
                if self._probation == 0:
                    self._init_seq(sequence)
                    self.received += 1
                    return True
            else:
                self._probation = _MIN_SEQUENTIAL - 1
                self._max_seq = sequence
            return False
        if udelta < _MAX_DROPOUT:
            if sequence < self._max_seq:
                self._cycles += _SEQUENCE_MOD
            self._max_seq = sequence
        elif udelta <= _SEQUENCE_MOD - _MAX_MISORDER:
            if sequence == self._bad_seq:
                # Two sequential packets after a big jump: the sender restarted.
                self._init_seq(sequence)
            else:
                self._bad_seq = (sequence + 1) & 0xFFFF
                return False
        # else: a duplicate or reordered packet, counted below.
        self.received += 1
        return True

    def feed(self, sequence: int, rtp_timestamp: int, arrival_time: float | None, ssrc: int | None = None) -> bool:
        """Account for one packet; False when A.1 rejects it (probation, jump).

        ``arrival_time`` None counts the packet for loss but not for jitter: RFC 4733
        event packets repeat their event's start timestamp, so their transit times
        say nothing about the network (A.8 assumes timestamps at sampling instants).
        """
        if ssrc is None and not self._probation and self._started and sequence == (self._max_seq + 1) & 0xFFFF:
            # The common case, every packet of a healthy stream: the next in order.
            # What _update_seq does for it, without the branches.
            if sequence == 0:
                self._cycles += _SEQUENCE_MOD
            self._max_seq = sequence
            self.received += 1
            if arrival_time is not None:
                self._update_jitter(rtp_timestamp, arrival_time)
            return True
        if ssrc is not None and ssrc != self.ssrc:
            # A new SSRC is a new source: statistics start over (§8.2).
            self._reset(ssrc=ssrc)
        if not self._started:
            # The first packet of a source: A.1 init_seq(), then probation.
            self._started = True
            self._init_seq(sequence)
            self._max_seq = (sequence - 1) & 0xFFFF
        accepted = self._update_seq(sequence)
        if accepted and arrival_time is not None:
            self._update_jitter(rtp_timestamp, arrival_time)
        return accepted

    def _update_jitter(self, rtp_timestamp: int, arrival_time: float) -> None:
        # Appendix A.8: transit time in timestamp units; jitter is its
        # smoothed mean deviation, J += (|D| - J) / 16.
        transit = arrival_time * self.clock_rate - rtp_timestamp
        if self._transit is not None:
            # Timestamps wrap at 2^32: fold the difference back.
            delta = (transit - self._transit + (1 << 31)) % (1 << 32) - (1 << 31)
            self._jitter += (abs(delta) - self._jitter) / 16
        self._transit = transit


class StatisticsReports:
    """What RTCP reads of either statistics state (A.3 loss, the report block)."""

    __slots__ = ()

    @property
    def extended_highest_sequence(self) -> int:
        return (self._cycles + self._max_seq) & 0xFFFFFFFF

    @property
    def expected(self) -> int:
        """Packets expected so far (A.3)."""
        if self.received == 0:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received; negative when duplicates arrived (A.3)."""
        lost = self.expected - self.received
        return max(-0x800000, min(0x7FFFFF, lost))

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units, as a report block carries it."""
        return int(self._jitter)

    def note_sender_report(self, *, ntp_timestamp: int, arrival_time: float) -> None:
        """Remember the peer's last SR for LSR/DLSR (§6.4.1)."""
        self._last_sr = (ntp_timestamp >> 16) & 0xFFFFFFFF
        self._last_sr_arrival = arrival_time

    def report_block(self, *, now: float) -> ReportBlock:
        """The report block for the next RTCP report; resets the interval counts."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        # A.3: fraction lost is an 8-bit fixed point, 0 when packets were duplicated.
        fraction = 0 if expected_interval == 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        if self._last_sr_arrival is None:
            delay = 0
        else:
            delay = max(0, min(0xFFFFFFFF, int((now - self._last_sr_arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc if self.ssrc is not None else 0,
            fraction_lost=min(fraction, 255),
            cumulative_lost=self.cumulative_lost,
            extended_highest_sequence=self.extended_highest_sequence,
            jitter=self.jitter,
            last_sender_report=self._last_sr,
            delay_since_last_sender_report=delay,
        )


# The compiled twins (media/_rtp.c) when they were built, else the classes and the
# payload bounds above; both pass tests/test_rtp.py. EKO_RTP_PURE_PYTHON=1 takes the Python ones (to compare).
RtpSender: type = PythonRtpSender
StatisticsState: type = PythonStatisticsState
payload_bounds_untrusted = python_payload_bounds_untrusted
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.media import _rtp
    except ImportError:
        pass
    else:
        _rtp.bind_rtp_error(RtpError)
        RtpSender, StatisticsState = _rtp.RtpSender, _rtp.StatisticsState
        payload_bounds_untrusted = _rtp.payload_bounds_untrusted


class ReceiverStatistics(StatisticsReports, StatisticsState):
    """Reception statistics for one remote source, per RFC 3550 Appendix A.

    Feed each packet's sequence number, RTP timestamp and arrival time (seconds
    on any monotonic clock); :meth:`report_block` then gives the block for our
    next SR or RR. A source is counted only after ``MIN_SEQUENTIAL`` packets in
    sequence (A.1 probation); a jump of more than ``MAX_DROPOUT`` is taken as a
    restarted sender once two packets confirm it.
    """

    __slots__ = ()
