"""The trunk side of a call, sans-I/O: the few SIP messages a load generator sends and reads.

Theory of operation: the bench plays the part of a SIP trunk. It builds an INVITE
with an SDP offer (PCMU, PCMA, telephone-event), the ACK for a 2xx, a BYE, and an
OPTIONS probe, and reads the responses (and the odd BYE from the far end). This is
deliberately *not* the server's SIP stack (``eko_rtp.sip``): a load generator that
shared the server's parser could hide a bug that lives in both. It is small on
purpose: UDP or TLS (one connection for every call, as a trunk keeps), no proxies,
no Record-Route, no authentication.

Encrypted calls (``--tls``, ``--srtp SUITE``): over TLS the Via says ``SIP/2.0/TLS``
and the URIs carry ``;transport=tls`` (RFC 3261 §18.2.1, §19.1.1). With SRTP the
offer's m= line is ``RTP/SAVP`` with one ``a=crypto`` of the chosen suite
(RFC 4568 §4), and :func:`srtp_keys_untrusted` reads the key of the answer. The
SDES attributes themselves are made and checked by ``eko_rtp.media.sdes``: a
crypto attribute is a small grammar with secrets in it, better written once; the
check that the answer echoes our tag and suite and that the keys work is the
server's SRTP stream authenticating in the bench's media process.

Retransmission rules live in the trio shell (``sip_client.py``); the timer values
are here, from RFC 3261 §17.1.1.2 (INVITE, Timer A doubles from T1, Timer B = 64·T1)
and §17.1.2.2 (non-INVITE, Timer E doubles up to T2, Timer F = 64·T1).

Nothing here imports trio or socket.
"""

from __future__ import annotations

import secrets

import attrs

from eko_rtp.media import sdes

# RFC 3261 §17.1.1.1: T1 is the RTT estimate, T2 the cap on non-INVITE retransmit.
T1 = 0.5
T2 = 4.0
TRANSACTION_TIMEOUT = 64 * T1

# RFC 3261 §7.3.3 compact header names.
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length", "c": "content-type"}
MAX_MESSAGE = 65535
_ECHOED = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
_BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7


class BenchProtocolError(Exception):
    """A message from the peer that the bench cannot read; the text says what was wrong."""


