"""Structured SIP header values (RFC 3261 §20, RFC 4028 §4-5).

Theory of operation: :class:`eko_rtp.sip.message.Headers` keeps header values as
the text that came on the wire; the functions here parse the ones the user agent
acts on into frozen values, and ``str()`` of each value writes it back. Via, From,
To, Call-ID and CSeq are parsed with these by ``message.py`` when the message is
parsed, once, into its typed fields; the others where they are used. Several
header kinds may hold a comma-separated list on one line (§7.3.1), so list parsers
take every line of a header and split on commas that are outside quoted strings and
angle brackets. Parse failures raise :class:`SipParseError` (400) naming the header.

Cost: these values come from the network, and a datagram may be stuffed with
thousands of parameters or list elements. Quoted strings, brackets and separators
are found by regular expressions and ``str`` methods (C loops), never by a Python
loop over characters, and the Python work per element is bounded: a value holds at
most ``uri.MAX_PARAMETERS`` parameters and a list header at most
:data:`MAX_LIST_ELEMENTS` elements, or it is refused with 400 before they are
parsed. ``message.py`` bounds the length of each header line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from eko_rtp.sip.errors import SipParseError, describe
from eko_rtp.sip.uri import MAX_PARAMETERS, Uri, format_host_port, parse_host_port, parse_uri

__all__ = [
    "NameAddr",
    "Via",
    "CSeq",
    "SessionExpires",
    "SipWarning",
    "MAGIC_COOKIE",
    "MAX_LIST_ELEMENTS",
    "split_comma_list",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_via",
    "parse_via_list",
    "parse_cseq",
    "parse_max_forwards",
    "parse_session_expires",
    "parse_min_se",
    "parse_token_list",
    "parse_media_type",
    "parse_token_with_parameters",
    "parameter",
    "parse_delta_seconds",
]

# §8.1.1.7: branches of RFC 3261 elements start with this cookie.
MAGIC_COOKIE = "z9hG4bK"
TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")
_DELTA = re.compile(r"[0-9]{1,10}\Z")
# Elements of one list header (Via, Contact, Route, Record-Route, Supported...), over
# all its lines: a request crosses a few proxies, each adding a Via and a
# Record-Route; one with more is refused 400 before any element is parsed.
MAX_LIST_ELEMENTS = 32

# One element of a comma-separated list (§7.3.1): runs of ordinary characters, quoted
# strings (with \-escapes, maybe unterminated) and <...> (which may hold quoted
# strings and commas). Possessive quantifiers: the scan never backtracks, so it is
# linear in the element's length. What stops it is a comma outside both, or the end.
_LIST_ELEMENT = re.compile(
    r'(?:[^",<]++|"(?:[^"\\]++|\\.)*+"?|<(?:[^">]++|"(?:[^"\\]++|\\.)*+"?)*+>?)*+', re.DOTALL)
# One ;-separated piece of a parameter list: ordinary characters and closed quoted
# strings. It stops at a ';' outside quotes, the end, or a '"' that is never closed.
_PARAMETER_PIECE = re.compile(r'(?:[^";]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
# A quoted display name at the start of a name-addr (§25.1 quoted-string).
_QUOTED = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def split_comma_list(values: Iterable[str]) -> list[str]:
    """Split header lines on commas outside quoted strings and <...>; trim each element."""
    elements: list[str] = []
    for value in values:
        if '"' not in value and "<" not in value:
            elements.extend(value.split(","))  # nothing can hide a comma: one C split
            continue
        position, end = 0, len(value)
        while True:
            stop = _LIST_ELEMENT.match(value, position).end()  # always matches, maybe empty
            elements.append(value[position:stop])
            if stop >= end:
                break
            position = stop + 1  # past the comma that ended the element
    return [element for element in map(str.strip, elements) if element]


def _bounded_list(values: Iterable[str], what: str) -> list[str]:
    """:func:`split_comma_list`, refused (400) past MAX_LIST_ELEMENTS elements."""
    elements = split_comma_list(values)
    if len(elements) > MAX_LIST_ELEMENTS:
        raise SipParseError(400, f"more than {MAX_LIST_ELEMENTS} elements in {what}")
    return elements


def _parse_header_parameters(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """``;name=value;flag`` after a header value; quoted values keep their quotes."""
    parameters = []
    for item in _split_parameters(text, what):
        item = item.strip()
        if not item:
            raise SipParseError(400, f"empty parameter in {what}")
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not TOKEN.match(key):
            raise SipParseError(400, f"bad parameter name {describe(key)} in {what}")
        if equals and not value:
            raise SipParseError(400, f"parameter {key} without a value in {what}")
        parameters.append((key, value if equals else None))
    return tuple(parameters)


def _split_parameters(text: str, what: str) -> list[str]:
    """``text`` split on ';' outside quoted strings; at most MAX_PARAMETERS pieces, else 400."""
    if '"' not in text:
        pieces = text.split(";", MAX_PARAMETERS)  # never splits more than it may keep
    else:
        pieces, position, end = [], 0, len(text)
        while len(pieces) <= MAX_PARAMETERS:
            stop = _PARAMETER_PIECE.match(text, position).end()
            if stop < end and text[stop] == '"':
                raise SipParseError(400, f"unterminated quoted string in {describe(text)}")
            pieces.append(text[position:stop])
            if stop >= end:
                break
            position = stop + 1  # past the ';'
    if len(pieces) > MAX_PARAMETERS:
        raise SipParseError(400, f"more than {MAX_PARAMETERS} parameters in {what}")
    return pieces


def _format_parameters(parameters: tuple[tuple[str, str | None], ...]) -> str:
    return "".join([f";{key}" if value is None else f";{key}={value}" for key, value in parameters])


def _lookup(parameters: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    name = name.lower()
    for key, value in parameters:
        if key.lower() == name:
            return "" if value is None else value
    return None


@attrs.frozen(kw_only=True)
class NameAddr:
    """From, To, Contact, Route, Record-Route, P-Asserted-Identity: ``"name" <uri>;params``."""

    display_name: str | None = None
    uri: Uri
    parameters: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (§19.3), None when absent."""
        return _lookup(self.parameters, "tag") or None

    def parameter(self, name: str) -> str | None:
        """A header parameter's value ('' for a flag), None if absent."""
        return _lookup(self.parameters, name)

    def with_tag(self, tag: str) -> "NameAddr":
        """The same address with ``tag`` set (replacing any tag it had)."""
        kept = tuple(item for item in self.parameters if item[0].lower() != "tag")
        return attrs.evolve(self, parameters=kept + (("tag", tag),))

    def __str__(self) -> str:
        name = ""
        if self.display_name is not None:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            name = f'"{escaped}" '
        return f"{name}<{self.uri}>{_format_parameters(self.parameters)}"


