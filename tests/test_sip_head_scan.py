"""The compiled scan of a message's head (sip/_head.c) against the Python parser.

The scan takes plain messages (nothing folded, printable ASCII, one Content-Length
of digits, one space between the start line's parts) and gives up on anything else,
which message.py then parses in Python. What it takes must come out exactly as the
Python parser makes it: the same message, the same typed fields, the same header
index, and the same error when the rest of the parse refuses it. Each case here is
parsed both ways and compared; a seeded mutation run adds the cases nobody thought of.
"""

from __future__ import annotations

import pathlib
import random

import pytest

from eko_rtp.sip import message
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.message import MAX_HEADER_LENGTH, MAX_HEADER_LINES, parse_message_untrusted

if message._scan is None:
    pytest.skip("sip/_head.c was not built (no C compiler or Python.h), or EKO_RTP_PURE_PYTHON",
                allow_module_level=True)

TORTURE = pathlib.Path(__file__).parent / "sip_torture"
CORPUS = {path.stem: path.read_bytes() for path in sorted(TORTURE.glob("*.sip"))}

SDP = (b"v=0\r\no=- 1234 1 IN IP4 127.0.0.1\r\ns=eko-bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
BENCH_INVITE = (
    b"INVITE sip:eko@127.0.0.1:5090 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK0123456789abcdef;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:+33612345678@127.0.0.1>;tag=1928301774\r\n"
    b"To: <sip:eko@127.0.0.1:5090>\r\n"
    b"Call-ID: a84b4c76e66710@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:trunk@127.0.0.1:5099>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;received=10.0.0.9\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdef\r\n"
    b"Record-Route: <sip:10.0.0.1;lr>, <sip:10.0.0.2;lr>\r\n"
    b"From: \"Eko\" <sip:eko@example.com>;tag=a1\r\n"
    b"To: <sip:tech@example.com>;tag=b2\r\n"
    b"Call-ID: 42@example.com\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:tech@10.0.0.5:5060>;expires=60\r\n"
    b"Content-Length: 0\r\n\r\n")
PLAIN = {
    "bench INVITE": BENCH_INVITE,
    "200 with two Vias": OK_200,
    "compact names": BENCH_INVITE.replace(b"Via:", b"v:").replace(b"Call-ID:", b"i:").replace(b"From:", b"f:")
                                 .replace(b"To:", b"t:").replace(b"Content-Length:", b"l:"),
    "names in odd case": BENCH_INVITE.replace(b"Call-ID:", b"CALL-id:").replace(b"Content-Length:", b"content-LENGTH:"),
    "spaces and tabs around names and values": BENCH_INVITE.replace(b"To: ", b"To \t:\t  ").replace(
        b"CSeq: 1 INVITE", b"CSeq:1 INVITE \t"),
    "an unknown header, twice": BENCH_INVITE.replace(b"Max-Forwards: 70\r\n",
                                                      b"Max-Forwards: 70\r\nX-Trunk: a\r\nx-trunk: b\r\n"),
    "no Content-Length over UDP": BENCH_INVITE.replace(b"Content-Length: " + str(len(SDP)).encode() + b"\r\n", b""),
    "a shorter Content-Length truncates": BENCH_INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(),
                                                               b"Content-Length: 10"),
    "leading CRLFs": b"\r\n\r\n" + BENCH_INVITE,
    "a response without a reason": OK_200.replace(b"200 OK", b"200"),
    "an empty value": BENCH_INVITE.replace(b"Max-Forwards: 70", b"Subject:"),
    "leading zeros in the length": BENCH_INVITE.replace(b"Content-Length: ", b"Content-Length: 000"),
    # Plain, and refused by the rest of the parse: the same error both ways.
    "no Call-ID": BENCH_INVITE.replace(b"Call-ID: a84b4c76e66710@127.0.0.1\r\n", b""),
    "a CSeq of another method": BENCH_INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),
    "two From lines": BENCH_INVITE.replace(b"To:", b"From: <sip:x@y>\r\nTo:"),
    "a bad Via": BENCH_INVITE.replace(b"SIP/2.0/UDP 127.0.0.1:5099", b"SIP/2.0/UDP"),
    "a bad Request-URI": BENCH_INVITE.replace(b"INVITE sip:eko@", b"INVITE mailto:eko@"),
    "Max-Forwards 300": BENCH_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 300"),
    "a start line only": b"OPTIONS sip:eko@127.0.0.1 SIP/2.0\r\n\r\n",
}
OUTSIDE = {
    "a folded line": BENCH_INVITE.replace(b"To: <sip:eko@127.0.0.1:5090>", b"To:\r\n <sip:eko@127.0.0.1:5090>"),
    "a byte past ASCII": BENCH_INVITE.replace(b"From: <", "From: \"Zoé\" <".encode()),
    "a lone LF": BENCH_INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\nX: y\r\n"),
    "a lone CR": BENCH_INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\rX: y\r\n"),
    "a NUL": BENCH_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000"),
    "a tab in the Request-Line": BENCH_INVITE.replace(b"INVITE sip", b"INVITE\tsip"),
    "two spaces in the Request-Line": BENCH_INVITE.replace(b"INVITE sip", b"INVITE  sip"),
    "a version in lower case": BENCH_INVITE.replace(b"5090 SIP/2.0\r\n", b"5090 sip/2.0\r\n", 1),
    "version 3.0": BENCH_INVITE.replace(b"5090 SIP/2.0\r\n", b"5090 SIP/3.0\r\n", 1),
    "a response in lower case": OK_200.replace(b"SIP/2.0 200", b"sip/2.0 200"),
    "a status of four digits": OK_200.replace(b"200 OK", b"2000 OK"),
    "a status of 700": OK_200.replace(b"200 OK", b"700 OK"),
    "two Content-Length lines": BENCH_INVITE.replace(b"Max-Forwards: 70", b"l: " + str(len(SDP)).encode()),
    "a Content-Length too large": BENCH_INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(),
                                                       b"Content-Length: 9999"),
    "a Content-Length not digits": BENCH_INVITE.replace(b"Content-Length: ", b"Content-Length: +"),
    "an empty Content-Length": BENCH_INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length:"),
    "a header without a colon": BENCH_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"),
    "a name that is not a token": BENCH_INVITE.replace(b"Max-Forwards:", b"Max Forwards:"),
    "no empty line": BENCH_INVITE.split(b"\r\n\r\n")[0] + b"\r\n",
    "too many lines": BENCH_INVITE.replace(b"Max-Forwards: 70\r\n", b"X: a\r\n" * MAX_HEADER_LINES),
    "a line too long": BENCH_INVITE.replace(b"Max-Forwards: 70", b"X: " + b"a" * MAX_HEADER_LENGTH),
}


