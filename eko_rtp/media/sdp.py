"""SDP (RFC 4566) parsing and the offer/answer model (RFC 3264) for one audio stream.

Theory of operation: :func:`parse_sdp_untrusted` turns a body into a
:class:`SessionDescription`, checking only what we rely on and skipping every line
type and attribute it does not know (RFC 4566 §5: "unknown attributes ... MUST be
ignored"). :func:`negotiate_answer` then takes the first usable audio stream (RTP/AVP,
non-zero port), picks one G.711 codec and the telephone-event payload type, and
writes a lean answer: one ``m=`` line per offered one, in order, the others
rejected with port 0 (RFC 3264 §6). The result is a :class:`MediaPlan` for the
media shell. When a re-INVITE comes without SDP we make the offer
(:func:`build_offer`) and read the ACK's answer with :func:`apply_answer`.

SRTP (RFC 3711) with SDES keys (RFC 4568): an audio stream may be ``RTP/SAVP``
when the caller lets it (``protocols``). This module only reads and writes what
the SDP says: the ``a=crypto`` values of the chosen stream
(:attr:`MediaDescription.crypto`), the profile echoed in the answer (RFC 3264 §6:
the answer keeps the offered transport), and our one ``a=crypto`` line; which
suite and which keys, and whether keys may travel at all, are decided in
``media/negotiation.py`` with ``media/sdes.py``. ``RTP/SAVPF`` is never taken:
it promises the RTCP feedback of RFC 4585 (early reports, NACK/PLI), which we do
not give, so such a stream is rejected (port 0) like any other we cannot do.

Origin versions (RFC 3264 §8): every SDP we send in a session carries the same
session id; the version must grow by one exactly when the description changes.
:func:`negotiate_reanswer` does that comparison for a re-INVITE.
"""

from __future__ import annotations

import enum
import os
import random
import re

import attrs

from eko_rtp.media.sdes import CryptoAnswer, CryptoOffer, SdesError, SrtpKeys, accept_answer_untrusted

__all__ = [
    "SdpError",
    "Direction",
    "SdpOrigin",
    "RtpMap",
    "MediaDescription",
    "SessionDescription",
    "Codec",
    "MediaPlan",
    "CLEAR_PROTOCOL",
    "SECURE_PROTOCOL",
    "parse_sdp_untrusted",
    "choose_audio_stream",
    "negotiate_answer",
    "negotiate_reanswer",
    "build_offer",
    "apply_answer",
]

MAX_SDP_SIZE = 16 * 1024
SUPPORTED_CODECS = ("PCMU", "PCMA")
# RFC 3551 §6, table 4: the static payload types we may meet without a=rtpmap.
_STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_CODEC_STATIC_TYPES = {"PCMU": 0, "PCMA": 8}
CLEAR_PROTOCOL = "RTP/AVP"  # RFC 3551
SECURE_PROTOCOL = "RTP/SAVP"  # RFC 3711 §12
MAX_CRYPTO_ATTRIBUTES = 32  # a=crypto lines in one m= section (an offer lists a few suites)
_PTIME = 20
_HELD_ADDRESSES = ("0.0.0.0", "::")
_SPACE = re.compile(r"\s")  # str.isspace's characters, found by one C scan
_session_random = random.Random()


class SdpError(Exception):
    """An SDP body we cannot use; ``status`` is the SIP response to send.

    400 when the body does not parse, 488 (Not Acceptable Here) when it parses
    but offers nothing we can do. ``warning`` is the RFC 3261 §20.43 code a 488
    carries in its Warning header: 305 (incompatible media format) when no codec
    is in common, 399 (miscellaneous) for the rest, whose reasons (the RTP/SAVP
    profile, the keys, the signalling's security) no 3xx code names.
    """

    def __init__(self, message: str, *, status: int, warning: int = 399):
        super().__init__(message)
        self.status = status
        self.warning = warning


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    def answer(self) -> Direction:
        """The answerer's direction for this offered one (RFC 3264 §6.1)."""
        return _ANSWER_DIRECTION[self]

    @classmethod
    def from_flags(cls, *, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE


_ANSWER_DIRECTION = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTIONS = {direction.value: direction for direction in Direction}


def _non_negative(instance, attribute, value) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer, not {value!r}")


def _port(instance, attribute, value) -> None:
    if not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0..65535, not {value!r}")


def _payload_type(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, int) or not 0 <= value <= 127):
        raise ValueError(f"{attribute.name} must be 0..127, not {value!r}")


