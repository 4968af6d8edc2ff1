"""Hypothesis strategies that write SIP: well-formed messages, one damaged field, then byte mutations.

Random bytes rarely get past a start line, so the fuzzers build messages from the
grammar of RFC 3261 §25: start lines, the headers the user agent reads, folding,
compact forms, bodies, Content-Length. Each part has a good form and a bad form;
a message takes at most one part in its bad form (so most of it still parses and
the parser reaches the checks behind the first), and some messages are then
damaged at the byte level (:func:`mutate`). Every strategy is built once, at
import: a draw costs tens of microseconds, building and validating a strategy far
more. The first value of each choice is the plain one, where hypothesis shrinks to.
"""

from __future__ import annotations

from hypothesis import strategies as st

from sdp_grammar import sdp_bodies

# Bytes that matter to SIP parsers: separators, quotes, escapes, line ends, NUL,
# a non-ASCII letter's UTF-8 and an invalid UTF-8 byte.
SPECIAL = b" \t\r\n:;,<>\"'\\%@=[]?&/.0aZ\x00\x7f\xc3\xa9\xff"
METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "NOTIFY", "REFER", "REGISTER",
           "SUBSCRIBE", "PRACK", "FOO"]

token = st.text(alphabet="abcXYZ0189.!%*_+`'~-", min_size=1, max_size=12)
word = st.text(alphabet="abcdefxyz0123456789", min_size=1, max_size=10)
# Text of a header value: printable and sometimes awkward, without line breaks (those
# come from the folding and the mutations).
value_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30)


def either(good: st.SearchStrategy, bad: st.SearchStrategy, bad_here: bool) -> st.SearchStrategy:
    return st.one_of(good, bad) if bad_here else good


# ---- URIs and addresses -----------------------------------------------------------

good_hosts = st.one_of(st.sampled_from(["192.0.2.20", "192.0.2.10", "example.org", "[2001:db8::1]", "h"]),
                       st.builds("{}.{}".format, word, word))
bad_hosts = st.sampled_from(["256.1.1.1", "a..b", "-x", "[::1", "[::]", "é.org", "a_b", "", "[x]"])
good_ports = st.sampled_from([None, "5060", "5070", "1", "65535"])
bad_ports = st.sampled_from(["0", "65536", "99999", "x", "", "-1", "٣"])
good_uri_parameters = st.lists(st.one_of(
    st.sampled_from(["lr", "transport=udp", "transport=tcp", "user=phone", "ob", "expires=60", "x=%41"]),
    st.builds("{}={}".format, token, token)), max_size=2).map(lambda items: "".join(f";{item}" for item in items))
bad_uri_parameters = st.sampled_from([";", ";=x", ";x=%4", ";x=%zz", ";a=b=c", ";lr=", ";é"])
good_users = st.one_of(st.none(), word, st.sampled_from(["alice", "+33612345678", "a%20b", "a:pw"]))
bad_users = st.sampled_from(["", "é", "a b", "%", "a@b"])
good_uri_headers = st.sampled_from(["", "", "?subject=x", "?a=b&c=d"])
bad_uri_headers = st.sampled_from(["?", "?=", "?a", "?%"])


def _sip_uri(scheme: str, user: str | None, host: str, port: str | None, parameters: str, headers: str) -> str:
    return f"{scheme}:{'' if user is None else user + '@'}{host}{'' if port is None else ':' + port}" \
           f"{parameters}{headers}"


def uri_strategy(bad: bool) -> st.SearchStrategy[str]:
    """A SIP URI; with ``bad``, perhaps one of its parts bad (or some other URI)."""
    return st.builds(
        _sip_uri, st.sampled_from(["sip", "sip", "sips", "SIP"]), either(good_users, bad_users, bad),
        either(good_hosts, bad_hosts, bad), either(good_ports, bad_ports, bad),
        either(good_uri_parameters, bad_uri_parameters, bad), either(good_uri_headers, bad_uri_headers, bad),
    ) | (st.sampled_from(["tel:+33612345678", "tel:", "http://x", "sip:", "sip:@h", "x", "", "sip:a b@h",
                          "sip:%e9@h"]) if bad else st.nothing())