def python_parse(data: bytes, transport: str, limit: int):
    saved, message._scan = message._scan, None
    try:
        return outcome(data, transport, limit)
    finally:
        message._scan = saved


def outcome(data: bytes, transport: str = "udp", limit: int = message.DEFAULT_MAX_MESSAGE_SIZE):
    """What a parse gives, with every part the message's equality leaves out."""
    try:
        parsed = parse_message_untrusted(data, transport=transport, max_message_size=limit)
    except SipParseError as error:
        return ("error", error.status, str(error), described(error.request))
    return ("message", described(parsed))


def described(parsed):
    if parsed is None:
        return None
    headers = parsed.headers
    index = {key: (value.__class__.__name__, value) for key, value in headers._index.items()}
    return (parsed, parsed.vias, parsed.from_, parsed.to, parsed.call_id, parsed.cseq, headers.fields, index,
            type(headers))


def assert_same(data: bytes, transport: str = "udp", limit: int = message.DEFAULT_MAX_MESSAGE_SIZE):
    assert outcome(data, transport, limit) == python_parse(data, transport, limit)


@pytest.mark.parametrize("name", list(PLAIN))
def test_a_plain_message_is_scanned_and_comes_out_as_the_python_parser_makes_it(name):
    assert message._scan(PLAIN[name], message.DEFAULT_MAX_MESSAGE_SIZE, True) is not None
    assert_same(PLAIN[name])


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_anything_else_is_left_to_the_python_parser(name):
    assert message._scan(OUTSIDE[name], message.DEFAULT_MAX_MESSAGE_SIZE, True) is None
    assert_same(OUTSIDE[name])


def test_what_a_trunk_sends_is_scanned():
    for name in ("captured_pjsua2_invite", "captured_sipp_invite"):
        assert message._scan(CORPUS[name], message.DEFAULT_MAX_MESSAGE_SIZE, True) is not None, name


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_torture_messages_come_out_the_same_both_ways(name, transport):
    assert_same(CORPUS[name], transport)


