"""Parsing time grows linearly with the input: for grammar-shaped inputs, size 10n costs under 20x size n.

Each shape repeats one construct a peer controls (header lines, folded lines, list
elements, parameters, escapes, media lines, RTCP packets, msgpack messages, reads
of one byte) ``n`` times. A parser that is quadratic in any of them takes about
100x for 10x the input; linear takes 10x; the bound of 20x sits between, generous
for a busy machine (best of several runs on each side, and three tries). Size
limits are raised where a parser has them, so that a limit does not hide the
algorithm behind it (a limit can be raised in a config file later).
"""

from __future__ import annotations

import random

import msgpack
import pytest

from eko_rtp.crm.errors import RpcProtocolError
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcLimits
from eko_rtp.media import sdp
from eko_rtp.media.dtmf import DtmfError, parse_dtmf_relay_untrusted
from eko_rtp.media.rtcp import RtcpError, parse_rtcp_untrusted
from eko_rtp.sip.digest import DigestError, parse_challenges_untrusted
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.framing import StreamFramer
from eko_rtp.sip.message import parse_message_untrusted
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

from fuzzing import assert_linear

HEAD = ("OPTIONS sip:eko@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20;branch=z9hG4bKx\r\n"
        "From: <sip:a@example.org>;tag=1\r\nTo: <sip:eko@192.0.2.10>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n")


def sip(extra: str = "", *, start: str | None = None, from_: str | None = None) -> bytes:
    head = HEAD
    if start is not None:
        head = head.replace("OPTIONS sip:eko@192.0.2.10 SIP/2.0", start)
    if from_ is not None:
        head = head.replace("From: <sip:a@example.org>;tag=1", f"From: {from_};tag=1")
    return (head + extra + "Content-Length: 0\r\n\r\n").encode()


def parse_sip(data: bytes) -> None:
    try:
        parse_message_untrusted(data, transport="udp", max_message_size=1 << 28)
    except SipParseError:
        pass


def frame_in_reads_of(size: int):
    def frame(data: bytes) -> None:
        framer = StreamFramer(max_message_size=1 << 28)
        try:
            for index in range(0, len(data), size):
                framer.feed(data[index:index + size])
        except SipParseError:
            pass
    return frame


def parse_sdp(data: bytes) -> None:
    try:
        offer = sdp.parse_sdp_untrusted(data)
        sdp.negotiate_answer(offer, local_address="192.0.2.10", local_port=5000,
                             origin=sdp.SdpOrigin(session_id=1, version=1, address="192.0.2.10"))
    except sdp.SdpError:
        pass


def sdp_body(lines: list[str], formats: str = "0 8 101") -> bytes:
    return ("v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
            + "".join(line + "\r\n" for line in lines) + f"m=audio 4000 RTP/AVP {formats}\r\n").encode()


def parse_rtcp(data: bytes) -> None:
    try:
        parse_rtcp_untrusted(data)
    except RtcpError:
        pass


def read_rpc_in_reads_of(size: int):
    def read(data: bytes) -> None:
        connection = RpcConnection(limits=RpcLimits(max_message_bytes=1 << 28, max_array_len=1 << 24,
                                                    max_str_len=1 << 28, max_bin_len=1 << 28))
        try:
            for index in range(0, len(data), size):
                connection.receive_data(data[index:index + size])
                while connection.next_event() is not NEED_DATA:
                    pass
        except RpcProtocolError:
            pass
    return read


def parse_challenges(data: str) -> None:
    try:
        parse_challenges_untrusted([data], proxy=False)
    except DigestError:
        pass


def parse_relay(data: bytes) -> None:
    try:
        parse_dtmf_relay_untrusted(data)
    except DtmfError:
        pass


def ua_receive(data: bytes) -> None:
    user_agent = UserAgent(UserAgentSettings(host="192.0.2.10", max_message_size=1 << 20), rng=random.Random(1))
    user_agent.receive(data, source=("192.0.2.20", 5070), transport="udp", now=0.0)
    user_agent.events()