good_uris, any_uris = uri_strategy(False), uri_strategy(True)
good_header_parameters = st.lists(st.one_of(
    st.sampled_from(["lr", "expires=60", "q=0.5", "x=y", 'x="quoted;x"']),
    st.builds("x-{}={}".format, word, token)), max_size=2).map(lambda items: "".join(f";{item}" for item in items))
bad_header_parameters = st.sampled_from([";", ";=", ';"', ';tag="unterminated', ";tag=", ";a b=c", ";é"])
good_display_names = st.sampled_from(["", "", '"Alice" ', "Bob ", '"a\\"b" ', '"" ', '"é" ', "a b c "])
bad_display_names = st.sampled_from(['"unterminated ', "<", '"a" x', '"'])


def _name_addr(display: str, uri: str, bare: bool, parameters: str) -> str:
    return (uri if bare else f"{display}<{uri}>") + parameters


def name_addr_strategy(bad: bool) -> st.SearchStrategy[str]:
    return st.builds(_name_addr, either(good_display_names, bad_display_names, bad),
                     good_uris if not bad else any_uris, st.sampled_from([False, False, False, True]),
                     either(good_header_parameters, bad_header_parameters, bad))


good_name_addrs, any_name_addrs = name_addr_strategy(False), name_addr_strategy(True)


def with_tag(address: str, tag: str | None) -> str:
    return address if tag is None else f"{address};tag={tag}"


# ---- Via ----------------------------------------------------------------------------

good_protocols = st.sampled_from(["SIP/2.0/UDP", "SIP/2.0/UDP", "SIP/2.0/TCP", "SIP/2.0/TLS", "SIP/2.0/udp"])
bad_protocols = st.sampled_from(["SIP / 2.0 / UDP", "SIP/3.0/UDP", "sip/2.0/UDP", "SIP/2.0/", "SIP/2.0/SCTP", "UDP"])
good_via_extras = st.lists(st.sampled_from(["rport", "rport=5070", "received=192.0.2.9", "ttl=3"]), max_size=2)
bad_via_extras = st.lists(st.sampled_from(["rport=0", "rport=x", "maddr=", "branch=", "", "rport=99999"]),
                          min_size=1, max_size=2)
good_branches = st.one_of(word.map("z9hG4bK{}".format), word)
bad_branches = st.sampled_from([None, "", "z9hG4bK"])


def _via(protocol: str, host: str, port: str | None, branch: str | None, extras: list[str]) -> str:
    parameters = ([f"branch={branch}"] if branch is not None else []) + extras
    return f"{protocol} {host}{'' if port is None else ':' + port}" + "".join(f";{p}" for p in parameters)


def via_strategy(bad: bool) -> st.SearchStrategy[str]:
    return st.builds(_via, either(good_protocols, bad_protocols, bad), either(good_hosts, bad_hosts, bad),
                     either(good_ports, bad_ports, bad), either(good_branches, bad_branches, bad),
                     either(good_via_extras, bad_via_extras, bad))


good_vias, any_vias = via_strategy(False), via_strategy(True)

# ---- other headers --------------------------------------------------------------------

good_call_ids = st.one_of(word, st.builds("{}@{}".format, word, word))
bad_call_ids = st.sampled_from(["", "a b", "é", "x" * 300, "a\tb"])
good_cseq_numbers = st.sampled_from(["1", "2", "3", "2147483647", "01"])
bad_cseq_numbers = st.sampled_from(["0", "2147483648", "x", "", "-1", "٣", "1 2"])