def test_a_stream_without_content_length_is_left_to_the_python_parser():
    data = PLAIN["no Content-Length over UDP"]
    assert message._scan(data, message.DEFAULT_MAX_MESSAGE_SIZE, False) is None
    assert outcome(data, "tcp")[:2] == ("error", 400)
    assert_same(data, "tcp")


@pytest.mark.parametrize("limit", [100, len(BENCH_INVITE) - 1, len(BENCH_INVITE)])
def test_the_message_size_limit_is_the_python_parsers(limit):
    assert_same(BENCH_INVITE, "udp", limit)
    assert_same(BENCH_INVITE, "tcp", limit)


def test_at_the_line_limits_the_scan_still_takes_the_message():
    """Exactly MAX_HEADER_LINES header lines, one of exactly MAX_HEADER_LENGTH characters."""
    head, _, body = BENCH_INVITE.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    filler = [b"X: a"] * (MAX_HEADER_LINES - (len(lines) - 1))
    filler[0] = b"X: " + b"a" * (MAX_HEADER_LENGTH - 3)
    data = b"\r\n".join(lines[:2] + filler + lines[2:]) + b"\r\n\r\n" + body
    assert message._scan(data, message.DEFAULT_MAX_MESSAGE_SIZE, True) is not None
    assert_same(data)
    one_more = data.replace(b"X: a\r\n", b"X: a\r\nX: a\r\n", 1)
    assert message._scan(one_more, message.DEFAULT_MAX_MESSAGE_SIZE, True) is None
    assert_same(one_more)


MUTATIONS = [b"\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\r", b"\n", b"\x00", b"\xc3\xa9",
             b"\r\n ", b"0", b"SIP/2.0", b"Content-Length: 5\r\n", b"l: 0\r\n", b"\r\n\r\n"]


def mutated(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            data = data[:at] + rng.choice(MUTATIONS) + data[at:]
        elif kind == 1:
            data = data[:at] + data[at + rng.randint(1, 8):]
        elif kind == 2 and at < len(data):
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        else:
            lines = data.split(b"\r\n")
            line = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[line])
            data = b"\r\n".join(lines)
    return data


def test_mutated_messages_come_out_the_same_both_ways():
    """A seeded run of small mutations of real messages: whatever the scan takes, it
    takes as the Python parser would; a fifth or more of them stay plain enough."""
    rng = random.Random(20261206)
    seeds = [BENCH_INVITE, OK_200, *CORPUS.values()]
    scanned = 0
    for _ in range(3000):
        data = mutated(rng, rng.choice(seeds))
        transport = rng.choice(["udp", "udp", "tcp"])
        scanned += message._scan(data, message.DEFAULT_MAX_MESSAGE_SIZE, transport == "udp") is not None
        assert outcome(data, transport) == python_parse(data, transport, message.DEFAULT_MAX_MESSAGE_SIZE), data
    assert scanned > 600


def test_the_server_says_it_scans_in_c():
    assert message.HEAD_SCAN == "compiled"


def test_the_scan_checks_what_it_is_given():
    with pytest.raises(TypeError):
        message._scan("INVITE", 100, True)
    with pytest.raises(TypeError):
        message._scan(b"INVITE")


# Each list starts with the valid shapes (the number in VALID); a draw takes one of
# those three times in four, so that many messages are valid throughout.
HOSTS = ["127.0.0.1", "Example.COM", "a", "a.", "a-b.c", "-a", "a-", "a..", "[::1]", "x_y", "1.2.3.4.", ""]
PORTS = ["", ":5060", ":65535", ":05060", ":0", ":65536", ":", ":123456", ":a"]
USERS = ["", "eko@", "+33612345678@", "a:pw@", "a:@", "a;b@", "a@b@", ":pw@", "a%20b@", "@"]
URI_PARAMETERS = ["", ";lr", ";transport=tcp", ";a=", ";a=b;c", ";x=" + "y" * 3, ";=b", ";;", ";", ";%61=1"]
SCHEMES = ["sip:", "SIP:", "sips:", "Sip:", "tel:", "mailto:", "sip"]
HEADER_PARAMETERS = ["", ";tag=1928301774", ";tag", ";TAG=a;x=y", ";t=a=b", ";rport", ";rport=5060",
                     ";received=10.0.0.1;branch=z9hG4bK-1", " ;tag=1", ";tag=", ";a b", ';q="x"', ";",
                     ";rport=0", ";RPORT=65536", ";rport=x"]