def _unquote(text: str) -> str:
    """A quoted-string's content, each quoted-pair (§25.1: backslash, character) undone."""
    inner = text[1:-1]
    return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner


def parse_name_addr(text: str, what: str = "name-addr") -> NameAddr:
    """Parse ``[display-name] <uri> *(;param)`` or ``addr-spec *(;param)`` (§20.10)."""
    text = text.strip()
    display_name = None
    if text.startswith('"'):
        quoted = _QUOTED.match(text)
        if quoted is None:
            raise SipParseError(400, f"unterminated display name in {what}")
        display_name = _unquote(quoted.group())
        text = text[quoted.end() :].lstrip()
        if not text.startswith("<"):
            raise SipParseError(400, f"display name without <URI> in {what}")
    elif "<" in text:
        name = text[: text.index("<")].strip()
        display_name = " ".join(name.split()) or None
        text = text[text.index("<") :]
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            raise SipParseError(400, f"unclosed <URI> in {what}")
        uri_text, rest = text[1:end], text[end + 1 :].strip()
    else:
        # §20.10: in an addr-spec without <>, the parameters after the URI belong to
        # the header, so the URI cannot carry any of its own.
        uri_text, semicolon, rest = text.partition(";")
        rest = ";" + rest if semicolon else ""
        if "?" in uri_text or "," in uri_text:
            raise SipParseError(400, f"URI with '?' or ',' must be in <> in {what}")
    if rest and not rest.startswith(";"):
        raise SipParseError(400, f"unexpected {describe(rest)} after the URI in {what}")
    uri = parse_uri(uri_text.strip(), what)
    parameters = _parse_header_parameters(rest[1:], what) if rest else ()
    return NameAddr(display_name=display_name, uri=uri, parameters=parameters)


