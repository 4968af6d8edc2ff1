"""Malformed and odd-but-valid SIP, sent raw over UDP and TCP to a real ``eko-rtp serve``.

In the spirit of RFC 4475 (our own messages, plus the fixtures under
``tests/sip_torture/`` with their Via rewritten to reach us on loopback): valid
messages get exactly the right status, invalid ones a 400-class answer with a reason
phrase or silence, and the server writes one warning line saying what was wrong.
Whether a message got silence is checked without sleeping: the same client then
sends an OPTIONS probe, and the server handles one client's messages in order, so
anything answering the bad message arrives before the probe's 200. After the whole
table a normal call (INVITE, 200, ACK, RTP on the SDP port, BYE) still works.

Responses are read with the bench's own small parser (``eko_bench.uac``), not
the server's SIP stack, so a bug in the server's parser cannot hide itself here.
"""

from __future__ import annotations

import itertools
import re
import secrets
import socket
import time
from pathlib import Path

import attrs
import pytest

from eko_bench import uac
from server_helpers import ServerProcess

TORTURE = Path(__file__).parent / "sip_torture"
MAX_MESSAGE_SIZE = 16384  # the torture server's sip.max_message_size: oversize fits in a datagram
RESPONSE_TIMEOUT = 5.0
_serial = itertools.count(1)


# ---- building raw requests ----------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_serial)}-{secrets.token_hex(4)}"


def sip_request(
    method: str,
    *,
    port: int,
    transport: str = "UDP",
    call_id: str | None = None,
    branch: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "torture",
    to_tag: str | None = None,
    uri: str = "sip:eko@127.0.0.1",
    version: str = "SIP/2.0",
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """A request from a client at 127.0.0.1:``port``; Content-Length always set."""
    to = "<sip:eko@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        ("Via", f"SIP/2.0/{transport} 127.0.0.1:{port};branch={branch or uac.new_branch()};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:caller@127.0.0.1:{port}>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id or unique("torture")),
        ("CSeq", f"{cseq} {cseq_method or method}"),
        ("Contact", f"<sip:caller@127.0.0.1:{port};transport={transport.lower()}>"),
        *extra,
    ]
    if body:
        headers.append(("Content-Type", content_type or "application/sdp"))
    lines = [f"{method} {uri} {version}", *(f"{name}: {value}" for name, value in headers)]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def no_common_codec_offer(rtp_port: int) -> bytes:
    """G.729 only: nothing we can send (we speak PCMU and PCMA)."""
    return (
        "v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
    ).encode()


def fixture(name: str, *, port: int, transport: str) -> bytes:
    """A torture fixture re-addressed to a client at 127.0.0.1:``port``.

    The top Via's sent-by becomes ours (the fixtures name 192.0.2.x, TEST-NET, which
    must never be answered); over TCP the Via says TCP and a missing Content-Length
    is added, since a stream needs one (RFC 3261 §18.3) and that is not what these
    fixtures test.
    """
    data = (TORTURE / name).read_bytes()
    head, separator, body = data.partition(b"\r\n\r\n")
    text = head.decode("utf-8")
    sent_by = f"SIP/2.0/{transport} 127.0.0.1:{port}"
    text, count = re.subn(r"SIP/2\.0/UDP +(192\.0\.2\.\d+|127\.0\.0\.1)(:\d+)?", sent_by, text, count=1)
    assert count == 1, f"{name}: no Via to re-address"
    if transport == "TCP" and not re.search(r"^(content-length|l)\s*:", text, re.IGNORECASE | re.MULTILINE):
        text += f"\r\nContent-Length: {len(body)}"
    return text.encode() + separator + body


# ---- raw clients --------------------------------------------------------------------


class Closed(Exception):
    """The server closed the TCP connection."""


class _Peer:
    """A client socket on loopback; closed on leaving its ``with`` block."""

    sock: socket.socket

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class UdpPeer(_Peer):
    """One UDP socket on loopback talking to the server."""

    transport = "UDP"

    def __init__(self, server_address: tuple[str, int]):
        self.server_address = server_address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server_address)

    def receive_raw(self, timeout: float) -> bytes | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recvfrom(65535)[0]
        except socket.timeout:
            return None

    def receive(self, timeout: float) -> uac.Message | None:
        data = self.receive_raw(timeout)
        return None if data is None else uac.parse_message_untrusted(data)