DISPLAY_NAMES = ["", '"Eko" ', '"" ', "Bob ", "  Bob   Smith\t", '"x"', '"a\\"b" ', '"unclosed ', "a,b "]
CSEQS = ["1 {method}", "2147483647 {method}", "1  {method}", "1\t{method}", "01 {method}", "2147483648 {method}",
         "{method}", "1", "12345678901 {method}", "1 INV ITE", "1 BYE", "-1 {method}"]
VIAS = ["SIP/2.0/UDP {host}{port}{params}", "SIP/2.0/udp {host}{port}{params}", "sip/2.0/UDP {host}{port}",
        "SIP/2.0/TLS  {host}{port}", "SIP / 2.0 / UDP {host}{port}", "SIP/2.0/UDP {host}{port} {params}",
        "SIP/2.0/UDP {host}{port}{params}, SIP/2.0/UDP 10.0.0.1"]
CALL_IDS = ["a84b@host", "x", "!~", "a b"]
MAX_FORWARDS = ["70", "0", "255", "00070", "256", "x"]
VALID = {id(HOSTS): 5, id(PORTS): 4, id(USERS): 7, id(URI_PARAMETERS): 6, id(SCHEMES): 4,
         id(HEADER_PARAMETERS): 8, id(DISPLAY_NAMES): 6, id(CSEQS): 5, id(VIAS): 2, id(CALL_IDS): 3,
         id(MAX_FORWARDS): 4}


def pick(rng: random.Random, values: list[str]) -> str:
    return rng.choice(values[:VALID[id(values)]] if rng.random() < 0.75 else values)


def random_uri(rng: random.Random) -> str:
    return pick(rng, SCHEMES) + pick(rng, USERS) + pick(rng, HOSTS) + pick(rng, PORTS) + pick(rng, URI_PARAMETERS)


def random_name_addr(rng: random.Random) -> str:
    uri = random_uri(rng)
    form = rng.randrange(4)
    if form == 0:
        return uri + pick(rng, HEADER_PARAMETERS)  # an addr-spec
    inner = uri if form == 1 else f" {uri} "
    return f"{pick(rng, DISPLAY_NAMES)}<{inner}>{pick(rng, HEADER_PARAMETERS)}"


def random_request(rng: random.Random) -> bytes:
    via = pick(rng, VIAS).format(host=pick(rng, HOSTS), port=pick(rng, PORTS), params=pick(rng, HEADER_PARAMETERS))
    method = rng.choice(["INVITE", "INVITE", "BYE", "OPTIONS"])
    headers = [f"Via: {via}", f"From: {random_name_addr(rng)}", f"To: {random_name_addr(rng)}",
               f"Call-ID: {pick(rng, CALL_IDS)}", f"CSeq: {pick(rng, CSEQS).format(method=method)}",
               f"Max-Forwards: {pick(rng, MAX_FORWARDS)}"]
    if rng.random() < 0.3:
        headers.append(f"Via: SIP/2.0/UDP {pick(rng, HOSTS)}{pick(rng, PORTS)};branch=z9hG4bK-2")
    rng.shuffle(headers)
    lines = [f"{method} {random_uri(rng)} SIP/2.0", *headers]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_typed_fields_of_every_shape_come_out_the_same_both_ways():
    """Via, From, To, CSeq, Call-ID, Max-Forwards and the Request-URI in the shapes a
    peer may send, plain or not, valid or not: the compiled parse of the typed fields
    takes the plain valid ones and makes them as headers.py and uri.py do."""
    rng = random.Random(6122026)
    typed = 0
    for _ in range(4000):
        data = random_request(rng)
        scanned = message._scan(data, message.DEFAULT_MAX_MESSAGE_SIZE, True)
        typed += scanned is not None and scanned[7] is not None
        assert outcome(data) == python_parse(data, "udp", message.DEFAULT_MAX_MESSAGE_SIZE), data
    assert typed > 100


def test_the_typed_fields_of_a_trunks_messages_are_compiled():
    for data in (BENCH_INVITE, OK_200, CORPUS["captured_pjsua2_invite"], CORPUS["captured_sipp_invite"]):
        scanned = message._scan(data, message.DEFAULT_MAX_MESSAGE_SIZE, True)
        assert scanned is not None and scanned[7] is not None, data[:40]