@attrs.frozen(kw_only=True)
class Message:
    """One parsed SIP message: a request (``method`` set) or a response (``status`` set)."""

    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
    headers: tuple[tuple[str, str], ...]  # (lower-case full name, value), in order
    body: bytes

    @property
    def is_response(self) -> bool:
        return self.status is not None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def all_headers(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def call_id(self) -> str:
        value = self.header("call-id")
        if value is None:
            raise BenchProtocolError("message has no Call-ID header")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.header("cseq")
        parts = (value or "").split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise BenchProtocolError(f"bad CSeq header {value!r}")
        return int(parts[0]), parts[1].upper()


def parse_message_untrusted(data: bytes) -> Message:
    """Parse one SIP message from a UDP datagram; raises only :class:`BenchProtocolError`."""
    if len(data) > MAX_MESSAGE:
        raise BenchProtocolError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE}")
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        raise BenchProtocolError("message has no blank line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BenchProtocolError(f"headers are not UTF-8 (byte {error.start})") from None
    lines = text.split("\r\n")
    start = lines[0]
    method = request_uri = reason = None
    status = None
    if start.startswith("SIP/2.0 "):
        code, _, reason = start[8:].partition(" ")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise BenchProtocolError(f"bad status line {start!r}")
        status = int(code)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
            raise BenchProtocolError(f"bad start line {start!r}")
        method, request_uri = parts[0].upper(), parts[1]
    headers: list[tuple[str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if line[:1] in (" ", "\t") and headers:  # RFC 3261 §7.3.1 line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise BenchProtocolError(f"header line {number} has no name: {line!r}")
        name = name.strip().lower()
        headers.append((_COMPACT.get(name, name), value.strip()))
    message = Message(method=method, request_uri=request_uri, status=status, reason=reason, headers=tuple(headers), body=b"")
    length_text = message.header("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise BenchProtocolError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > len(body):
            raise BenchProtocolError(f"Content-Length {length} but only {len(body)} body bytes")
        body = body[:length]
    return attrs.evolve(message, body=body)


def header_parameter(value: str, name: str) -> str | None:
    """The value of ``;name=value`` in a header such as To or Via, or None."""
    for part in value.split(";")[1:]:
        key, _, found = part.partition("=")
        if key.strip().lower() == name:
            return found.strip()
    return None


def contact_uri(value: str) -> str:
    """The URI inside a Contact/To/From value: ``<sip:x@h:p>;tag=..`` -> ``sip:x@h:p``."""
    if "<" in value:
        start = value.index("<") + 1
        end = value.find(">", start)
        if end < 0:
            raise BenchProtocolError(f"unclosed '<' in {value!r}")
        return value[start:end]
    return value.split(";")[0].strip()


@attrs.frozen(kw_only=True)
class MediaAnswer:
    """Where the far end wants our RTP and in which codec (RFC 3264 §6), and its SRTP answer."""

    address: str
    port: int
    payload_type: int
    profile: str = "RTP/AVP"  # the m= line's transport: RTP/SAVP for SRTP (RFC 4568 §3.1.4)
    crypto: tuple[str, ...] = ()  # the audio section's a=crypto values (text after "a=crypto:")

    def __attrs_post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise BenchProtocolError(f"SDP answer has port {self.port}")
        if self.payload_type not in (0, 8):
            raise BenchProtocolError(f"SDP answer chose payload type {self.payload_type}, offered 0 (PCMU) and 8 (PCMA)")


def parse_sdp_answer_untrusted(body: bytes) -> MediaAnswer:
    """Read the connection address, audio port and first codec from an SDP answer."""
    address = None
    media_address = None
    port = payload = None
    profile = "RTP/AVP"
    crypto: list[str] = []
    in_audio = False
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("a=crypto:") and in_audio:
            if len(crypto) >= MAX_CRYPTO_ATTRIBUTES:
                raise BenchProtocolError(f"SDP answer has more than {MAX_CRYPTO_ATTRIBUTES} a=crypto lines")
            crypto.append(line[len("a=crypto:"):].strip())
        elif line.startswith("c="):
            parts = line[2:].split()
            if len(parts) != 3:
                raise BenchProtocolError(f"bad SDP connection line {line!r}")
            if in_audio:
                media_address = parts[2]
            else:
                address = parts[2]
        elif line.startswith("m="):
            parts = line[2:].split()
            in_audio = parts[:1] == ["audio"] and port is None
            if in_audio:
                if len(parts) < 4 or not parts[1].isdigit() or not parts[3].isdigit():
                    raise BenchProtocolError(f"bad SDP media line {line!r}")
                port, payload, profile = int(parts[1]), int(parts[3]), parts[2]
    if port is None or payload is None:
        raise BenchProtocolError("SDP answer has no m=audio line")
    chosen = media_address or address
    if chosen is None:
        raise BenchProtocolError("SDP answer has no c= line")
    return MediaAnswer(address=chosen, port=port, payload_type=payload, profile=profile, crypto=tuple(crypto))


MAX_CRYPTO_ATTRIBUTES = 16  # an answer has one (RFC 4568 §5.1.2); a few more are read only to be refused


def srtp_offer(suite: sdes.CryptoSuite) -> sdes.CryptoOffer:
    """Our SDES offer: one ``a=crypto`` (tag 1) of ``suite`` with a fresh key, as a trunk pinned to one suite sends."""
    return sdes.make_offer(preference=(suite,))


def srtp_keys_untrusted(offer: sdes.CryptoOffer, answer: MediaAnswer) -> sdes.SrtpKeys:
    """The call's SRTP keys from the answer to ``offer``; raises only :class:`BenchProtocolError`.

    The answer must keep ``RTP/SAVP`` (RFC 3264 §6: the answerer takes the offered
    transport or rejects the stream) and carry exactly one ``a=crypto`` with our
    tag and suite (RFC 4568 §5.1.3).
    """
    if answer.profile != "RTP/SAVP":
        raise BenchProtocolError(f"SDP answer has transport {answer.profile!r} to our RTP/SAVP offer")
    try:
        return sdes.accept_answer_untrusted(offer, answer.crypto)
    except sdes.SdesError as error:
        raise BenchProtocolError(f"SDP answer's a=crypto: {error}") from None


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return _BRANCH_MAGIC + secrets.token_hex(8)


TRANSPORTS = ("udp", "tls")


@attrs.frozen(kw_only=True)
class Endpoint:
    """The bench's own SIP address and the target's, and the transport between them."""

    local_host: str
    local_port: int
    target_host: str
    target_port: int
    transport: str = attrs.field(default="udp", validator=attrs.validators.in_(TRANSPORTS))

    @property
    def _uri_parameters(self) -> str:
        # RFC 3261 §19.1.1: a sip: URI names TLS with transport=tls (sips: would also
        # demand TLS on every hop beyond, which a trunk does not promise).
        return ";transport=tls" if self.transport == "tls" else ""

    @property
    def target_uri(self) -> str:
        return f"sip:eko@{self.target_host}:{self.target_port}{self._uri_parameters}"

    @property
    def contact(self) -> str:
        return f"<sip:trunk@{self.local_host}:{self.local_port}{self._uri_parameters}>"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.local_port};branch={branch};rport"


TELEPHONE_EVENT_PAYLOAD_TYPE = 101  # the dynamic payload type the offer gives RFC 4733 events


def sdp_offer(*, address: str, rtp_port: int, session_id: int, crypto: sdes.CryptoOffer | None = None) -> bytes:
    """The offer a trunk sends: PCMU, PCMA and RFC 4733 events, 20 ms packets; with ``crypto``,
    SRTP: ``RTP/SAVP`` and its ``a=crypto`` lines (RFC 4568 §3.1.4)."""
    profile = "RTP/AVP" if crypto is None else "RTP/SAVP"
    crypto_lines = "".join(f"{line}\r\n" for line in crypto.lines) if crypto is not None else ""
    return (
        "v=0\r\n"
        f"o=- {session_id} 1 IN IP4 {address}\r\n"
        "s=eko-bench\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} {profile} 0 8 {TELEPHONE_EVENT_PAYLOAD_TYPE}\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:{TELEPHONE_EVENT_PAYLOAD_TYPE} telephone-event/8000\r\n"
        f"a=fmtp:{TELEPHONE_EVENT_PAYLOAD_TYPE} 0-16\r\n"
        "a=ptime:20\r\n"
        f"{crypto_lines}"
        "a=sendrecv\r\n"
    ).encode()


def _serialise(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{name}: {value}" for name, value in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


@attrs.frozen(kw_only=True)
class Dialog:
    """What the bench knows of one call it placed (RFC 3261 §12.1.2, UAC side)."""

    endpoint: Endpoint
    call_id: str
    from_tag: str
    caller: str
    to_tag: str | None = None
    remote_target: str | None = None

    def _common(self, branch: str, cseq: int, method: str) -> list[tuple[str, str]]:
        to = f"<{self.endpoint.target_uri}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        return [
            ("Via", self.endpoint.via(branch)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.caller}@{self.endpoint.local_host}>;tag={self.from_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]

    def invite(self, *, branch: str, sdp: bytes) -> bytes:
        headers = self._common(branch, 1, "INVITE")
        headers += [("Contact", self.endpoint.contact), ("Content-Type", "application/sdp")]
        return _serialise(f"INVITE {self.endpoint.target_uri} SIP/2.0", headers, sdp)

    def confirmed(self, response: Message) -> "Dialog":
        """The dialog after a 2xx: remote tag and target from To and Contact (§12.1.2)."""
        to_value = response.header("to") or ""
        tag = header_parameter(to_value, "tag")
        if tag is None:
            raise BenchProtocolError(f"2xx To header has no tag: {to_value!r}")
        contact = response.header("contact")
        target = contact_uri(contact) if contact else self.endpoint.target_uri
        return attrs.evolve(self, to_tag=tag, remote_target=target)

    def ack(self) -> bytes:
        """ACK for a 2xx: its own transaction, sent to the remote target (§13.2.2.4)."""
        headers = self._common(new_branch(), 1, "ACK")
        return _serialise(f"ACK {self.remote_target or self.endpoint.target_uri} SIP/2.0", headers)

    def ack_failure(self, response: Message, *, branch: str) -> bytes:
        """ACK for a non-2xx final: same branch as the INVITE, To from the response (§17.1.1.3)."""
        headers = self._common(branch, 1, "ACK")
        headers[3] = ("To", response.header("to") or f"<{self.endpoint.target_uri}>")
        return _serialise(f"ACK {self.endpoint.target_uri} SIP/2.0", headers)

    def bye(self, *, branch: str) -> bytes:
        headers = self._common(branch, 2, "BYE")
        return _serialise(f"BYE {self.remote_target or self.endpoint.target_uri} SIP/2.0", headers)


def options(endpoint: Endpoint, *, call_id: str, branch: str) -> bytes:
    """An OPTIONS probe, used to poll a freshly spawned target until it answers."""
    headers = [
        ("Via", endpoint.via(branch)),
        ("Max-Forwards", "70"),
        ("From", f"<sip:bench@{endpoint.local_host}>;tag={new_tag()}"),
        ("To", f"<{endpoint.target_uri}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
        ("Accept", "application/sdp"),
    ]
    return _serialise(f"OPTIONS {endpoint.target_uri} SIP/2.0", headers)


def response_to(request: Message, status: int, reason: str) -> bytes:
    """A response to a request from the far end (a BYE), echoing the §8.2.6.2 headers."""
    headers = [(_ECHOED[name], value) for name, value in request.headers if name in _ECHOED]
    return _serialise(f"SIP/2.0 {status} {reason}", headers)
