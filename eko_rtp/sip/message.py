"""SIP messages: requests, responses, their headers, and parsing untrusted bytes.

Theory of operation: :func:`parse_message_untrusted` turns one datagram (or one
framed stream message) into a :class:`Request` or :class:`Response` and can only
raise :class:`SipParseError`. It unfolds continuation lines (RFC 3261 §7.3.1),
expands compact header names (§7.3.3), and frames the body by Content-Length
(§18.3: over UDP an absent length means "to the end of the datagram", a smaller
one truncates, a larger one is an error; over TCP the length is required).

The five headers that address every message (§8.1.1: Via, From, To, Call-ID,
CSeq) are parsed here, once, into typed fields of the message (``vias``,
``from_``, ``to``, ``call_id``, ``cseq``); the transaction, dialog and user agent
layers read those fields and never parse these headers again. Every header also
stays as the text that came, in :class:`Headers`, which ``bytes(message)`` writes
back with a correct Content-Length (so a response copies From, To, Call-ID and
CSeq as they came, §8.2.6.2); ``eko_rtp.sip.headers`` parses the other headers the
user agent acts on, where it uses them.

When a message is refused, the :class:`SipParseError` carries the request as far as
it was read, its typed fields holding those of the five that parsed (the Vias up to
the first bad one), so that a 400 can still be addressed (§8.2.6). On a message
built here rather than parsed the typed fields are empty: its headers are ours.

Cost and limits: a parse is linear in the datagram with a small constant (C-level
``str`` scans and regular expressions; Python code runs per line, per list element
or per parameter, never per character), and the Python work is bounded whatever a
peer sends: at most :data:`MAX_HEADER_LINES` header lines (folded continuations
count), each at most :data:`MAX_HEADER_LENGTH` characters once unfolded, each
parameter list and list header bounded in ``headers.py`` and ``uri.py``. A message
over a line limit is refused 513 (Message Too Large, §21.5.7: longer than the
server is able to process), with the lines read so far, so that
the 513 can still be addressed; an over-long line is left out of the headers.
:class:`Headers` indexes its lines by name once, so a look-up does not scan them.

A plain message (printable ASCII, nothing folded, one Content-Length of digits, single
spaces in the start line) is parsed in C when ``sip/_head.c`` was built: :data:`_scan`
gives the start line's parts, the header lines and their index and the body in one
pass, and the typed fields too when they are plain (no escapes, quoted-pairs, IPv6
hosts or lists on one line) and pass every check; anything else gets None, and the
Python steps below parse and judge it. Both give the same message.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from eko_rtp.sip.errors import SipParseError, describe
from eko_rtp.sip.headers import (
    MAX_LIST_ELEMENTS,
    TOKEN,
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_via,
    split_comma_list,
)
from eko_rtp.sip.uri import MAX_PARAMETERS, Uri, parse_uri

__all__ = [
    "Headers",
    "Request",
    "Response",
    "Message",
    "COMPACT_FORMS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_HEADER_LINES",
    "MAX_HEADER_LENGTH",
    "REASON_PHRASES",
    "parse_message_untrusted",
]

DEFAULT_MAX_MESSAGE_SIZE = 65536
# Limits on what a parse will read (see the module docstring). Real requests carry
# 10-40 header lines of well under a kilobyte (a STIR/SHAKEN Identity is the longest
# a trunk sends, about 1 KB); these leave room for proxies and feature tags.
MAX_HEADER_LINES = 256
MAX_HEADER_LENGTH = 8192  # characters of one header line, name and value, once unfolded
SIP_VERSION = "SIP/2.0"

# §7.3.3 and the registrations since (RFC 3265, 3515, 3841, 3892, 4028).
COMPACT_FORMS = {
    "i": "Call-ID", "f": "From", "t": "To", "v": "Via", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding",
    "x": "Session-Expires", "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
    "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition",
}
_CANONICAL = {name.lower(): name for name in COMPACT_FORMS.values()} | {
    "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "min-se": "Min-SE",
    "max-forwards": "Max-Forwards", "record-route": "Record-Route", "route": "Route",
}
# The index key of each well-known spelling, made once: a message's index then holds
# these shared strings instead of a new lower-cased copy of every name it carries,
# and a look-up by that spelling (the user agent's) skips canonical_name.
_KEY_OF = {name: lower for lower, name in _CANONICAL.items()}

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 422: "Session Interval Too Small",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
    603: "Decline",
}

_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")
_VERSION = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)
_CALL_ID = re.compile(r"[!-~]+")
_STATUS = re.compile(r"[1-6][0-9][0-9]")


@functools.lru_cache(maxsize=256)  # a trunk sends the same few dozen names in every message
def canonical_name(name: str) -> str:
    """Expand a compact form; give well-known names their usual spelling; keep others as sent."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _CANONICAL.get(lower, name)