def parse_name_addr_list(values: Iterable[str], what: str) -> list[NameAddr]:
    """Every address of a list header (Route, Record-Route, Contact), in order."""
    return [parse_name_addr(element, what) for element in _bounded_list(values, what)]


@attrs.frozen(kw_only=True)
class Via:
    """One Via value (§20.42): ``SIP/2.0/UDP host:port;branch=...;rport;received=...``."""

    transport: str
    host: str
    port: int | None = None
    parameters: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        """The branch parameter, None when absent."""
        return _lookup(self.parameters, "branch") or None

    @property
    def received(self) -> str | None:
        """The received parameter (§18.2.1), None when absent."""
        return _lookup(self.parameters, "received") or None

    @property
    def rport(self) -> int | None | bool:
        """RFC 3581: False when absent, True when present without a value, else the port."""
        value = _lookup(self.parameters, "rport")
        if value is None:
            return False
        return int(value) if value else True

    @property
    def sent_by(self) -> str:
        """``host:port`` as sent, port defaulted to 5060 (5061 for TLS) for keying (§17.2.3)."""
        return format_host_port(self.host, self.port or (5061 if self.transport == "TLS" else 5060))

    def with_parameter(self, name: str, value: str | None) -> "Via":
        """The same Via with parameter ``name`` set to ``value`` (replaced if present)."""
        return self.with_parameters(((name, value),))

    def with_parameters(self, items: tuple[tuple[str, str | None], ...]) -> "Via":
        """The same Via with each ``(name, value)`` of ``items`` set, in that order at the
        end (any parameter of those names, in any case, replaced)."""
        names = {name.lower() for name, _ in items}
        kept = tuple([item for item in self.parameters if item[0].lower() not in names])
        return Via(transport=self.transport, host=self.host, port=self.port, parameters=kept + tuple(items))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {format_host_port(self.host, self.port)}{_format_parameters(self.parameters)}"


_VIA = re.compile(r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9-]+)\s+([^;\s]+)\s*(;.*)?\Z", re.IGNORECASE | re.DOTALL)


def parse_via(text: str) -> Via:
    """Parse one Via value; the protocol must be SIP/2.0."""
    match = _VIA.match(text.strip())
    if not match:
        raise SipParseError(400, f"bad Via {describe(text)}")
    host, port = parse_host_port(match.group(2), "Via")
    parameters = _parse_header_parameters(match.group(3)[1:], "Via") if match.group(3) else ()
    via = Via(transport=match.group(1).upper(), host=host, port=port, parameters=parameters)
    rport = _lookup(parameters, "rport")
    if rport and not (_DELTA.match(rport) and 0 < int(rport) < 65536):
        raise SipParseError(400, f"bad rport {describe(rport)} in Via")
    return via


def parse_via_list(values: Iterable[str]) -> list[Via]:
    """Every Via of a message, top first, whether comma-separated or on several lines."""
    return [parse_via(element) for element in _bounded_list(values, "Via")]