# Header values the user agent reads beyond the §8.1.1 five, and some it must ignore:
# (good values, bad values).
EXTRA_HEADERS: dict[str, tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = {
    "Max-Forwards": (st.sampled_from(["70", "0", "255"]), st.sampled_from(["256", "-1", "x", "", "99999999999"])),
    "Contact": (good_name_addrs, st.one_of(any_name_addrs, st.sampled_from(["*", "", "<sip:a@h>, <sip:b@h>"]))),
    "Record-Route": (good_name_addrs, any_name_addrs),
    "Route": (good_name_addrs, any_name_addrs),
    "Require": (st.sampled_from(["timer", "100rel", "timer, foo"]), st.sampled_from(["", ",", "a b"])),
    "Supported": (st.sampled_from(["timer", "100rel, timer"]), st.sampled_from(["", "x y"])),
    "Allow": (st.sampled_from(["INVITE, ACK, BYE, UPDATE", "UPDATE", "INVITE"]), st.sampled_from(["", "a b"])),
    "Session-Expires": (st.sampled_from(["90", "1800;refresher=uac", "1800;refresher=uas", "4294967296"]),
                        st.sampled_from(["0", "x", "100;refresher=x", "90;", "1800;refresher", "9999999999", "1"])),
    "Min-SE": (st.sampled_from(["90", "1800;x=y"]), st.sampled_from(["0", "x", ""])),
    "Content-Type": (st.sampled_from(["application/sdp", "application/dtmf-relay", "application/dtmf",
                                      "message/sipfrag", "message/sipfrag;version=2.0", "text/plain",
                                      "application/SDP ; charset=utf-8"]),
                     st.sampled_from(["x", "", "a/b;c=", "a/b;", "/", "a/"])),
    "Content-Encoding": (st.just("identity"), st.sampled_from(["gzip", ""])),
    "Event": (st.sampled_from(["refer", "refer;id=1", "refer;id=2", "dialog"]),
              st.sampled_from(["", "refer;id", ";", "refer;id=é", "refer;=1"])),
    "Subscription-State": (st.sampled_from(["active;expires=60", "terminated;reason=noresource", "pending"]),
                           st.sampled_from(["", ";", "terminated;", "a b"])),
    "P-Asserted-Identity": (good_name_addrs, any_name_addrs),
    "Timestamp": (st.sampled_from(["1", "1.5 0.2"]), st.just("")),
    "WWW-Authenticate": (st.sampled_from(['Digest realm="r", nonce="n"', 'Digest realm="r", nonce="n", qop="auth"']),
                         st.sampled_from(["Basic abc", "", 'Digest nonce="n"', "Digest", 'Digest realm="r" nonce="n"'])),
    "Min-Expires": (st.sampled_from(["60", "3600"]), st.just("x")),
    "Expires": (st.sampled_from(["60", "0"]), st.sampled_from(["x", "4294967296", ""])),
    "Retry-After": (st.sampled_from(["5", "5 (busy);duration=10"]), st.sampled_from(["x", ""])),
    "User-Agent": (st.just("pjsip"), value_text),
    "X-Unknown": (word, value_text),
}
_EXTRA_NAMES = sorted(EXTRA_HEADERS)
good_extra_headers = st.lists(st.one_of(*[st.tuples(st.just(name), EXTRA_HEADERS[name][0]) for name in _EXTRA_NAMES]),
                              max_size=3)
bad_extra_header = st.one_of(*[st.tuples(st.just(name), EXTRA_HEADERS[name][1]) for name in _EXTRA_NAMES])

_COMPACT = {"Call-ID": "i", "From": "f", "To": "t", "Via": "v", "Contact": "m", "Content-Length": "l",
            "Content-Type": "c", "Supported": "k", "Session-Expires": "x", "Event": "o"}
_SEPARATORS = [": ", ":", " : ", "\t:\t", ":  "]


def spell(fields: list[tuple[str, str]], style: int) -> list[str]:
    """``fields`` as header lines, in the spellings peers use, chosen by the bits of ``style``.

    ``style`` 0 is the plain spelling (what hypothesis shrinks to); three bits per
    field pick compact forms, case, separators and §7.3.1 folding.
    """
    lines = []
    for index, (name, value) in enumerate(fields):
        bits = (style >> (3 * index)) & 7 if index < 20 else 0
        if bits == 1:
            name = _COMPACT.get(name, name.lower())
        elif bits == 2:
            name = name.upper()
        separator = _SEPARATORS[bits - 2] if 3 <= bits < 2 + len(_SEPARATORS) else ": "
        line = f"{name}{separator}{value}"
        if bits == 7 and " " in value:
            cut = value.index(" ")
            line = f"{name}{separator}{value[:cut]}\r\n {value[cut + 1:]}"
        lines.append(line)
    return lines


styles = st.one_of(st.just(0), st.integers(0, 2**30))
good_lengths = st.sampled_from(["right", "compact"])
bad_lengths = st.sampled_from(["absent", "short", "long", "double", "-1", "x", "1e3", "", "00000000000", "٣", " 0 "])


def assemble(start: str, lines: list[str], body: bytes, length: str, prefix: bytes = b"") -> bytes:
    """Start line, header lines and body, with a Content-Length that is right, absent, wrong or doubled."""
    text = {
        "right": f"Content-Length: {len(body)}",
        "compact": f"l: {len(body)}",
        "short": f"Content-Length: {max(0, len(body) - 1)}",
        "long": f"Content-Length: {len(body) + 5}",
        "double": f"Content-Length: {len(body)}\r\nContent-Length: {len(body) + 1}",
        "absent": None,
    }.get(length, f"Content-Length: {length}")
    head = [start, *lines] + ([text] if text is not None else [])
    return prefix + ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body


other_bodies = st.sampled_from([b"Signal=5\r\nDuration=160\r\n", b"Signal=10\r\n", b"5", b"Signal=x",
                                b"SIP/2.0 100 Trying\r\n", b"SIP/2.0 200 OK\r\n", b"SIP/2.0 503 x", b"garbage"])
bodies = st.one_of(st.just(b""), sdp_bodies, other_bodies, st.binary(max_size=40))
good_request_lines = st.just("{m} {u} SIP/2.0")
bad_request_lines = st.sampled_from(["{m} {u} SIP/2.1", "{m}  {u} SIP/2.0", "{m} {u}", "{m} {u} SIP/2.0 x",
                                     "{m} {u} HTTP/1.1", "{m} {u} SIP/2.00", "{m} {u} sip/2.0", " {m} {u} SIP/2.0"])
prefixes = st.sampled_from([b"", b"", b"", b"\r\n", b"\r\n\r\n"])
# Which part of a message is bad: most often none. "structure" drops, doubles or
# reorders whole header lines.
PARTS = ["start", "via", "from", "to", "call-id", "cseq", "extra", "length", "structure", "uri"]
bad_parts = st.sampled_from([None] * len(PARTS) + PARTS)


@st.composite
def requests(draw, method: str | None = None) -> bytes:
    """A request from the grammar: well formed, or with one part bad."""
    bad = draw(bad_parts)
    method = method or draw(st.sampled_from(METHODS))
    cseq_method = draw(st.sampled_from(["INVITE", "BYE", "x", method.lower()])) if bad == "cseq" and draw(
        st.booleans()) else method
    fields = [
        ("Via", draw(any_vias if bad == "via" else good_vias)),
        ("Max-Forwards", "70"),
        ("From", with_tag(draw(any_name_addrs if bad == "from" else good_name_addrs), draw(word))),
        ("To", with_tag(draw(any_name_addrs if bad == "to" else good_name_addrs), draw(st.one_of(st.none(), word)))),
        ("Call-ID", draw(bad_call_ids if bad == "call-id" else good_call_ids)),
        ("CSeq", f"{draw(either(good_cseq_numbers, bad_cseq_numbers, bad == 'cseq'))} {cseq_method}"),
    ]
    fields += draw(good_extra_headers)
    if bad == "extra":
        fields.insert(draw(st.integers(0, len(fields))), draw(bad_extra_header))
    elif bad == "structure":
        shape = draw(st.integers(1, 7))
        if shape & 1:
            fields.append(draw(st.sampled_from(fields)))  # a header twice
        if shape & 2:
            fields.reverse()
        if shape & 4:
            del fields[draw(st.integers(0, len(fields) - 1))]  # one missing
    start = draw(bad_request_lines if bad == "start" else good_request_lines)
    start = start.format(m=method, u=draw(any_uris if bad == "uri" else good_uris))
    length = draw(bad_lengths if bad == "length" else good_lengths)
    return assemble(start, spell(fields, draw(styles)), draw(bodies), length, draw(prefixes))


good_status_codes = st.sampled_from(["200", "100", "180", "183", "202", "401", "407", "408", "423", "481", "486",
                                     "500", "503", "603"]) | st.integers(100, 699).map(str)
bad_status_codes = st.sampled_from(["0", "99", "700", "1000", "2OO", "20", "", "٢٠٠"])
good_versions = st.just("SIP/2.0")
bad_versions = st.sampled_from(["SIP/2.1", "sip/2.0", "SIP/20", "SIP/2.0 ", "SIP"])
reasons = st.sampled_from(["OK", "", "Reason with spaces", "é", "Trying"])


@st.composite
def responses(draw) -> bytes:
    """A response from the grammar: well formed, or with one part bad."""
    bad = draw(bad_parts)
    method = draw(st.sampled_from(METHODS))
    fields = [
        ("Via", draw(any_vias if bad == "via" else good_vias)),
        ("From", with_tag(draw(any_name_addrs if bad == "from" else good_name_addrs), draw(word))),
        ("To", with_tag(draw(any_name_addrs if bad == "to" else good_name_addrs), draw(st.one_of(st.none(), word)))),
        ("Call-ID", draw(bad_call_ids if bad == "call-id" else good_call_ids)),
        ("CSeq", f"{draw(either(good_cseq_numbers, bad_cseq_numbers, bad == 'cseq'))} {method}"),
    ]
    fields += draw(good_extra_headers)
    if bad == "extra":
        fields.insert(draw(st.integers(0, len(fields))), draw(bad_extra_header))
    start = f"{draw(either(good_versions, bad_versions, bad == 'start'))} " \
            f"{draw(either(good_status_codes, bad_status_codes, bad == 'start'))} {draw(reasons)}"
    length = draw(bad_lengths if bad == "length" else good_lengths)
    return assemble(start, spell(fields, draw(styles)), draw(bodies), length)


# ---- byte-level damage --------------------------------------------------------------------

_OPERATIONS = ["replace", "insert", "delete", "duplicate", "truncate"]
_INSERTS = [bytes([b]) for b in SPECIAL] + [b"\r\n", b"\r\n ", b"\r\n\r\n", b";tag=x", b",", b"Content-Length: 0\r\n"]
mutations = st.lists(st.tuples(st.sampled_from(_OPERATIONS), st.integers(0, 2**16), st.integers(0, 2**8)),
                     max_size=4)


def mutate(base: bytes, operations: list[tuple[str, int, int]]) -> bytes:
    """``base`` with byte-level mutations (operation, where, what): replace, insert, delete, duplicate, cut."""
    data = bytearray(base)
    for operation, where, what in operations:
        index = where % len(data) if data else 0
        if operation == "replace" and data:
            data[index] = SPECIAL[what % len(SPECIAL)]
        elif operation == "insert":
            data[index:index] = _INSERTS[what % len(_INSERTS)]
        elif operation == "delete" and data:
            del data[index:index + 1 + what % 8]
        elif operation == "duplicate" and data:
            end = min(len(data), index + 1 + what % 40)
            data[end:end] = data[index:end]
        elif operation == "truncate":
            del data[index:]
    return bytes(data)


def mutated(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Draws of ``base``, then perhaps mutated (no mutation is what hypothesis shrinks to)."""
    return st.builds(mutate, base, st.one_of(st.just([]), mutations))


messages = mutated(st.one_of(requests(), requests(), responses()))
