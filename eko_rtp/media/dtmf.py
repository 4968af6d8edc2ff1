"""DTMF digits from RFC 4733 telephone-events and from SIP INFO dtmf-relay bodies.

Theory of operation: a sender repeats a telephone-event packet every 50 ms or so
while a key is held, with a growing duration, then sends the end packet three
times (RFC 4733 §2.5.1.4). Every packet of one event carries the event's start
RTP timestamp (§2.5.1.2), so that timestamp, not the marker bit (some carriers
never set it) nor the sequence number, identifies a key press.
:class:`DtmfDetector` reports a digit on the FIRST packet it sees of a new event
(lowest latency; a lost end packet cannot lose the digit) and ignores every later
packet with the same timestamp, including the redundant end packets, and any late
packet of an earlier event. Events longer than the 16-bit duration field are sent
as segments whose timestamp moves on by the previous segment's duration
(§2.5.1.3); a segment continuing an open event is not a new press.
"""

from __future__ import annotations

import struct

import attrs

from eko_rtp.media.sequence import timestamp_diff

__all__ = [
    "DtmfError",
    "TelephoneEvent",
    "DtmfDetector",
    "EVENT_DIGITS",
    "digit_for_event",
    "parse_telephone_event_untrusted",
    "peek_telephone_event_untrusted",
    "parse_dtmf_relay_untrusted",
    "parse_info_dtmf_untrusted",
]

# RFC 4733 §2.3 payload:
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     event     |E|R| volume    |          duration             |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_EVENT = struct.Struct("!BBH")
_END_BIT = 0x80
_VOLUME_MASK = 0x3F

# RFC 4733 §3.2, table 3: events 0-15 are the DTMF keys.
EVENT_DIGITS = "0123456789*#ABCD"


class DtmfError(Exception):
    """A DTMF payload or INFO body from the network is malformed."""


@attrs.frozen(kw_only=True)
class TelephoneEvent:
    event: int = attrs.field()
    end: bool
    volume: int
    duration: int

    @event.validator
    def _check_event(self, attribute, value) -> None:
        if not 0 <= value <= 255:
            raise ValueError(f"event must be 0..255, not {value!r}")


def digit_for_event(event: int) -> str | None:
    """The DTMF key for an event code, or None for non-DTMF events (tones, flash)."""
    return EVENT_DIGITS[event] if 0 <= event < len(EVENT_DIGITS) else None