class TcpPeer(_Peer):
    """One TCP connection to the server; frames its messages by Content-Length."""

    transport = "TCP"

    def __init__(self, server_address: tuple[str, int]):
        self.sock = socket.create_connection(server_address, timeout=RESPONSE_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.buffer = b""
        self.pongs = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed(f"server closed the connection with {len(self.buffer)} bytes unread")
        self.buffer += data
        return True

    def receive(self, timeout: float) -> uac.Message | None:
        deadline = time.monotonic() + timeout
        while True:
            while self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]
                self.pongs += 1  # RFC 5626 §3.5.1: a CRLF pong
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                length = re.search(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", self.buffer[:end], re.IGNORECASE)
                total = end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    return uac.parse_message_untrusted(message)
            if not self._fill(deadline):
                return None

    def wait_closed(self, timeout: float) -> None:
        """Return once the server closed the connection; fail if it sends a message instead."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except Closed:
            assert self.buffer == b"", f"unexpected bytes before the close: {self.buffer[:200]!r}"
            return
        raise AssertionError(f"the server kept the connection open for {timeout} s")


def open_peer(transport: str, server: ServerProcess) -> UdpPeer | TcpPeer:
    return UdpPeer(server.address) if transport == "UDP" else TcpPeer(server.address)


def collect(peer, until, timeout: float = RESPONSE_TIMEOUT) -> list[uac.Message]:
    """Messages received until one satisfies ``until`` (included); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    received = []
    for _ in range(100):
        message = peer.receive(deadline - time.monotonic())
        assert message is not None, f"timed out; received so far: {[describe(m) for m in received]}"
        received.append(message)
        if until(message):
            return received
    raise AssertionError(f"too many messages: {[describe(m) for m in received]}")


def final_for(call_id: str, method: str):
    def predicate(message: uac.Message) -> bool:
        return message.is_response and message.status >= 200 and message.call_id == call_id and message.cseq[1] == method
    return predicate


def describe(message: uac.Message) -> str:
    if message.is_response:
        return f"{message.status} {message.reason} ({message.cseq[1]})"
    return f"{message.method} request"


def probe(peer) -> list[uac.Message]:
    """Send an OPTIONS; return what the server sent before its 200 (answers to earlier messages)."""
    call_id = unique("probe")
    peer.send(sip_request("OPTIONS", port=peer.port, transport=peer.transport, call_id=call_id))
    *before, answer = collect(peer, final_for(call_id, "OPTIONS"))
    assert answer.status == 200, describe(answer)
    return before


def warnings_since(server: ServerProcess, mark: int, needle: str) -> list[str]:
    with server._lock:
        lines = server.lines[mark:]
    return [line for line in lines if needle in line and (" WARNING " in line or " ERROR " in line)]


def assert_one_warning(server: ServerProcess, mark: int, needle: str, what: str) -> str:
    """Exactly one warning line about ``needle`` since ``mark``, and it says ``what``."""
    deadline = time.monotonic() + RESPONSE_TIMEOUT
    while not warnings_since(server, mark, needle) and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = warnings_since(server, mark, needle)
    assert len(lines) == 1, f"expected one warning about {needle!r}, got {lines}"
    assert what in lines[0], lines[0]
    return lines[0]


def ack_for_error(request: bytes, response: uac.Message) -> bytes:
    """§17.1.1.3: the ACK for a non-2xx final response: the INVITE's branch, the response's To."""
    parsed = uac.parse_message_untrusted(request)
    lines = [f"ACK {parsed.request_uri} SIP/2.0"]
    for name in ("via", "from", "call-id"):
        lines.append(f"{name}: {parsed.header(name)}")
    lines += [f"To: {response.header('to')}", f"CSeq: {parsed.cseq[0]} ACK", "Max-Forwards: 70",
              "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


# ---- the server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(built_cache, tmp_path_factory):
    config = tmp_path_factory.mktemp("torture") / "eko.toml"
    config.write_text(f"[sip]\nmax_message_size = {MAX_MESSAGE_SIZE}\n")
    with ServerProcess(built_cache, "--config", str(config)) as process:
        yield process
        assert process.process.poll() is None, f"the server died:\n{process.log()}"
    assert " ERROR " not in process.log() and "Traceback" not in process.log(), process.log()


# ---- the table ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Case:
    """One message and what the server must do with it, per transport.

    ``status`` is the one response expected (None: silence); ``log`` what the one
    warning line must say (None: no warning at all); ``closes``: over TCP the stream
    cannot be framed, so the connection is closed (and nothing answered).
    """

    name: str
    build: object  # (port, transport) -> bytes
    status: int | None
    reason: str | None = None
    log: str | None
    tcp_status: int | None = -1  # -1: as over UDP
    tcp_log: str | None = "same"
    closes_tcp: bool = False
    udp_only: bool = False
    invite: bool = False  # an INVITE with an error final response: ACK it


def from_fixture(name: str):
    return lambda port, transport: fixture(name, port=port, transport=transport)


def request(method: str, **options):
    return lambda port, transport: sip_request(method, port=port, transport=transport, **options)


def replace(builder, old: bytes, new: bytes):
    def build(port, transport):
        data = builder(port, transport)
        assert old in data, (old, data)
        return data.replace(old, new, 1)
    return build


def binary_junk(port, transport):
    # Deterministic junk: every byte value, CRLFCRLF included so it looks like a head.
    return bytes(range(256)) * 3 + b"\r\n\r\n" + bytes(range(255, -1, -1))


def oversize(port, transport):
    padding = "x" * (MAX_MESSAGE_SIZE + 100)
    return sip_request("OPTIONS", port=port, transport=transport, extra=(("X-Padding", padding),))


CASES = [
    # -- valid, if odd --
    Case(name="valid_compact_forms", build=from_fixture("valid_compact_forms.sip"), status=200, log=None),
    Case(name="options", build=request("OPTIONS"), status=200, log=None),
    Case(name="options_leading_crlf", build=lambda p, t: b"\r\n" + sip_request("OPTIONS", port=p, transport=t),
         status=200, log=None),
    Case(name="options_lowercase_header_names",
         build=lambda p, t: sip_request("OPTIONS", port=p, transport=t).replace(b"Call-ID:", b"call-id:")
         .replace(b"CSeq:", b"cseq:").replace(b"From:", b"fROM   :"),
         status=200, log=None),
    Case(name="options_max_forwards_zero", build=replace(request("OPTIONS"), b"Max-Forwards: 70", b"Max-Forwards: 0"),
         status=200, log=None),
    Case(name="message_udp_length_truncates", build=from_fixture("valid_udp_length_truncates.sip"), status=501,
         reason="Not Implemented", log="method MESSAGE is not implemented -> 501", udp_only=True),
    Case(name="message_udp_no_length", build=from_fixture("valid_udp_no_length.sip"), status=501,
         reason="Not Implemented", log="method MESSAGE is not implemented -> 501"),
    Case(name="unknown_method", build=request("FROB"), status=501, reason="Not Implemented",
         log="method FROB is not implemented -> 501"),
    Case(name="bye_unknown_dialog", build=request("BYE", to_tag="nosuchdialog"), status=481,
         reason="Call/Transaction Does Not Exist", log="in-dialog BYE matches no dialog -> 481"),
    Case(name="bye_outside_dialog", build=request("BYE"), status=481,
         reason="Call/Transaction Does Not Exist", log="BYE outside a dialog -> 481"),
    Case(name="cancel_for_nothing", build=request("CANCEL"), status=481,
         reason="Call/Transaction Does Not Exist", log="CANCEL matches no INVITE -> 481"),
    Case(name="info_outside_dialog", build=request("INFO"), status=481,
         reason="Call/Transaction Does Not Exist", log="INFO outside a dialog -> 481"),
    Case(name="sip_3_0", build=request("OPTIONS", version="SIP/3.0"), status=505,
         reason="SIP version 'SIP/3.0' is not supported", log="SIP version 'SIP/3.0' is not supported -> 505"),
    Case(name="fixture_sip_7_0", build=from_fixture("invalid_version.sip"), status=505,
         reason="SIP version 'SIP/7.0' is not supported", log="SIP version 'SIP/7.0' is not supported -> 505"),
    Case(name="invite_require_foo", build=request("INVITE", extra=(("Require", "foo"),)), status=420,
         reason="Bad Extension", log="Require foo is not supported -> 420", invite=True),
    Case(name="invite_body_not_sdp", build=request("INVITE", body=b"hello", content_type="text/plain"), status=415,
         reason="Unsupported Media Type", log="INVITE body of type text/plain is not application/sdp -> 415",
         invite=True),
    Case(name="http_uri", build=from_fixture("invalid_uri_scheme.sip"), status=416,
         reason="unsupported URI scheme 'http' in Request-URI", log="unsupported URI scheme 'http'"),
    # -- invalid: answered 400 --
    Case(name="bad_escape", build=from_fixture("invalid_bad_escape.sip"), status=400,
         reason="bad %-escape in Request-URI '%ZZeko'", log="bad %-escape in Request-URI '%ZZeko' -> 400"),
    Case(name="content_length_conflict", build=from_fixture("invalid_content_length_conflict.sip"), status=400,
         reason="several different Content-Length values", log="several different Content-Length values -> 400",
         tcp_status=None, tcp_log="several different Content-Length values on the stream; closing the connection",
         closes_tcp=True),
    Case(name="content_length_larger", build=from_fixture("invalid_content_length_larger.sip"), status=400,
         reason="Content-Length 500 exceeds the 87 body bytes received",
         log="Content-Length 500 exceeds the 87 body bytes received -> 400", udp_only=True),
    Case(name="content_length_negative", build=from_fixture("invalid_content_length_negative.sip"), status=400,
         reason="bad Content-Length '-999'", log="bad Content-Length '-999' -> 400",
         tcp_status=None, tcp_log="bad Content-Length '-999' on the stream; closing the connection",
         closes_tcp=True),
    Case(name="content_length_not_a_number", build=replace(request("OPTIONS"), b"Content-Length: 0",
                                                           b"Content-Length: zero"),
         status=400, reason="bad Content-Length 'zero'", log="bad Content-Length 'zero' -> 400",
         tcp_status=None, tcp_log="bad Content-Length 'zero' on the stream; closing the connection", closes_tcp=True),
    Case(name="cseq_method_mismatch", build=from_fixture("invalid_cseq_method_mismatch.sip"), status=400,
         reason="CSeq method OPTIONS does not match the request method INVITE",
         log="CSeq method OPTIONS does not match the request method INVITE -> 400"),
    Case(name="cseq_too_big", build=from_fixture("invalid_cseq_too_big.sip"), status=400,
         reason="CSeq number 4294967296 is not below 2**31", log="CSeq number 4294967296 is not below 2**31 -> 400"),
    Case(name="header_without_colon", build=from_fixture("invalid_header_without_colon.sip"), status=400,
         reason="bad header line 'This line has no colon'", log="bad header line 'This line has no colon' -> 400"),
    Case(name="max_forwards_300", build=from_fixture("invalid_max_forwards.sip"), status=400,
         reason="Max-Forwards 300 is above 255", log="Max-Forwards 300 is above 255 -> 400"),
    Case(name="two_call_ids", build=replace(request("OPTIONS"), b"Max-Forwards: 70", b"Call-ID: second@x"),
         status=400, reason="several Call-ID headers", log="several Call-ID headers -> 400"),
    Case(name="request_line_spaces", build=from_fixture("invalid_request_line_spaces.sip"), status=400,
         reason="extra whitespace in Request-Line 'INVITE  sip:eko@example.net  SIP/2.0'",
         log="extra whitespace in Request-Line"),
    Case(name="two_from", build=from_fixture("invalid_two_from.sip"), status=400, reason="several From headers",
         log="several From headers -> 400"),
    Case(name="unterminated_display_name", build=from_fixture("invalid_unterminated_display_name.sip"), status=400,
         reason="unterminated display name in From", log="unterminated display name in From -> 400"),
    Case(name="nul_in_header", build=replace(request("OPTIONS"), b"Max-Forwards: 70", b"Subject: a\x00b"),
         status=400, reason="header Subject holds a bare CR, LF or NUL",
         log="header Subject holds a bare CR, LF or NUL -> 400"),
    Case(name="oversize", build=oversize, status=513, reason="message of {size} bytes exceeds "
         f"the {MAX_MESSAGE_SIZE}-byte limit", log=f"exceeds the {MAX_MESSAGE_SIZE}-byte limit -> 513",
         tcp_status=None, tcp_log=f"exceeds the {MAX_MESSAGE_SIZE}-byte limit; closing the connection",
         closes_tcp=True),
    # -- invalid and not addressable: silence --
    Case(name="no_empty_line", build=from_fixture("invalid_no_empty_line.sip"), status=None,
         log="no empty line after the headers -> dropped", udp_only=True),
    Case(name="via_without_host", build=lambda p, t: (TORTURE / "invalid_via_no_host.sip").read_bytes()
         .replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"), status=None,
         log="bad Via 'SIP/2.0/UDP ;branch=z9hG4bK-nohost' -> dropped"),
    Case(name="via_port_99999", build=lambda p, t: (TORTURE / "invalid_via_port.sip").read_bytes()
         .replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"), status=None, log="bad port in Via '192.0.2.5:99999' -> dropped"),
    # §8.2.6.2: a response must copy Call-ID and CSeq; without them there is none to send.
    Case(name="missing_call_id", build=from_fixture("invalid_missing_call_id.sip"), status=None,
         log="missing Call-ID header -> dropped"),
    Case(name="missing_cseq", build=lambda p, t: re.sub(rb"CSeq: [^\r]*\r\n", b"", sip_request("OPTIONS", port=p, transport=t)),
         status=None, log="missing CSeq header -> dropped"),
    Case(name="empty_call_id", build=replace(request("OPTIONS"), b"Call-ID: ", b"Call-ID:    \r\nX-Was-Call-ID: "),
         status=None, log="bad Call-ID '' -> dropped"),
    Case(name="missing_via", build=lambda p, t: re.sub(rb"Via: [^\r]*\r\n", b"", sip_request("OPTIONS", port=p, transport=t)),
         status=None, log="missing Via header -> dropped"),
    Case(name="garbage_text", build=lambda p, t: b"hello, is it me you are looking for?\r\nContent-Length: 0\r\n\r\n",
         status=None, log="bad Request-Line 'hello, is it me you are looking for?' -> dropped"),
    Case(name="binary_junk", build=binary_junk, status=None, log="headers are not UTF-8", tcp_status=None,
         tcp_log="; closing the connection", closes_tcp=True),
    Case(name="udp_crlf_keepalive", build=lambda p, t: b"\r\n\r\n", status=None, log=None, udp_only=True),
    Case(name="udp_single_crlf_keepalive", build=lambda p, t: b"\r\n", status=None, log=None, udp_only=True),
    Case(name="stray_response", build=from_fixture("valid_response_multiple_via.sip"), status=None,
         log="response 180 to BYE matches no transaction"),
]


def _params():
    for case in CASES:
        yield pytest.param(case, "UDP", id=f"udp-{case.name}")
        if not case.udp_only:
            yield pytest.param(case, "TCP", id=f"tcp-{case.name}")


@pytest.mark.parametrize("case, transport", list(_params()))
def test_torture_message(server, case, transport):
    status, log = case.status, case.log
    if transport == "TCP":
        status = status if case.tcp_status == -1 else case.tcp_status
        log = log if case.tcp_log == "same" else case.tcp_log
    mark = len(server.lines)
    with open_peer(transport, server) as peer:
        data = case.build(peer.port, transport)
        peer.send(data)
        if transport == "TCP" and case.closes_tcp:
            peer.wait_closed(RESPONSE_TIMEOUT)
            received = []
        elif status is None:
            received = probe(peer)
        else:
            received = [m for m in collect(peer, lambda m: m.is_response and m.status >= 200) if m.status != 100]
            if case.invite:
                peer.send(ack_for_error(data, received[-1]))
            received += probe(peer)  # nothing else (no retransmission of the final over TCP, no second answer)
    assert [m.status for m in received] == ([status] if status is not None else [])
    if status is not None and case.reason is not None:
        assert received[0].reason == case.reason.replace("{size}", str(len(data)))
    if status is not None:
        assert received[0].reason, "an error response needs a reason phrase"
    if log is None:
        assert warnings_since(server, mark, f"127.0.0.1:{peer.port}") == []
    else:
        assert_one_warning(server, mark, f"127.0.0.1:{peer.port}", log)


def test_options_lists_allow_and_accept(server):
    with UdpPeer(server.address) as peer:
        call_id = unique("options")
        peer.send(sip_request("OPTIONS", port=peer.port, call_id=call_id))
        [answer] = collect(peer, final_for(call_id, "OPTIONS"))
    assert (answer.status, answer.reason) == (200, "OK")
    assert answer.header("allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY"
    assert answer.header("accept") == "application/sdp, application/dtmf-relay, message/sipfrag"


def test_require_foo_names_it_in_unsupported(server):
    with UdpPeer(server.address) as peer:
        call_id = unique("require")
        invite = sip_request("INVITE", port=peer.port, call_id=call_id, extra=(("Require", "timer, foo"),))
        peer.send(invite)
        [answer] = collect(peer, final_for(call_id, "INVITE"))
        peer.send(ack_for_error(invite, answer))
    assert (answer.status, answer.header("unsupported")) == (420, "foo")


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_unusable_offer_is_488_and_no_call_is_left(server, transport):
    mark = len(server.lines)
    with open_peer(transport, server) as peer:
        call_id = unique("nocodec")
        invite = sip_request("INVITE", port=peer.port, transport=transport, call_id=call_id,
                             body=no_common_codec_offer(4000))
        peer.send(invite)
        received = collect(peer, final_for(call_id, "INVITE"))
        peer.send(ack_for_error(invite, received[-1]))
        assert probe(peer) == []
    assert [m.status for m in received] == [100, 488]
    assert received[-1].reason == ("SDP line 6: no codec in common: offered payload types 18, "
                                   "we accept PCMU (0) or PCMA (8) at 8000 Hz")
    # RFC 3261 §20.43 code 305, incompatible media format, with the same reason for a B2BUA.
    assert received[-1].header("warning") == f'305 127.0.0.1 "{received[-1].reason}"'
    assert_one_warning(server, mark, f"[call={call_id}]:", received[-1].reason)


# ---- keepalives and broken streams over TCP -------------------------------------------


def test_tcp_keepalive_ping_gets_one_pong_and_the_connection_stays_usable(server):
    mark = len(server.lines)
    with TcpPeer(server.address) as peer:
        peer.send(b"\r\n")  # a lone CRLF: ignored (§7.5), no pong
        peer.send(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        while len(peer.buffer) < 2 and peer._fill(deadline):
            pass
        assert peer.buffer == b"\r\n"
        peer.buffer = b""
        assert probe(peer) == []
        assert peer.buffer == b""
    assert warnings_since(server, mark, f"127.0.0.1:{peer.port}") == []


def test_tcp_half_message_then_close_is_logged_and_starts_nothing(server):
    mark = len(server.lines)
    call_id = unique("half")
    invite = sip_request("INVITE", port=5060, transport="TCP", call_id=call_id, body=uac.sdp_offer(
        address="127.0.0.1", rtp_port=4000, session_id=1))
    half = invite[: len(invite) // 2]
    with TcpPeer(server.address) as peer:
        peer.send(half)
    assert_one_warning(server, mark, f"127.0.0.1:{peer.port}",
                       f"connection closed in the middle of a message ({len(half)} bytes discarded)")
    with UdpPeer(server.address) as other:
        assert probe(other) == []  # the server is still serving
    assert call_id not in server.log()


# ---- calls: odd but valid INVITEs, then a plain one ----------------------------------------


def rewrite_invite(data: bytes, *, port: int, transport: str, rtp_port: int) -> bytes:
    """A captured or torture INVITE re-addressed to us: loopback client, fresh branch and Call-ID.

    Every address of the caller (Via, Contact, the SDP) becomes 127.0.0.1 and our
    ports, so nothing the server sends can leave loopback; the branch and Call-ID are
    made unique so the same fixture can be called again; Content-Length follows the
    rewritten body wherever (and however spelt) the fixture put it.
    """
    head, separator, body = data.partition(b"\r\n\r\n")
    request_line, _, rest = head.decode("utf-8").partition("\r\n")
    rest = re.sub(r"(192\.0\.2\.\d+|127\.0\.0\.1:509[78]|\[2001:db8::1\]:5070)(:\d+)?", f"127.0.0.1:{port}", rest)
    rest = re.sub(r"branch=z9hG4bK[-\w.]*", f"branch={uac.new_branch()}", rest, count=1)
    rest = re.sub(r"^((?:Call-ID|i)[ \t]*:[ \t]*)\S+", lambda m: m.group(1) + unique("call"), rest,
                  count=1, flags=re.IGNORECASE | re.MULTILINE)
    if transport == "TCP":
        rest = re.sub(r"SIP/2\.0/UDP", "SIP/2.0/TCP", rest, count=1)
    sdp = body.decode()
    sdp = re.sub(r"IN IP4 [\d.]+", "IN IP4 127.0.0.1", sdp)
    sdp = re.sub(r"m=audio \d+", f"m=audio {rtp_port}", sdp)
    sdp = re.sub(r"a=rtcp:\d+", f"a=rtcp:{rtp_port + 1}", sdp)
    body = sdp.encode()
    rest, count = re.subn(r"^((?:Content-Length|l)[ \t]*:[ \t]*)\d+", lambda m: m.group(1) + str(len(body)), rest,
                          flags=re.IGNORECASE | re.MULTILINE)
    if count == 0:
        rest += f"\r\nContent-Length: {len(body)}"
    return f"{request_line}\r\n{rest}".encode() + separator + body


def answer_sdp(rtp_port: int) -> bytes:
    return (
        "v=0\r\no=- 9 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    ).encode()


def in_dialog(method: str, invite: uac.Message, ok: uac.Message, *, port: int, transport: str, cseq: int,
              body: bytes = b"") -> bytes:
    """ACK (for the 2xx) or BYE in the dialog the 200 OK set up (RFC 3261 §12.2.1.1, §13.2.2.4)."""
    target = uac.contact_uri(ok.header("contact"))
    lines = [
        f"{method} {target} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={uac.new_branch()};rport",
        "Max-Forwards: 70",
        f"From: {invite.header('from')}",
        f"To: {ok.header('to')}",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def receive_rtp(sock: socket.socket, count: int, timeout: float) -> list[bytes]:
    """``count`` RTP packets (version 2, PCMU or PCMA, 20 ms of audio) within ``timeout``."""
    deadline = time.monotonic() + timeout
    packets = []
    while len(packets) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(packets)} RTP packets in {timeout} s"
        sock.settimeout(remaining)
        try:
            data = sock.recv(2048)
        except socket.timeout:
            continue
        assert data[0] >> 6 == 2 and data[1] & 0x7F in (0, 8) and len(data) == 12 + 160, data[:12].hex()
        packets.append(data)
    return packets


def place_call(server: ServerProcess, peer, invite_data: bytes, rtp: socket.socket) -> str:
    """INVITE, 100, 200, ACK, RTP on our SDP port, BYE, 200, and the server's log agrees. The Call-ID."""
    invite = uac.parse_message_untrusted(invite_data)
    call_id, number = invite.call_id, invite.cseq[0]
    peer.send(invite_data)
    received = collect(peer, final_for(call_id, "INVITE"))
    assert [m.status for m in received] == [100, 200], [describe(m) for m in received]
    ok = received[-1]
    assert uac.parse_sdp_answer_untrusted(ok.body).port > 0
    # Without an offer in the INVITE the 200 carries ours and the ACK the answer (§13.2.1).
    answer = answer_sdp(rtp.getsockname()[1]) if not invite.body else b""
    peer.send(in_dialog("ACK", invite, ok, port=peer.port, transport=peer.transport, cseq=number, body=answer))
    receive_rtp(rtp, 10, timeout=5.0)
    peer.send(in_dialog("BYE", invite, ok, port=peer.port, transport=peer.transport, cseq=number + 1))
    [bye_ok] = [m for m in collect(peer, final_for(call_id, "BYE")) if m.cseq[1] == "BYE"]
    assert bye_ok.status == 200
    server.wait_for_log(rf"\[call={re.escape(call_id)}\]: ended \(remote_bye\)")
    return call_id


@pytest.fixture
def rtp_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@pytest.mark.parametrize("name", [
    "valid_whitespace_folding.sip", "valid_escaped_uris.sip", "captured_sipp_invite.sip", "captured_pjsua2_invite.sip",
])
def test_odd_but_valid_invite_makes_a_call(server, rtp_socket, name, transport):
    with open_peer(transport, server) as peer:
        data = rewrite_invite((TORTURE / name).read_bytes(), port=peer.port, transport=transport,
                              rtp_port=rtp_socket.getsockname()[1])
        place_call(server, peer, data, rtp_socket)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_a_plain_call_still_works_after_the_torture(server, rtp_socket, transport):
    with open_peer(transport, server) as peer:
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp_socket.getsockname()[1], session_id=1)
        call_id = place_call(server, peer, sip_request("INVITE", port=peer.port, transport=transport, body=offer),
                             rtp_socket)
    assert len([line for line in server.lines if f"[call={call_id}]: INVITE received" in line]) == 1