def _token(instance, attribute, value) -> None:
    if not isinstance(value, str) or not value or _SPACE.search(value):
        raise ValueError(f"{attribute.name} must be a non-empty string without spaces, not {value!r}")


@attrs.frozen(kw_only=True)
class SdpOrigin:
    """The o= line: who made the description, and which version of it it is."""

    username: str = attrs.field(default="-", validator=_token)
    session_id: int = attrs.field(validator=_non_negative)
    version: int = attrs.field(validator=_non_negative)
    address: str = attrs.field(validator=_token)

    @classmethod
    def create(cls, *, address: str, rng: random.Random | None = None) -> SdpOrigin:
        """A fresh origin for a new session: a random session id (RFC 4566 §5.2
        wants it globally unique with the address), version 1."""
        rng = rng if rng is not None else _session_random
        return cls(session_id=rng.getrandbits(62), version=1, address=address)

    def next_version(self) -> SdpOrigin:
        """This origin for a changed description (RFC 3264 §8: version + 1)."""
        return attrs.evolve(self, version=self.version + 1)

    def to_line(self) -> str:
        return f"o={self.username} {self.session_id} {self.version} IN {_address_type(self.address)} {self.address}"


@attrs.frozen(kw_only=True)
class RtpMap:
    """An a=rtpmap (or the static meaning of a payload type without one)."""

    payload_type: int = attrs.field(validator=_payload_type)
    encoding: str
    clock_rate: int = attrs.field(validator=_non_negative)
    channels: int = 1


@attrs.frozen(kw_only=True)
class MediaDescription:
    """One m= section, with session-level c= and direction already folded in."""

    media: str
    port: int = attrs.field(validator=_port)
    protocol: str
    formats: tuple[str, ...]
    connection_address: str | None
    rtpmaps: dict[int, RtpMap] = attrs.field(factory=dict)
    fmtps: dict[int, str] = attrs.field(factory=dict)
    ptime: int | None = None
    maxptime: int | None = None
    direction: Direction = Direction.SENDRECV
    rtcp_port: int | None = None
    rtcp_address: str | None = None
    rtcp_mux: bool = False
    crypto: tuple[str, ...] = ()  # the a=crypto values (after "a=crypto:"), in order: secrets
    line: int = 0

    def __repr__(self) -> str:
        # a=crypto values hold keys: never in a repr, a log line or a traceback.
        return (f"MediaDescription(media={self.media!r}, port={self.port}, protocol={self.protocol!r}, "
                f"formats={self.formats!r}, crypto=<{len(self.crypto)} attribute(s)>, line={self.line})")

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The payload type's mapping: its a=rtpmap, or the static one (RFC 3551)."""
        mapping = self.rtpmaps.get(payload_type)
        if mapping is None and payload_type in _STATIC_PAYLOAD_TYPES:
            name, rate = _STATIC_PAYLOAD_TYPES[payload_type]
            mapping = RtpMap(payload_type=payload_type, encoding=name, clock_rate=rate)
        return mapping

    @property
    def held(self) -> bool:
        """RFC 2543 hold: c=0.0.0.0 means "send me nothing" (RFC 3264 §8.4)."""
        return self.connection_address in _HELD_ADDRESSES


@attrs.frozen(kw_only=True)
class SessionDescription:
    origin: SdpOrigin | None
    media: tuple[MediaDescription, ...]


@attrs.frozen(kw_only=True)
class Codec:
    name: str = attrs.field(validator=attrs.validators.in_(SUPPORTED_CODECS))
    payload_type: int = attrs.field(validator=_payload_type)


def _endpoint(instance, attribute, value) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)):
        raise ValueError(f"{attribute.name} must be a (host, port) tuple or None, not {value!r}")
    if not 1 <= value[1] <= 65535:
        raise ValueError(f"{attribute.name} port must be 1..65535, not {value[1]!r}")