def peek_telephone_event_untrusted(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[int, bool, int]:
    """``(event, end bit, duration)`` of the RFC 4733 payload at ``data[start:end]``.

    The receive path's per-packet form of :func:`parse_telephone_event_untrusted`
    (no slice, no object). Raises only :class:`DtmfError`.
    """
    if end - start < _EVENT.size:
        raise DtmfError(f"telephone-event payload truncated: {max(0, end - start)} octets, needs 4")
    event, flags, duration = _EVENT.unpack_from(data, start)
    return event, bool(flags & _END_BIT), duration


def parse_telephone_event_untrusted(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """Parse an RFC 4733 payload; raises only :class:`DtmfError`.

    A payload may hold more than one 4-octet block (redundancy); the first is
    the current event.
    """
    if len(payload) < _EVENT.size:
        raise DtmfError(f"telephone-event payload truncated: {len(payload)} octets, needs 4")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return TelephoneEvent(event=event, end=bool(flags & _END_BIT), volume=flags & _VOLUME_MASK, duration=duration)


class DtmfDetector:
    """Turns a stream of telephone-event packets into key presses, each once."""

    __slots__ = ("_timestamp", "_event", "_ended", "_duration")

    def __init__(self) -> None:
        self._timestamp: int | None = None  # start timestamp of the newest event
        self._event = -1
        self._ended = False
        self._duration = 0

    def feed(self, *, event: TelephoneEvent, rtp_timestamp: int, marker: bool = False) -> str | None:
        """Account for one packet; the digit when it starts a new key press.

        ``marker`` is accepted for the record but not relied upon.
        """
        return self.feed_fields(event.event, event.end, event.duration, rtp_timestamp)

    def feed_fields(self, event: int, end: bool, duration: int, rtp_timestamp: int) -> str | None:
        """:meth:`feed` on the payload's fields as :func:`peek_telephone_event_untrusted` gives
        them: the receive path's form, which makes no object per packet."""
        previous = self._timestamp
        if previous is not None:
            delta = timestamp_diff(rtp_timestamp, previous)
            if delta == 0:
                # Another packet of the current event (update or redundant end).
                self._ended = self._ended or end
                if duration > self._duration:
                    self._duration = duration
                return None
            if delta < 0:
                return None  # a late packet of an event already handled
            if event == self._event and not self._ended and delta <= self._duration:
                # §2.5.1.3: the next segment of a long event, not a new press.
                self._timestamp = rtp_timestamp
                self._duration = duration
                self._ended = end
                return None
        self._timestamp = rtp_timestamp
        self._event = event
        self._ended = end
        self._duration = duration
        return digit_for_event(event)


_RELAY_SIGNALS = {**{character: character for character in EVENT_DIGITS}, "10": "*", "11": "#"}
_MAX_RELAY_BODY = 1024


def parse_dtmf_relay_untrusted(body: bytes) -> tuple[str, int | None]:
    """Parse an ``application/dtmf-relay`` INFO body: ``(digit, duration_ms)``.

    The body is ``Signal=5`` and ``Duration=160`` lines (CRLF or LF; keys in any
    case; spaces around ``=`` tolerated). Signal may be 0-9, *, #, A-D (either
    case), or 10/11 as some gateways write * and #. A missing Duration gives None.
    Raises only :class:`DtmfError`.
    """
    if len(body) > _MAX_RELAY_BODY:
        raise DtmfError(f"dtmf-relay body too long: {len(body)} octets (limit {_MAX_RELAY_BODY})")
    try:
        text = bytes(body).decode("ascii")
    except UnicodeDecodeError as error:
        raise DtmfError(f"dtmf-relay body is not ASCII (octet {error.start})") from None
    digit = None
    duration = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise DtmfError(f"dtmf-relay line {number}: expected key=value, got {line!r}")
        key = key.strip().lower()
        value = value.strip()
        if key == "signal":
            digit = _RELAY_SIGNALS.get(value.upper())
            if digit is None:
                raise DtmfError(f"dtmf-relay line {number}: Signal {value!r} is not a DTMF key")
        elif key == "duration":
            if not value.isdigit() or len(value) > 6:
                raise DtmfError(f"dtmf-relay line {number}: Duration {value!r} is not a number of milliseconds")
            duration = int(value)
    if digit is None:
        raise DtmfError("dtmf-relay body has no Signal line")
    return digit, duration


def parse_info_dtmf_untrusted(media_type: str, body: bytes) -> tuple[str, int | None]:
    """A SIP INFO's DTMF body by its media type: ``(digit, duration_ms)``.

    ``application/dtmf-relay`` is the ``Signal=``/``Duration=`` form above;
    ``application/dtmf`` carries the key alone (``5``, ``*``, ``10`` for *), with
    no duration. Raises only :class:`DtmfError`.
    """
    if media_type == "application/dtmf-relay":
        return parse_dtmf_relay_untrusted(body)
    if media_type != "application/dtmf":
        raise DtmfError(f"{media_type!r} is not a DTMF body type")
    if len(body) > _MAX_RELAY_BODY:
        raise DtmfError(f"dtmf body too long: {len(body)} octets (limit {_MAX_RELAY_BODY})")
    try:
        key = bytes(body).decode("ascii").strip()
    except UnicodeDecodeError as error:
        raise DtmfError(f"dtmf body is not ASCII (octet {error.start})") from None
    digit = _RELAY_SIGNALS.get(key.upper())
    if digit is None:
        raise DtmfError(f"dtmf body {key!r} is not a DTMF key")
    return digit, None