def invite(extra: str) -> bytes:
    return sip("Contact: <sip:a@192.0.2.20>\r\n" + extra, start="INVITE sip:eko@192.0.2.10 SIP/2.0").replace(
        b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")


# (name, build(n), parse, n). Where a parser caps a count (header lines, list elements,
# parameters, a line's or a body's length), 10n sits just under the cap: the time
# measured is the parser's, not that of an early refusal.
SHAPES = [
    ("SIP header lines", lambda n: sip("".join(f"X-H{i}: v\r\n" for i in range(n))), parse_sip, 24),
    ("SIP folded lines", lambda n: sip("X-Long: a\r\n" + " b\r\n" * n), parse_sip, 24),
    ("SIP one long header", lambda n: sip("X-Long: " + "a" * n + "\r\n"), parse_sip, 800),
    ("SIP Via parameters", lambda n: sip("Via: SIP/2.0/UDP h;branch=z9hG4bKy" + ";p=v" * n + "\r\n"), parse_sip, 3),
    ("SIP Vias in one line", lambda n: sip("Via: " + ", ".join(["SIP/2.0/UDP h;branch=z9hG4bKz"] * n) + "\r\n"),
     parse_sip, 3),
    ("SIP Contact list", lambda n: sip("Contact: " + ", ".join(["<sip:a@h>"] * n) + "\r\n"), parse_sip, 3),
    ("SIP commas in quotes", lambda n: sip('Contact: "' + "," * n + '" <sip:a@h>\r\n'), parse_sip, 800),
    ("SIP display name escapes", lambda n: sip(from_='"' + '\\"' * n + '" <sip:a@h>'), parse_sip, 400),
    ("SIP Request-URI parameters", lambda n: sip(start=f"OPTIONS sip:eko@192.0.2.10{';p=v' * n} SIP/2.0"),
     parse_sip, 3),
    ("SIP URI escapes", lambda n: sip(start=f"OPTIONS sip:{'%41' * n}@192.0.2.10 SIP/2.0"), parse_sip, 250),
    ("SIP From parameters", lambda n: sip(from_="<sip:a@h>" + ";p=v" * n), parse_sip, 3),
    ("SIP spaces before colon", lambda n: sip("X-A" + " " * n + ": v\r\n"), parse_sip, 800),
    ("SIP CRLFs before the start line", lambda n: b"\r\n" * n + sip(), parse_sip, 2000),
    ("SIP body", lambda n: sip().replace(b"Content-Length: 0\r\n\r\n", f"Content-Length: {n}\r\n\r\n".encode())
     + b"x" * n, parse_sip, 5000),
    ("UA INVITE with Record-Route lines", lambda n: invite("".join(f"Record-Route: <sip:p{i}@h;lr>\r\n"
                                                                     for i in range(n))), ua_receive, 20),
    ("UA INVITE with Via lines", lambda n: invite("".join(f"Via: SIP/2.0/UDP p{i};branch=z9hG4bK{i}\r\n"
                                                            for i in range(n))), ua_receive, 20),
    ("TCP framing, reads of 1 byte", lambda n: sip("X-Long: " + "a" * n + "\r\n"), frame_in_reads_of(1), 500),
    ("TCP framing, reads of 7 bytes", lambda n: sip() * n, frame_in_reads_of(7), 20),
    ("TCP framing, messages in one read", lambda n: sip() * n, frame_in_reads_of(1 << 30), 20),
    ("TCP framing, keepalives", lambda n: b"\r\n\r\n" * n + sip(), frame_in_reads_of(1 << 30), 500),
    ("TCP framing, headers never ending", lambda n: b"X" * n, frame_in_reads_of(64), 2000),
    ("SDP attributes", lambda n: sdp_body([], "0") + b"a=rtpmap:0 PCMU/8000\r\n" * n, parse_sdp, 70),
    ("SDP media lines", lambda n: sdp_body(["m=video 0 RTP/AVP 31"] * n), parse_sdp, 70),
    ("SDP formats", lambda n: sdp_body([], " ".join(["96"] * n + ["0"])), parse_sdp, 500),
    ("RTCP packets", lambda n: b"\x80\xc9\x00\x01\x00\x00\x00\x01" * n, parse_rtcp, 100),
    ("RTCP SDES items", lambda n: b"\x81\xca" + (1 + (2 * n + 4) // 4).to_bytes(2, "big") + b"\x00\x00\x00\x01"
     + b"\x05\x00" * n + b"\x00" * (4 - (2 * n) % 4), parse_rtcp, 200),
    ("msgpack-RPC messages in one read", lambda n: msgpack.packb([2, "m", []]) * n, read_rpc_in_reads_of(1 << 30),
     100),
    ("msgpack-RPC one message, reads of 1 byte", lambda n: msgpack.packb([2, "m", [1] * n]),
     read_rpc_in_reads_of(1), 300),
    ("msgpack-RPC one message, reads of 100 bytes", lambda n: msgpack.packb([2, "m", ["x" * 20] * n]),
     read_rpc_in_reads_of(100), 300),
    ("digest parameters", lambda n: 'Digest realm="r", nonce="n"' + "".join(f", x{i}=y" for i in range(n)),
     parse_challenges, 50),
    ("digest quoted escapes", lambda n: 'Digest realm="' + '\\"' * n + '", nonce="n"', parse_challenges, 200),
    ("dtmf-relay lines", lambda n: b"Signal=5\r\n" * n, parse_relay, 10),
]


@pytest.mark.parametrize("name, build, parse, n", SHAPES, ids=[shape[0] for shape in SHAPES])
def test_parse_time_is_linear(name, build, parse, n):
    for attempt in range(3):
        try:
            assert_linear(build, parse, n=n, what=name)
            return
        except AssertionError:
            if attempt == 2:
                raise
