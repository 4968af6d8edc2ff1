"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966).

Theory of operation: a URI is parsed once into an :class:`Uri` value with its
escapes decoded (``sip:%61lice@host`` has user ``alice``) and its host lower-cased
(hosts compare case-insensitively, §19.1.4). ``str(uri)`` writes it back with the
characters that need it escaped again, so a parse of the output gives an equal
value. Only the schemes a voice trunk sends are accepted: a Request-URI with another
scheme is answered 416 (§8.2.2.1).

Parsing costs a few C-level scans per URI and a little Python per parameter, never
Python per character: a URI comes from the network, so it holds at most
:data:`MAX_PARAMETERS` parameters (and as many ``?`` headers), which bounds the
Python work whatever its length.
"""

from __future__ import annotations

import re
import string

import attrs

from eko_rtp.sip.errors import SipParseError, describe

__all__ = ["Uri", "parse_uri", "escape", "unescape", "format_host_port", "MAX_PARAMETERS"]

# Parameters of one URI, or of one header value (headers.py): real ones carry a
# handful (a Contact with RFC 3840 feature tags, a dozen or two); an element with more
# is refused 400 before any of them is looked at, so a datagram stuffed with
# ";a;a;a..." costs a split, not a loop per parameter.
MAX_PARAMETERS = 32

_ALPHANUM = string.ascii_letters + string.digits
_MARK = "-_.!~*'()"
# §25.1: user-unreserved, password, paramchar and hnv-unreserved sets.
_USER_SAFE = frozenset(_ALPHANUM + _MARK + "&=+$,;?/")
_PASSWORD_SAFE = frozenset(_ALPHANUM + _MARK + "&=+$,")
_PARAM_SAFE = frozenset(_ALPHANUM + _MARK + "[]/:&+$")
_HEADER_SAFE = frozenset(_ALPHANUM + _MARK + "[]/?:+$")
_TEL_SAFE = frozenset(_ALPHANUM + "-.()+*#")

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?\Z")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_WHITESPACE = re.compile(r"\s")  # what str.isspace calls space, found by a C scan
_UNSAFE: dict[frozenset[str], re.Pattern[str]] = {}  # per safe set, the pattern of what it lacks
SCHEMES = ("sip", "sips", "tel")


def unescape(text: str, what: str) -> str:
    """Decode %XX escapes (UTF-8), raising SipParseError naming ``what`` on a bad one."""
    if "%" not in text:
        return text
    pieces = _ESCAPE.split(text)
    raw = bytearray()
    for index, piece in enumerate(pieces):
        if index % 2:
            raw.append(int(piece, 16))
        elif "%" in piece:
            raise SipParseError(400, f"bad %-escape in {what} {describe(text)}")
        else:
            raw += piece.encode()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SipParseError(400, f"%-escapes in {what} {describe(text)} are not UTF-8") from None


def escape(text: str, safe: frozenset[str]) -> str:
    """Escape every character outside ``safe`` as %XX of its UTF-8 bytes."""
    unsafe = _UNSAFE.get(safe)
    if unsafe is None:
        # Few distinct sets exist (the module's own): compiled once each.
        unsafe = _UNSAFE[safe] = re.compile("[^" + "".join(re.escape(ch) for ch in sorted(safe)) + "]")
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(lambda match: "".join(f"%{b:02X}" for b in match.group().encode()), text)


def format_host_port(host: str, port: int | None) -> str:
    """``host`` or ``host:port``; IPv6 addresses get their brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _check_port(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be 1..65535, not {value}")


@attrs.frozen(kw_only=True)
class Uri:
    """A parsed sip:, sips: or tel: URI; user, password and parameters unescaped."""

    scheme: str = attrs.field(validator=attrs.validators.in_(SCHEMES))
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = attrs.field(default=None, validator=_check_port)
    parameters: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.scheme != "tel" and not self.host:
            raise ValueError(f"a {self.scheme}: URI needs a host")
        if self.scheme == "tel" and not self.user:
            raise ValueError("a tel: URI needs a number")

    def parameter(self, name: str) -> str | None:
        """The value of URI parameter ``name`` (case-insensitive), '' for a flag, None if absent."""
        name = name.lower()
        for key, value in self.parameters:
            if key.lower() == name:
                return "" if value is None else value
        return None

    @property
    def loose_route(self) -> bool:
        """True when the URI carries ``lr`` (RFC 3261 §19.1.1: a loose router)."""
        return self.parameter("lr") is not None

    def __str__(self) -> str:
        if self.scheme == "tel":
            out = "tel:" + escape(self.user or "", _TEL_SAFE)
        else:
            out = self.scheme + ":"
            if self.user is not None:
                out += escape(self.user, _USER_SAFE)
                if self.password is not None:
                    out += ":" + escape(self.password, _PASSWORD_SAFE)
                out += "@"
            out += format_host_port(self.host, self.port)
        for key, value in self.parameters:
            out += ";" + escape(key, _PARAM_SAFE)
            if value is not None:
                out += "=" + escape(value, _PARAM_SAFE)
        if self.headers:
            out += "?" + "&".join(
                escape(key, _HEADER_SAFE) + "=" + escape(value, _HEADER_SAFE) for key, value in self.headers
            )
        return out


def parse_host_port(text: str, what: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets); host lower-cased, brackets kept."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or not _IPV6.match(host):
            raise SipParseError(400, f"bad IPv6 host in {what} {describe(text)}")
    else:
        host, _, port_text = text.partition(":")
        rest = ":" + port_text if _ else ""
        if not _HOSTNAME.match(host):
            raise SipParseError(400, f"bad host in {what} {describe(text)}")
    port = None
    if rest:
        if not rest.startswith(":") or not _PORT.match(rest[1:]) or not 0 < int(rest[1:]) < 65536:
            raise SipParseError(400, f"bad port in {what} {describe(text)}")
        port = int(rest[1:])
    return host.lower(), port


def _bounded_split(text: str, separator: str, what: str, kind: str) -> list[str]:
    """``text.split(separator)``, refused (400) past MAX_PARAMETERS items without splitting the rest."""
    items = text.split(separator, MAX_PARAMETERS)
    if len(items) > MAX_PARAMETERS:
        raise SipParseError(400, f"more than {MAX_PARAMETERS} {kind} in {what}")
    return items


def _parse_parameters(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    parameters = []
    for item in _bounded_split(text, ";", what, "URI parameters"):
        if not item:
            raise SipParseError(400, f"empty parameter in {what}")
        key, equals, value = item.partition("=")
        key = unescape(key, what)
        if not key:
            raise SipParseError(400, f"parameter without a name in {what}")
        parameters.append((key, unescape(value, what) if equals else None))
    return tuple(parameters)


def parse_uri(text: str, what: str = "URI") -> Uri:
    """Parse a sip:, sips: or tel: URI; raise SipParseError (400, or 416 for another scheme)."""
    scheme, colon, rest = text.partition(":")
    scheme_lower = scheme.lower()
    if not colon or not _SCHEME.fullmatch(scheme):
        raise SipParseError(400, f"{what} {describe(text)} has no scheme")
    if scheme_lower not in SCHEMES:
        raise SipParseError(416, f"unsupported URI scheme {describe(scheme)} in {what}")
    if not rest or _WHITESPACE.search(rest):
        raise SipParseError(400, f"bad {what} {describe(text)}")
    rest, question, header_text = rest.partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if question:
        pairs = []
        for item in _bounded_split(header_text, "&", what, "URI headers"):
            key, equals, value = item.partition("=")
            if not key or not equals:
                raise SipParseError(400, f"bad header part in {what} {describe(text)}")
            pairs.append((unescape(key, what), unescape(value, what)))
        headers = tuple(pairs)
    if scheme_lower == "tel":
        number, _, parameter_text = rest.partition(";")
        parameters = _parse_parameters(parameter_text, what) if _ else ()
        try:
            return Uri(scheme="tel", user=unescape(number, what), parameters=parameters, headers=headers)
        except ValueError as error:
            raise SipParseError(400, f"bad {what} {describe(text)}: {error}") from None
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, colon, password_text = userinfo.partition(":")
        user = unescape(user_text, what)
        password = unescape(password_text, what) if colon else None
        if not user:
            raise SipParseError(400, f"empty user in {what} {describe(text)}")
    host_port, semicolon, parameter_text = rest.partition(";")
    host, port = parse_host_port(host_port, what)
    parameters = _parse_parameters(parameter_text, what) if semicolon else ()
    return Uri(scheme=scheme_lower, user=user, password=password, host=host, port=port,
               parameters=parameters, headers=headers)