def _canonical_fields(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    key_of = _KEY_OF  # a well-known spelling is its own canonical name
    return tuple([(name if name in key_of else canonical_name(name), value) for name, value in items])


def _check_fields(instance: object, attribute: attrs.Attribute, fields: tuple[tuple[str, str], ...]) -> None:
    key_of = _KEY_OF
    for name, value in fields:
        if name not in key_of and not TOKEN.match(name):
            raise ValueError(f"header name {name!r} is not a token")
        if _VALUE_FORBIDDEN.search(value):
            raise ValueError(f"header {name} value {value!r} holds CR, LF or NUL")


@attrs.frozen
class Headers:
    """Ordered, case-insensitive multi-map of header lines; compact names expanded."""

    fields: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_canonical_fields, validator=_check_fields
    )
    # Lower-cased name -> its value (a str: the name's one line), or its values in order
    # (a list: several lines). Built once, so a look-up is not a scan of every line (the
    # user agent looks up a dozen names in each message); a list only for a repeated
    # name, since a call keeps its INVITE and 200 OK alive for its first 32 s (RFC 6026
    # Timer L). Appending keeps the build linear in the lines, hostile ones included.
    _index: dict[str, str | list[str]] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        index: dict[str, str | list[str]] = {}
        key_of = _KEY_OF
        for name, value in self.fields:
            key = key_of.get(name) or name.lower()
            prior = index.get(key)
            if prior is None:
                index[key] = value
            elif prior.__class__ is str:
                index[key] = [prior, value]
            else:
                prior.append(value)
        object.__setattr__(self, "_index", index)

    def get(self, name: str) -> str | None:
        """The first value of ``name``, None when absent."""
        values = self._index.get(_KEY_OF.get(name) or canonical_name(name).lower())
        if values is None or values.__class__ is str:
            return values
        return values[0]

    def get_all(self, name: str) -> list[str]:
        """Every line's value for ``name``, in order."""
        values = self._index.get(_KEY_OF.get(name) or canonical_name(name).lower())
        if values is None:
            return []
        return [values] if values.__class__ is str else list(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    @classmethod
    def _checked(cls, fields: tuple[tuple[str, str], ...]) -> "Headers":
        """Headers of lines already canonical and checked: a subset of another's, or the
        parser's (which refuses the same names and values). The constructor's converter
        and validator would do that work again on every message: not here."""
        headers = object.__new__(cls)
        object.__setattr__(headers, "fields", fields)
        headers.__attrs_post_init__()
        return headers

    @classmethod
    def _scanned(cls, fields: tuple[tuple[str, str], ...], index: dict[str, str | list[str]]) -> "Headers":
        """Headers of the compiled scan (_head.c), which built the index as
        ``__attrs_post_init__`` does, from lines it checked as the parser does."""
        headers = object.__new__(cls)
        object.__setattr__(headers, "fields", fields)
        object.__setattr__(headers, "_index", index)
        return headers

    def without(self, *names: str) -> "Headers":
        """A copy without any line of ``names``."""
        drop = {canonical_name(name).lower() for name in names}
        if drop.isdisjoint(self._index):
            return self  # frozen: nothing to drop, nothing to copy
        key_of = _KEY_OF
        return Headers._checked(tuple([item for item in self.fields
                                       if (key_of.get(item[0]) or item[0].lower()) not in drop]))

    def with_added(self, items: Iterable[tuple[str, str]]) -> "Headers":
        """A copy with ``items`` appended."""
        return Headers(self.fields + tuple(items))


def _serialise(start_line: str, headers: Headers, body: bytes) -> bytes:
    # The lines' names are canonical (Headers), so "Content-Length" is how a length is spelt.
    lines = [start_line]
    lines += [f"{name}: {value}" for name, value in headers.fields if name != "Content-Length"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _parsed(default: object = None) -> Any:
    # Parsed from the headers, which equality and repr already cover.
    return attrs.field(default=default, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class _Addressed:
    """The §8.1.1 headers of a message, parsed once (see the module docstring)."""

    vias: tuple[Via, ...] = _parsed(())  # top first
    from_: NameAddr | None = _parsed()
    to: NameAddr | None = _parsed()
    call_id: str | None = _parsed()
    cseq: CSeq | None = _parsed()


@attrs.frozen(kw_only=True)
class Request(_Addressed):
    """A SIP request; ``uri`` is the Request-URI as text (``eko_rtp.sip.uri.parse_uri`` reads it).

    ``vias`` (top first), ``from_``, ``to``, ``call_id`` and ``cseq`` are set by
    :func:`parse_message_untrusted`; see the module docstring.
    """

    method: str = attrs.field(validator=attrs.validators.matches_re(TOKEN))
    uri: str
    version: str = SIP_VERSION
    headers: Headers = Headers()
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The request on the wire, with Content-Length set to the body's length."""
        return _serialise(f"{self.method} {self.uri} {self.version}", self.headers, self.body)

    __bytes__ = to_bytes


@attrs.frozen(kw_only=True)
class Response(_Addressed):
    """A SIP response; ``vias``, ``from_``, ``to``, ``call_id`` and ``cseq`` as on :class:`Request`."""

    status: int = attrs.field(validator=[attrs.validators.ge(100), attrs.validators.le(699)])
    reason: str = attrs.field(validator=attrs.validators.matches_re(r"[^\r\n]*\Z"))
    version: str = SIP_VERSION
    headers: Headers = Headers()
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The response on the wire, with Content-Length set to the body's length."""
        return _serialise(f"{self.version} {self.status} {self.reason}", self.headers, self.body)

    __bytes__ = to_bytes


Message = Request | Response


def _split_head(data: bytes, limit: int) -> tuple[bytes, bytes]:
    # §7.5: CRLFs before the start line are ignored (keepalives, stray padding).
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > limit:
            raise SipParseError(513, f"message of {len(data)} bytes exceeds the {limit}-byte limit")
        raise SipParseError(400, "no empty line after the headers")
    return data[:end], data[end + 4 :]


def _header_lines(head: str) -> tuple[list[str], SipParseError | None]:
    """The start line and header lines with §7.3.1 folding undone (a line starting with
    SP/HT continues the last), and a 513 when there are more than MAX_HEADER_LINES."""
    physical = head.split("\r\n", MAX_HEADER_LINES + 1)  # never cuts more than it keeps
    error = None
    if len(physical) > MAX_HEADER_LINES + 1:
        physical.pop()
        error = SipParseError(513, f"more than {MAX_HEADER_LINES} header lines")
    lines: list[list[str]] = []  # each line's pieces, joined once: folding stays linear
    for line in physical:
        if line[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError(400, "continuation line before any header")
            pieces = lines[-1]
            pieces[-1] = pieces[-1].rstrip(" \t")
            pieces.append(line.strip(" \t"))
        else:
            lines.append([line])
    return [" ".join(pieces) for pieces in lines], error


def _parse_fields(lines: list[str], first_error: SipParseError | None = None
                  ) -> tuple[Headers, SipParseError | None]:
    """The header lines that parse, and the error of the first that does not (if any).

    A bad line does not stop the others from being read, so that a 400 can still be
    addressed with the Via, From, To, Call-ID and CSeq around it.
    """
    fields = []
    for line in lines:
        if len(line) > MAX_HEADER_LENGTH:
            name = line.partition(":")[0].rstrip(" \t")
            first_error = first_error or SipParseError(
                513, f"header line {describe(name, 40)} of {len(line)} characters exceeds the "
                     f"{MAX_HEADER_LENGTH}-character limit")
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        value = value.strip(" \t")
        if not colon or not TOKEN.match(name):
            first_error = first_error or SipParseError(400, f"bad header line {describe(line)}")
        elif "\r" in value or "\n" in value or "\x00" in value:
            first_error = first_error or SipParseError(400, f"header {name} holds a bare CR, LF or NUL")
        else:
            fields.append((canonical_name(name), value))
    return Headers._checked(tuple(fields)), first_error


def _check_version(version: str, request: Request | None) -> None:
    match = _VERSION.match(version)
    if not match:
        raise SipParseError(400, f"bad SIP version {describe(version)}", request=request)
    if (int(match.group(1)), int(match.group(2))) != (2, 0):
        raise SipParseError(505, f"SIP version {describe(version)} is not supported", request=request)


def parse_message_untrusted(
    data: bytes, *, transport: str, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> Request | Response:
    """Parse one SIP message from the network; raise only SipParseError (for the data).

    ``transport`` ('udp', 'tcp' or 'tls') is ours, not the network's: a wrong one is a
    ValueError.
    """
    transport = transport.lower()
    if transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
    try:
        return _parse(bytes(data), transport, max_message_size)
    except SipParseError:
        raise
    except (ValueError, UnicodeError, IndexError) as error:
        # Defence in depth: a validator we did not anticipate still becomes a 400.
        raise SipParseError(400, f"malformed message: {error}") from None


def _parse(data: bytes, transport: str, limit: int) -> Request | Response:
    if _scan is not None:
        scanned = _scan(data, limit, transport == "udp")
        if scanned is not None:
            return _parse_scanned(*scanned)
    head_bytes, rest = _split_head(data, limit)
    try:
        head = head_bytes.decode()
    except UnicodeDecodeError as error:
        raise SipParseError(400, f"headers are not UTF-8 (byte {error.start})") from None
    lines, lines_error = _header_lines(head)
    start_line, lines = lines[0], lines[1:]
    headers, header_error = _parse_fields(lines, lines_error)
    addressing, addressing_error = _parse_addressing(headers)
    # The body is framed before the message is built, so that it is built once; a
    # framing fault is raised after the start line's and the headers' (their order).
    try:
        body, body_error = _frame_body(headers, rest, transport, len(head_bytes) + 4, limit), None
    except SipParseError as error:
        body, body_error = b"", error
    # The length is the body's: serialising writes it back from len(body), so it is
    # not kept as a header (a parse of bytes(message) then equals the message).
    kept = headers.without("Content-Length")
    if start_line.upper().startswith("SIP/"):
        version, _, status_and_reason = start_line.partition(" ")
        status_text, _, reason = status_and_reason.partition(" ")
        _check_version(version, None)
        if not _STATUS.fullmatch(status_text):
            raise SipParseError(400, f"bad status code {describe(status_text)}")
        message: Request | Response = Response(status=int(status_text), reason=reason, version=version,
                                               headers=kept, body=body, **addressing)
        request = None
    else:
        parts = start_line.split()
        if len(parts) != 3 or not TOKEN.match(parts[0]):
            raise SipParseError(400, f"bad Request-Line {describe(start_line)}")
        method, uri, version = parts
        request = Request(method=method, uri=uri, version=version, headers=kept, body=body, **addressing)
        message = request
        if " ".join(parts) != start_line:
            # RFC 4475 §3.1.2.7: exactly one SP between the elements; answered 400.
            raise SipParseError(400, f"extra whitespace in Request-Line {describe(start_line)}", request=request)
        _check_version(version, request)
    try:
        if header_error is not None and len(head_bytes) + 4 <= limit:
            raise header_error
        # A head over the message limit is refused for that (513) by the framing.
        if body_error is not None:
            raise body_error
        _check_required(message, addressing_error)
    except SipParseError as error:
        raise error.with_request(request) from None
    return message


def _parse_scanned(response: bool, first: Any, second: Any, third: str, fields: tuple[tuple[str, str], ...],
                   index: dict[str, str | list[str]], body: bytes, typed: tuple | None) -> Request | Response:
    """The rest of a parse, after the compiled scan of a plain message's head (see _scan).

    The scan has done what ``_parse`` does up to the typed fields, with no fault to
    report: the start line's parts, the header lines (Content-Length dropped) and
    their index, the body. ``typed``: the typed fields, when they were plain too and
    every check of ``_check_required`` passed; else None, and they are parsed here.
    """
    headers = Headers._scanned(fields, index)
    if typed is not None:
        vias, from_, to, call_id, cseq = typed
        if response:
            return Response(status=second, reason=third, version=first, headers=headers, body=body, vias=vias,
                            from_=from_, to=to, call_id=call_id, cseq=cseq)
        return Request(method=first, uri=second, version=third, headers=headers, body=body, vias=vias,
                       from_=from_, to=to, call_id=call_id, cseq=cseq)
    addressing, addressing_error = _parse_addressing(headers)
    request = None
    if response:
        message: Request | Response = Response(status=second, reason=third, version=first, headers=headers,
                                               body=body, **addressing)
    else:
        message = request = Request(method=first, uri=second, version=third, headers=headers, body=body,
                                    **addressing)
    try:
        _check_required(message, addressing_error)
    except SipParseError as error:
        raise error.with_request(request) from None
    return message


def _frame_body(headers: Headers, rest: bytes, transport: str, head_length: int, limit: int) -> bytes:
    lengths = headers.get_all("Content-Length")
    if not lengths:
        if transport != "udp":
            raise SipParseError(400, "Content-Length is required over a stream transport")
        length = len(rest)
    else:
        if len(set(value.strip() for value in lengths)) > 1:
            raise SipParseError(400, "several different Content-Length values")
        text = lengths[0].strip()
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            raise SipParseError(400, f"bad Content-Length {describe(text)}")
        length = int(text)
    if head_length + length > limit:
        raise SipParseError(513, f"message of {head_length + length} bytes exceeds the {limit}-byte limit")
    if length > len(rest):
        raise SipParseError(400, f"Content-Length {length} exceeds the {len(rest)} body bytes received")
    return rest[:length]


def _parse_call_id(text: str) -> str:
    if not _CALL_ID.fullmatch(text):
        raise SipParseError(400, f"bad Call-ID {describe(text)}")
    return text


# (field, header, parser) of the §8.1.1 headers after Via, in the order their faults are reported.
_ADDRESSING = (
    ("from_", "From", lambda text: parse_name_addr(text, "From")),
    ("to", "To", lambda text: parse_name_addr(text, "To")),
    ("call_id", "Call-ID", _parse_call_id),
    ("cseq", "CSeq", parse_cseq),
)


def _parse_addressing(headers: Headers) -> tuple[dict[str, Any], SipParseError | None]:
    """The typed fields of Via, From, To, Call-ID and CSeq, and the first fault among them.

    Each header is parsed (its first line; a repeated one is refused later) even when
    an earlier one is bad, so that a refused request can still be answered with
    those that parsed; the Vias stop at the first bad one.
    """
    errors: list[SipParseError] = []
    vias = []
    elements = split_comma_list(headers.get_all("Via"))
    if len(elements) > MAX_LIST_ELEMENTS:
        # Refused, but the top Via still routes the answer.
        errors.append(SipParseError(400, f"more than {MAX_LIST_ELEMENTS} elements in Via"))
        elements = elements[:1]
    for element in elements:
        try:
            vias.append(parse_via(element))
        except SipParseError as error:
            errors.append(error)
            break
    else:
        if not vias and "Via" in headers:
            errors.append(SipParseError(400, "Via header without a value"))
    fields: dict[str, Any] = {"vias": tuple(vias)}
    for field, name, parse in _ADDRESSING:
        text = headers.get(name)
        if text is None:
            continue
        try:
            fields[field] = parse(text)
        except SipParseError as error:
            errors.append(error)
    return fields, errors[0] if errors else None


def _check_required(message: Request | Response, addressing_error: SipParseError | None) -> None:
    """§8.1.1 and the Request-Line, faults reported in a fixed order: missing, repeated, malformed."""
    headers = message.headers
    index = headers._index  # read directly: this runs for every message
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if _KEY_OF[name] not in index:
            raise SipParseError(400, f"missing {name} header")
    for name in ("From", "To", "Call-ID", "CSeq", "Max-Forwards"):
        if index.get(_KEY_OF[name]).__class__ is list:
            raise SipParseError(400, f"several {name} headers")
    if addressing_error is not None:
        raise addressing_error
    if isinstance(message, Request):
        parse_uri(message.uri, "Request-URI")
        max_forwards = index.get("max-forwards")
        if max_forwards is not None:
            parse_max_forwards(max_forwards)
        # §8.2 and RFC 4475 §3.1.2.16: the CSeq method must be the request's (ACK and
        # CANCEL carry the INVITE's number but their own method).
        if message.cseq.method != message.method:
            raise SipParseError(400, f"CSeq method {message.cseq.method} does not match the request method {message.method}")


# The compiled scan of a plain message's head (sip/_head.c) when it was built, else
# None: every message is then parsed in Python above. Both pass tests/test_sip_message.py
# and tests/test_sip_head_scan.py compares them; EKO_RTP_PURE_PYTHON=1 takes Python.
_scan = None
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.sip import _head
    except ImportError:
        pass
    else:
        _head.bind(canonical_name, _KEY_OF, MAX_HEADER_LINES, MAX_HEADER_LENGTH, Uri, NameAddr, Via, CSeq,
                   MAX_PARAMETERS, MAX_LIST_ELEMENTS)
        _scan = _head.scan

# What the start line says parses plain SIP messages: "compiled" or "python".
HEAD_SCAN = "python" if _scan is None else "compiled"
