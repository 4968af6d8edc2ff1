"""The compiled parse of an SDP body (media/_sdp.c) against the Python parser.

The twin takes plain bodies (printable ASCII, no a=crypto) and gives up on anything
else, which sdp.py then parses in Python. What it takes must come out exactly as the
Python parser makes it, and what it gives up on must be parsed (or refused) by Python
as before. Each case is parsed both ways and compared; seeded runs of mutated and of
generated bodies add the cases nobody thought of.
"""

from __future__ import annotations

import random

import pytest

from eko_rtp.media import sdp
from eko_rtp.media.sdp import SdpError, parse_sdp_untrusted

if sdp._parse is None:
    pytest.skip("media/_sdp.c was not built (no C compiler or Python.h), or EKO_RTP_PURE_PYTHON",
                allow_module_level=True)

BENCH_OFFER = (b"v=0\r\no=- 1234 1 IN IP4 127.0.0.1\r\ns=eko-bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
               b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
TRUNK_OFFER = (b"v=0\r\no=- 1700000000 1700000001 IN IP4 91.121.0.10\r\ns=-\r\nc=IN IP4 91.121.0.10\r\nt=0 0\r\n"
               b"m=audio 31000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
               b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=maxptime:40\r\n"
               b"a=rtcp-mux\r\na=rtcp:31001 IN IP4 91.121.0.11\r\na=sendrecv\r\n")
PLAIN = {
    "the bench's offer": BENCH_OFFER,
    "a trunk's offer": TRUNK_OFFER,
    "bare LF": BENCH_OFFER.replace(b"\r\n", b"\n"),
    "no final newline": BENCH_OFFER.rstrip(b"\r\n"),
    "blank lines and CRs": BENCH_OFFER.replace(b"s=eko-bench\r\n", b"\r\n\r\r\ns=x\r\n"),
    "held, session level": BENCH_OFFER.replace(b"a=sendrecv\r\n", b"").replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n"),
    "media direction beats session": BENCH_OFFER.replace(b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n"),
    "two m= sections": BENCH_OFFER + b"m=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n",
    "a port count": BENCH_OFFER.replace(b"m=audio 40000 ", b"m=audio 40000/2 "),
    "c= after m= only": BENCH_OFFER.replace(b"c=IN IP4 127.0.0.1\r\n", b"").replace(
        b"a=ptime:20", b"c=IN IP4 10.0.0.1/127\r\na=ptime:20"),
    "an empty address": BENCH_OFFER.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 /24"),
    "stereo and odd rtpmaps": BENCH_OFFER.replace(b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:8 PC MA/8000/2 "),
    "a fractional ptime": BENCH_OFFER.replace(b"a=ptime:20", b"a=ptime:20.5"),
    "a bad ptime is ignored": BENCH_OFFER.replace(b"a=ptime:20", b"a=ptime:x"),
    "a non-RTP fmtp": BENCH_OFFER.replace(b"a=fmtp:101 0-16", b"a=fmtp:t38 x"),
    "an rtcp port alone": BENCH_OFFER.replace(b"a=ptime:20", b"a=rtcp:40001"),
    "rtcp twice": TRUNK_OFFER.replace(b"a=sendrecv", b"a=rtcp:31005"),
    "unknown lines and attributes": BENCH_OFFER.replace(b"t=0 0", b"b=AS:64\r\nt=0 0\r\nz=x\r\nX=y"),
    "an o= inside m= is ignored": BENCH_OFFER + b"o=x 1 2 IN IP4 h\r\n",
    "tabs in values": BENCH_OFFER.replace(b"m=audio 40000 RTP/AVP", b"m=audio\t40000 RTP/AVP"),
    "largest numbers": BENCH_OFFER.replace(b"o=- 1234 1 ", b"o=- 18446744073709551615 18446744073709551615 "),
    "no origin": BENCH_OFFER.replace(b"o=- 1234 1 IN IP4 127.0.0.1\r\n", b""),
    "v=0 only": b"v=0\r\n",
}
OUTSIDE = {
    "empty": b"",
    "no v=0 first": b"o=- 1 1 IN IP4 h\r\nv=0\r\n",
    "a byte past ASCII": BENCH_OFFER.replace(b"s=eko-bench", "s=écho".encode()),
    "a control byte": BENCH_OFFER.replace(b"s=eko-bench", b"s=a\x01b"),
    "a CR inside a line": BENCH_OFFER.replace(b"s=eko-bench", b"s=a\rb"),
    "a line without =": BENCH_OFFER.replace(b"s=eko-bench", b"s eko"),
    "a digit type": BENCH_OFFER.replace(b"s=eko-bench", b"1=x"),
    "a bad m= port": BENCH_OFFER.replace(b"m=audio 40000", b"m=audio 70000"),
    "a short m=": BENCH_OFFER.replace(b"m=audio 40000 RTP/AVP 0 8 101", b"m=audio 40000 RTP/AVP"),
    "a bad c=": BENCH_OFFER.replace(b"c=IN IP4 127.0.0.1", b"c=IN IPX 127.0.0.1"),
    "a bad o=": BENCH_OFFER.replace(b"o=- 1234 1 IN", b"o=- x 1 IN"),
    "an o= number past 64 bits": BENCH_OFFER.replace(b"o=- 1234 1 ", b"o=- 18446744073709551616 1 "),
    "a bad rtpmap": BENCH_OFFER.replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:0 PCMU"),
    "an rtpmap of four fields": BENCH_OFFER.replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:0 PCMU/8000/1/1"),
    "a payload type of 128": BENCH_OFFER.replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:128 PCMU/8000"),
    "a bad rtcp": BENCH_OFFER.replace(b"a=ptime:20", b"a=rtcp:1 IN IP4"),
    "crypto": BENCH_OFFER.replace(b"RTP/AVP", b"RTP/SAVP").replace(
        b"a=ptime:20", b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + b"A" * 40),
    "too large": BENCH_OFFER + b"a=x:" + b"y" * sdp.MAX_SDP_SIZE,
    "a zero-padded fmtp": BENCH_OFFER.replace(b"a=fmtp:101", b"a=fmtp:" + b"0" * 21 + b"101"),
    "a zero-padded ptime": BENCH_OFFER.replace(b"a=ptime:20", b"a=ptime:" + b"0" * 21 + b"20"),
}


def python_parse(body: bytes):
    saved, sdp._parse = sdp._parse, None
    try:
        return outcome(body)
    finally:
        sdp._parse = saved


def outcome(body: bytes):
    """The description with everything its equality leaves out, or the error."""
    try:
        parsed = parse_sdp_untrusted(body)
    except SdpError as error:
        return ("error", error.status, str(error))
    return ("parsed", parsed, [(type(m.rtpmaps), type(m.fmtps), m.crypto, m.line) for m in parsed.media])


@pytest.mark.parametrize("name", list(PLAIN))
def test_a_plain_body_is_parsed_in_c_as_python_parses_it(name):
    assert sdp._parse(PLAIN[name]) is not None
    assert outcome(PLAIN[name]) == python_parse(PLAIN[name])


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_anything_else_is_left_to_the_python_parser(name):
    assert sdp._parse(OUTSIDE[name]) is None
    assert outcome(OUTSIDE[name]) == python_parse(OUTSIDE[name])


def test_the_answer_to_a_compiled_offer_is_the_same():
    local = dict(local_address="192.0.2.10", local_port=30000, origin=sdp.SdpOrigin(session_id=7, version=1,
                                                                                   address="192.0.2.10"))
    compiled = sdp.negotiate_answer(parse_sdp_untrusted(TRUNK_OFFER), **local)
    saved, sdp._parse = sdp._parse, None
    try:
        python = sdp.negotiate_answer(parse_sdp_untrusted(TRUNK_OFFER), **local)
    finally:
        sdp._parse = saved
    assert compiled == python


PIECES = [b"\r\n", b"\n", b" ", b"\t", b"=", b":", b"/", b".", b"0", b"99999999999999999999", b"a=rtpmap:",
          b"a=fmtp:", b"a=ptime:", b"a=rtcp:", b"IN IP4 ", b"m=audio ", b"c=", b"o=", b"a=sendonly", b"\x00",
          b"\xc3\xa9", b"\r"]


def mutated(rng: random.Random, body: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(body) + 1)
        kind = rng.randrange(3)
        if kind == 0:
            body = body[:at] + rng.choice(PIECES) + body[at:]
        elif kind == 1:
            body = body[:at] + body[at + rng.randint(1, 6):]
        else:
            lines = body.split(b"\n")
            line = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[line])
            body = b"\n".join(lines)
    return body


def test_mutated_bodies_come_out_the_same_both_ways():
    rng = random.Random(20261206)
    seeds = [*PLAIN.values(), *OUTSIDE.values()][:-4]
    compiled = 0
    for _ in range(3000):
        body = mutated(rng, rng.choice(seeds))
        compiled += sdp._parse(body) is not None
        assert outcome(body) == python_parse(body), body
    assert compiled > 600


def test_the_server_says_it_parses_sdp_in_c():
    assert sdp.PARSE == "compiled"


def test_the_parse_checks_what_it_is_given():
    with pytest.raises(TypeError):
        sdp._parse("v=0")