@attrs.frozen(kw_only=True)
class MediaPlan:
    """What the media shell does for a call, as negotiated.

    ``remote_rtp`` is None when the peer gave no address to send to (held with
    c=0.0.0.0); then ``send_audio`` is False as well.
    """

    codec: Codec
    telephone_event_payload_type: int | None = attrs.field(validator=_payload_type)
    remote_rtp: tuple[str, int] | None = attrs.field(validator=_endpoint)
    remote_rtcp: tuple[str, int] | None = attrs.field(validator=_endpoint)
    rtcp_mux: bool
    send_audio: bool
    receive_audio: bool
    ptime: int = _PTIME
    # SRTP keys when the stream is RTP/SAVP (media/srtp.py builds the call's contexts
    # from them), None for RTP/AVP.
    srtp_keys: SrtpKeys | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(SrtpKeys)))

    def __attrs_post_init__(self) -> None:
        if self.send_audio and self.remote_rtp is None:
            raise ValueError("send_audio needs a remote_rtp address")


# ---------------------------------------------------------------- parsing


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _bad(number: int, line: str, why: str) -> SdpError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return SdpError(f"SDP line {number} ({shown!r}): {why}", status=400)


def _parse_int(text: str, number: int, line: str, what: str, maximum: int) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > maximum:
        raise _bad(number, line, f"{what} {text!r} is not a number in 0..{maximum}")
    return int(text)