@attrs.frozen(kw_only=True)
class CSeq:
    """CSeq (§20.16): a sequence number below 2**31 and the method."""

    number: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.lt(2**31)))
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse ``number method``."""
    parts = text.split()
    if len(parts) != 2 or not _DELTA.match(parts[0]) or not TOKEN.match(parts[1]):
        raise SipParseError(400, f"bad CSeq {describe(text)}")
    if int(parts[0]) >= 2**31:
        raise SipParseError(400, f"CSeq number {parts[0]} is not below 2**31")
    return CSeq(number=int(parts[0]), method=parts[1])


def parse_delta_seconds(text: str, what: str) -> int:
    """A delta-seconds value (§25.1), capped at 2**32-1 as §20.33 advises for Retry-After."""
    text = text.strip()
    if not _DELTA.match(text):
        raise SipParseError(400, f"bad {what} {describe(text)}: not a number of seconds")
    return min(int(text), 2**32 - 1)


def parse_max_forwards(text: str) -> int:
    """Max-Forwards (§20.22): an integer 0..255."""
    value = parse_delta_seconds(text, "Max-Forwards")
    if value > 255:
        raise SipParseError(400, f"Max-Forwards {value} is above 255")
    return value


@attrs.frozen(kw_only=True)
class SessionExpires:
    """Session-Expires (RFC 4028 §4): the interval and who refreshes, if said."""

    interval: int = attrs.field(validator=attrs.validators.gt(0))
    refresher: str | None = attrs.field(default=None, validator=attrs.validators.in_((None, "uac", "uas")))

    def __str__(self) -> str:
        return str(self.interval) if self.refresher is None else f"{self.interval};refresher={self.refresher}"


# §25.1 quoted-string: '"' and backslash go as quoted-pairs, and so do the control characters
# qdtext leaves out (all but tab); CR and LF cannot appear at all (a header is one line).
_NEEDS_QUOTING = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_WARN_AGENT = re.compile(r"[^\s\"]+\Z")  # hostport or pseudonym (a token): one word, no quote


@attrs.frozen(kw_only=True)
class SipWarning:
    """One Warning value (RFC 3261 §20.43): ``warn-code warn-agent "warn-text"``.

    Sent beside an error's reason phrase: proxies and B2BUAs may rewrite a reason
    phrase, a Warning goes through them as it is. 3xx codes are SIP's own (§20.43):
    300-307 name the part of a session description that is not acceptable, 370
    bandwidth, 399 anything else, its text for a human or a log.
    """

    code: int = attrs.field(validator=[attrs.validators.ge(300), attrs.validators.le(399)])
    agent: str  # who adds it: our host (a hostport) or a pseudonym
    text: str

    def __attrs_post_init__(self) -> None:
        if not _WARN_AGENT.match(self.agent):
            raise ValueError(f"warn-agent must be a host or a pseudonym, not {self.agent!r}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("warn-text must be one line")

    def __str__(self) -> str:
        quoted = _NEEDS_QUOTING.sub(lambda match: "\\" + match.group(0), self.text)
        return f'{self.code} {self.agent} "{quoted}"'


def parse_session_expires(text: str) -> SessionExpires:
    """Parse ``delta-seconds *(;se-params)``; refresher must be uac or uas."""
    value, semicolon, rest = text.partition(";")
    interval = parse_delta_seconds(value, "Session-Expires")
    if interval == 0:
        raise SipParseError(400, "Session-Expires of 0 seconds")
    parameters = _parse_header_parameters(rest, "Session-Expires") if semicolon else ()
    refresher = _lookup(parameters, "refresher")
    if refresher is not None and refresher.lower() not in ("uac", "uas"):
        raise SipParseError(400, f"Session-Expires refresher {describe(refresher)} is neither uac nor uas")
    return SessionExpires(interval=interval, refresher=refresher.lower() if refresher else None)


def parse_min_se(text: str) -> int:
    """Min-SE (RFC 4028 §5): delta-seconds, parameters ignored."""
    return parse_delta_seconds(text.partition(";")[0], "Min-SE")


def parse_token_list(values: Iterable[str], what: str) -> tuple[str, ...]:
    """Require, Supported, Allow, Unsupported: comma-separated tokens."""
    tokens = []
    for element in _bounded_list(values, what):
        if not TOKEN.match(element):
            raise SipParseError(400, f"bad token {describe(element)} in {what}")
        tokens.append(element)
    return tuple(tokens)


def parse_media_type(text: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """Content-Type (§20.15): ``type/subtype`` lower-cased, and its parameters."""
    value, semicolon, rest = text.partition(";")
    kind, slash, subtype = value.strip().partition("/")
    if not slash or not TOKEN.match(kind.strip()) or not TOKEN.match(subtype.strip()):
        raise SipParseError(400, f"bad Content-Type {describe(text)}")
    parameters = _parse_header_parameters(rest, "Content-Type") if semicolon else ()
    return f"{kind.strip()}/{subtype.strip()}".lower(), parameters


def parse_token_with_parameters(text: str, what: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """Event, Subscription-State (RFC 6665 §8.2): a token, lower-cased, and its parameters."""
    value, semicolon, rest = text.partition(";")
    value = value.strip()
    if not TOKEN.match(value):
        raise SipParseError(400, f"bad {what} {describe(text)}")
    parameters = _parse_header_parameters(rest, what) if semicolon else ()
    return value.lower(), parameters


def parameter(parameters: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive; "" for a flag), None when absent."""
    return _lookup(parameters, name)