def _parse_connection(value: str, number: int, line: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise _bad(number, line, "expected c=IN IP4 <address> or c=IN IP6 <address>")
    # A multicast address may carry /ttl/count (RFC 4566 §5.7); the host is first.
    return parts[2].split("/", 1)[0]


def _parse_origin(value: str, number: int, line: str) -> SdpOrigin:
    parts = value.split()
    if len(parts) != 6 or parts[3] != "IN":
        raise _bad(number, line, "expected o=<username> <session id> <version> IN <IP4|IP6> <address>")
    session_id = _parse_int(parts[1], number, line, "session id", (1 << 64) - 1)
    version = _parse_int(parts[2], number, line, "session version", (1 << 64) - 1)
    return SdpOrigin(username=parts[0], session_id=session_id, version=version, address=parts[5])


class _MediaBuilder:
    """The mutable state of one m= section while its lines are read."""

    def __init__(self, value: str, number: int, line: str):
        parts = value.split()
        if len(parts) < 4:
            raise _bad(number, line, "expected m=<media> <port> <protocol> <format> ...")
        port_text = parts[1].split("/", 1)[0]  # "<port>/<number of ports>"
        self.media = parts[0]
        self.port = _parse_int(port_text, number, line, "port", 65535)
        self.protocol = parts[2]
        self.formats = tuple(parts[3:])
        self.line = number
        self.connection_address: str | None = None
        self.rtpmaps: dict[int, RtpMap] = {}
        self.fmtps: dict[int, str] = {}
        self.ptime: int | None = None
        self.maxptime: int | None = None
        self.direction: Direction | None = None
        self.rtcp_port: int | None = None
        self.rtcp_address: str | None = None
        self.rtcp_mux = False
        self.crypto: list[str] = []

    def attribute(self, name: str, value: str, number: int, line: str) -> None:
        if name == "rtpmap":
            payload_text, _, encoding = value.partition(" ")
            payload_type = _parse_int(payload_text, number, line, "payload type", 127)
            fields = encoding.strip().split("/")
            if len(fields) not in (2, 3) or not fields[0]:
                raise _bad(number, line, "expected a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]")
            clock_rate = _parse_int(fields[1], number, line, "clock rate", 1_000_000)
            channels = _parse_int(fields[2], number, line, "channel count", 255) if len(fields) == 3 else 1
            self.rtpmaps[payload_type] = RtpMap(
                payload_type=payload_type, encoding=fields[0], clock_rate=clock_rate, channels=channels
            )
        elif name == "fmtp":
            payload_text, _, parameters = value.partition(" ")
            if payload_text.isascii() and payload_text.isdigit() and int(payload_text) <= 127:
                self.fmtps[int(payload_text)] = parameters.strip()
            # An fmtp for a non-RTP format (e.g. a T.38 or WebRTC stream) is not ours.
        elif name in ("ptime", "maxptime"):
            # We always send 20 ms (RFC 3551 §4.5 default for G.711), so a
            # malformed packet time is ignored rather than failing the call.
            whole = value.strip().split(".", 1)[0]
            if whole.isascii() and whole.isdigit() and int(whole) <= 10_000:
                setattr(self, name, int(whole))
        elif name in _DIRECTIONS:
            self.direction = _DIRECTIONS[name]
        elif name == "rtcp":
            # RFC 3605: a=rtcp:<port> [IN IP4 <address>]
            parts = value.split()
            if len(parts) not in (1, 4):
                raise _bad(number, line, "expected a=rtcp:<port> [IN IP4 <address>]")
            self.rtcp_port = _parse_int(parts[0], number, line, "RTCP port", 65535)
            if len(parts) == 4:
                self.rtcp_address = _parse_connection(" ".join(parts[1:]), number, line)
        elif name == "rtcp-mux":
            self.rtcp_mux = True
        elif name == "crypto":
            # RFC 4568 §4: read by media/sdes.py, and only for the stream we take.
            if len(self.crypto) >= MAX_CRYPTO_ATTRIBUTES:
                raise SdpError(f"SDP line {number}: more than {MAX_CRYPTO_ATTRIBUTES} a=crypto attributes "
                               f"in the m= section of line {self.line}", status=400)
            self.crypto.append(value)

    def build(self, session_address: str | None, session_direction: Direction | None) -> MediaDescription:
        return MediaDescription(
            media=self.media,
            port=self.port,
            protocol=self.protocol,
            formats=self.formats,
            connection_address=self.connection_address or session_address,
            rtpmaps=self.rtpmaps,
            fmtps=self.fmtps,
            ptime=self.ptime,
            maxptime=self.maxptime,
            direction=self.direction or session_direction or Direction.SENDRECV,
            rtcp_port=self.rtcp_port,
            rtcp_address=self.rtcp_address,
            rtcp_mux=self.rtcp_mux,
            crypto=tuple(self.crypto),
            line=self.line,
        )


def parse_sdp_untrusted(body: bytes) -> SessionDescription:
    """Parse an SDP body from the network; raises only :class:`SdpError` (400).

    Lines may end in CRLF or LF. Unknown line types and attributes are skipped.
    """
    if _parse is not None:  # the compiled twin, for a plain body (see the end of the module)
        parsed = _parse(bytes(body))
        if parsed is not None:
            return parsed
    if len(body) > MAX_SDP_SIZE:
        raise SdpError(f"SDP body of {len(body)} octets exceeds the {MAX_SDP_SIZE}-octet limit", status=400)
    origin = None
    session_address = None
    session_direction = None
    builders: list[_MediaBuilder] = []
    saw_version = False
    number = 0
    for number, raw in enumerate(bytes(body).split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw:
            continue  # blank lines, including the one after the last CRLF
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError(f"SDP line {number} is not UTF-8 text", status=400) from None
        if len(line) < 2 or line[1] != "=" or not line[0].isascii() or not line[0].isalpha():
            raise _bad(number, line, "expected <type>=<value>")
        kind, value = line[0], line[2:]
        if not saw_version:
            if kind != "v" or value.strip() != "0":
                raise _bad(number, line, "an SDP body must start with v=0")
            saw_version = True
            continue
        media = builders[-1] if builders else None
        if kind == "m":
            builders.append(_MediaBuilder(value, number, line))
        elif kind == "c":
            address = _parse_connection(value, number, line)
            if media is None:
                session_address = address
            else:
                media.connection_address = address
        elif kind == "o" and media is None:
            origin = _parse_origin(value, number, line)
        elif kind == "a":
            name, _, attribute_value = value.partition(":")
            if media is not None:
                media.attribute(name, attribute_value, number, line)
            elif name in _DIRECTIONS:
                session_direction = _DIRECTIONS[name]
    if not saw_version:
        raise SdpError("SDP body is empty", status=400)
    return SessionDescription(
        origin=origin,
        media=tuple(builder.build(session_address, session_direction) for builder in builders),
    )


# ---------------------------------------------------------------- offer/answer


def choose_audio_stream(
    description: SessionDescription, *, role: str = "offer", protocols: tuple[str, ...] = (CLEAR_PROTOCOL,)
) -> MediaDescription:
    """The first active audio stream whose profile is one of ``protocols``; raises :class:`SdpError`."""
    for media in description.media:
        if media.media == "audio" and media.protocol in protocols and media.port != 0:
            if media.connection_address is None:
                raise SdpError(f"SDP line {media.line}: m=audio has no c= line, neither in it nor at session level", status=400)
            return media
    raise SdpError(f"the {role} has no active {' or '.join(protocols)} audio stream (m=audio with a non-zero port)",
                   status=488)


def _format_payload_type(text: str) -> int | None:
    """An m= line's format as an RTP payload type, None when it is not one (RFC 4566 §5.14).

    ASCII digits only: str.isdigit() also holds for "²" (which int() refuses) and for
    other scripts' digits (which int() reads), and neither is a payload type.
    """
    if text.isascii() and text.isdigit() and int(text) <= 127:
        return int(text)
    return None


def _telephone_event(media: MediaDescription) -> int | None:
    for payload_text in media.formats:
        payload_type = _format_payload_type(payload_text)
        if payload_type is not None:
            mapping = media.rtpmaps.get(payload_type)
            if mapping and mapping.encoding.lower() == "telephone-event" and mapping.clock_rate == 8000:
                return mapping.payload_type
    return None


def _codecs_in(media: MediaDescription, allowed: tuple[str, ...]) -> list[Codec]:
    found = []
    for payload_text in media.formats:
        payload_type = _format_payload_type(payload_text)
        if payload_type is None:
            continue
        mapping = media.rtpmap(payload_type)
        if mapping is None or mapping.clock_rate != 8000 or mapping.channels != 1:
            continue
        name = mapping.encoding.upper()
        if name in allowed:
            found.append(Codec(name=name, payload_type=mapping.payload_type))
    return found


def _remote_endpoints(media: MediaDescription, *, rtcp_mux: bool):
    if media.held:
        return None, None
    remote_rtp = (media.connection_address, media.port)
    if rtcp_mux:
        remote_rtcp = remote_rtp
    elif media.rtcp_port:
        remote_rtcp = (media.rtcp_address or media.connection_address, media.rtcp_port)
    else:
        # RFC 3550 §11: RTCP on the next higher (odd) port.
        remote_rtcp = (media.connection_address, media.port + 1) if media.port < 65535 else None
    return remote_rtp, remote_rtcp


def _render(
    *,
    origin: SdpOrigin,
    local_address: str,
    audio_lines: list[str],
    rejected: list[tuple[int, str]],
    audio_index: int,
) -> bytes:
    # RFC 4566 §5 order: v o s c t, then the m= sections.
    lines = ["v=0", origin.to_line(), "s=-", f"c=IN {_address_type(local_address)} {local_address}", "t=0 0"]
    sections: list[list[str]] = [[f"m={text}"] for _, text in rejected]
    sections.insert(audio_index, audio_lines)
    for section in sections:
        lines.extend(section)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _audio_section(
    *,
    port: int,
    codec: Codec,
    telephone_event_payload_type: int | None,
    telephone_event_fmtp: str | None,
    rtcp_mux: bool,
    direction: Direction,
    crypto_lines: tuple[str, ...] = (),
) -> list[str]:
    formats = [str(codec.payload_type)]
    lines = []
    # An rtpmap for a static type is optional (RFC 3551) but some trunks insist.
    lines.append(f"a=rtpmap:{codec.payload_type} {codec.name}/8000")
    if telephone_event_payload_type is not None:
        formats.append(str(telephone_event_payload_type))
        lines.append(f"a=rtpmap:{telephone_event_payload_type} telephone-event/8000")
        if telephone_event_fmtp:
            lines.append(f"a=fmtp:{telephone_event_payload_type} {telephone_event_fmtp}")
    lines.append(f"a=ptime:{_PTIME}")
    if rtcp_mux:
        lines.append("a=rtcp-mux")
    lines.extend(crypto_lines)
    lines.append(f"a={direction.value}")
    protocol = SECURE_PROTOCOL if crypto_lines else CLEAR_PROTOCOL
    return [f"m=audio {port} {protocol} {' '.join(formats)}", *lines]


def _check_local(local_address: str, local_port: int) -> None:
    if not local_address or _SPACE.search(local_address):
        raise ValueError(f"local_address must be an IP address, not {local_address!r}")
    if not 1 <= local_port <= 65535:
        raise ValueError(f"local_port must be 1..65535, not {local_port!r}")


def negotiate_answer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    origin: SdpOrigin,
    preferred_codec: str | None = None,
    protocols: tuple[str, ...] = (CLEAR_PROTOCOL,),
    crypto: CryptoAnswer | None = None,
) -> tuple[MediaPlan, bytes]:
    """Answer an offer (RFC 3264 §6): the plan for the media shell and the body.

    The codec is ``preferred_codec`` when offered, else the offerer's first of
    PCMU/PCMA. Raises :class:`SdpError` 488 with no usable audio stream or no
    codec in common. ``origin`` is used as given; see :func:`negotiate_reanswer`.
    The stream is the first of a profile in ``protocols``; when it is RTP/SAVP,
    ``crypto`` is our answer to its ``a=crypto`` values (see the module docstring),
    and its keys go into the plan.
    """
    _check_local(local_address, local_port)
    if preferred_codec is not None and preferred_codec not in SUPPORTED_CODECS:
        raise ValueError(f"preferred_codec must be one of {SUPPORTED_CODECS} or None, not {preferred_codec!r}")
    media = choose_audio_stream(offer, role="offer", protocols=protocols)
    if (media.protocol == SECURE_PROTOCOL) != (crypto is not None):
        raise ValueError(f"an {media.protocol} stream is answered {'without' if crypto is None else 'with'} "
                         f"a crypto answer")
    codecs = _codecs_in(media, SUPPORTED_CODECS)
    if not codecs:
        offered = " ".join(media.formats)
        raise SdpError(
            f"SDP line {media.line}: no codec in common: offered payload types {offered}, we accept PCMU (0) or PCMA (8) at 8000 Hz",
            status=488, warning=305,
        )
    codec = next((candidate for candidate in codecs if candidate.name == preferred_codec), codecs[0])
    telephone_event = _telephone_event(media)
    offered_direction = media.direction
    if media.held:
        # The offerer gave no address to reach it: it cannot receive (RFC 3264 §8.4).
        offered_direction = Direction.from_flags(sends=offered_direction.sends, receives=False)
    direction = offered_direction.answer()
    remote_rtp, remote_rtcp = _remote_endpoints(media, rtcp_mux=media.rtcp_mux)
    plan = MediaPlan(
        codec=codec,
        telephone_event_payload_type=telephone_event,
        remote_rtp=remote_rtp,
        remote_rtcp=remote_rtcp,
        rtcp_mux=media.rtcp_mux,
        send_audio=direction.sends and remote_rtp is not None,
        receive_audio=direction.receives,
        srtp_keys=crypto.keys if crypto is not None else None,
    )
    audio_index = offer.media.index(media)
    rejected = [
        (index, f"{other.media} 0 {other.protocol} {other.formats[0]}")
        for index, other in enumerate(offer.media)
        if other is not media
    ]
    audio_lines = _audio_section(
        port=local_port,
        codec=codec,
        telephone_event_payload_type=telephone_event,
        telephone_event_fmtp=media.fmtps.get(telephone_event) if telephone_event is not None else None,
        rtcp_mux=media.rtcp_mux,
        direction=direction,
        crypto_lines=(crypto.line,) if crypto is not None else (),
    )
    body = _render(
        origin=origin, local_address=local_address, audio_lines=audio_lines, rejected=rejected, audio_index=audio_index
    )
    return plan, body


def negotiate_reanswer(
    offer: SessionDescription,
    *,
    previous_answer: bytes,
    local_address: str,
    local_port: int,
    origin: SdpOrigin,
    preferred_codec: str | None = None,
    protocols: tuple[str, ...] = (CLEAR_PROTOCOL,),
    crypto: CryptoAnswer | None = None,
) -> tuple[MediaPlan, bytes, SdpOrigin]:
    """Answer a re-INVITE's offer, bumping the origin version only on a change.

    RFC 3264 §8: a description that differs from the previous one MUST carry
    version + 1, and an unchanged one the same version. ``origin`` is the one in
    ``previous_answer``; the origin returned is the one to keep for next time.
    """
    settings = dict(local_address=local_address, local_port=local_port, preferred_codec=preferred_codec,
                    protocols=protocols, crypto=crypto)
    plan, body = negotiate_answer(offer, origin=origin, **settings)
    if body != previous_answer:
        origin = origin.next_version()
        plan, body = negotiate_answer(offer, origin=origin, **settings)
    return plan, body, origin


def build_offer(
    *,
    local_address: str,
    local_port: int,
    origin: SdpOrigin,
    codecs: tuple[str, ...] = SUPPORTED_CODECS,
    telephone_event_payload_type: int | None = 101,
    direction: Direction = Direction.SENDRECV,
    crypto: CryptoOffer | None = None,
) -> bytes:
    """Our offer, for an INVITE or re-INVITE that came without SDP (RFC 3261 §14.2).

    With ``crypto``, the stream is RTP/SAVP with its ``a=crypto`` lines (RFC 4568 §5.1.1).
    """
    _check_local(local_address, local_port)
    if not codecs or any(name not in SUPPORTED_CODECS for name in codecs):
        raise ValueError(f"codecs must be a non-empty sequence of {SUPPORTED_CODECS}, not {codecs!r}")
    formats = [str(_CODEC_STATIC_TYPES[name]) for name in codecs]
    lines = [f"a=rtpmap:{_CODEC_STATIC_TYPES[name]} {name}/8000" for name in codecs]
    if telephone_event_payload_type is not None:
        if not 96 <= telephone_event_payload_type <= 127:
            raise ValueError(f"telephone_event_payload_type must be dynamic (96..127), not {telephone_event_payload_type!r}")
        formats.append(str(telephone_event_payload_type))
        lines.append(f"a=rtpmap:{telephone_event_payload_type} telephone-event/8000")
        lines.append(f"a=fmtp:{telephone_event_payload_type} 0-16")
    lines.append(f"a=ptime:{_PTIME}")
    if crypto is not None:
        lines.extend(crypto.lines)
    lines.append(f"a={direction.value}")
    protocol = SECURE_PROTOCOL if crypto is not None else CLEAR_PROTOCOL
    audio_lines = [f"m=audio {local_port} {protocol} {' '.join(formats)}", *lines]
    return _render(origin=origin, local_address=local_address, audio_lines=audio_lines, rejected=[], audio_index=0)


def apply_answer(
    answer: SessionDescription,
    *,
    codecs: tuple[str, ...] = SUPPORTED_CODECS,
    telephone_event_payload_type: int | None = 101,
    direction: Direction = Direction.SENDRECV,
    crypto: CryptoOffer | None = None,
) -> MediaPlan:
    """The plan from the peer's answer to our :func:`build_offer` (same keywords).

    Raises :class:`SdpError` 488 when the answer rejects audio or picks a codec
    we did not offer, or, when we offered ``crypto``, when it is not RTP/SAVP with
    one ``a=crypto`` echoing one of ours (RFC 4568 §5.1.3). (In an ACK a 488
    cannot be sent; the caller hangs up.)
    """
    protocols = (SECURE_PROTOCOL,) if crypto is not None else (CLEAR_PROTOCOL,)
    media = choose_audio_stream(answer, role="answer", protocols=protocols)
    keys = None
    if crypto is not None:
        try:
            keys = accept_answer_untrusted(crypto, media.crypto)
        except SdesError as error:
            raise SdpError(f"SDP line {media.line}: the answer's a=crypto: {error}", status=488) from None
    chosen = _codecs_in(media, tuple(codecs))
    if not chosen:
        raise SdpError(f"SDP line {media.line}: the answer chose none of the offered codecs {', '.join(codecs)}", status=488)
    answered_event = _telephone_event(media) if telephone_event_payload_type is not None else None
    # Their direction is from their side: what they send, we receive.
    their_direction = media.direction
    if media.held:
        their_direction = Direction.from_flags(sends=their_direction.sends, receives=False)
    remote_rtp, remote_rtcp = _remote_endpoints(media, rtcp_mux=False)
    return MediaPlan(
        codec=chosen[0],
        telephone_event_payload_type=answered_event,
        remote_rtp=remote_rtp,
        remote_rtcp=remote_rtcp,
        rtcp_mux=False,
        send_audio=direction.sends and their_direction.receives and remote_rtp is not None,
        receive_audio=direction.receives and their_direction.sends,
        srtp_keys=keys,
    )


# The compiled parse of a plain body (media/_sdp.c: printable ASCII, no a=crypto) when
# it was built, else None: every body is then parsed in Python above.
# tests/test_sdp_scan.py compares them; EKO_RTP_PURE_PYTHON=1 takes Python.
_parse = None
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.media import _sdp
    except ImportError:
        pass
    else:
        _sdp.bind(SessionDescription, MediaDescription, SdpOrigin, RtpMap, _DIRECTIONS, Direction.SENDRECV,
                  MAX_SDP_SIZE)
        _parse = _sdp.parse

# What the start line says parses plain SDP bodies: "compiled" or "python".
PARSE = "python" if _parse is None else "compiled"
