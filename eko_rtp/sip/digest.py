"""HTTP Digest authentication of the requests we send, as a SIP UAC (RFC 3261 §22, RFC 7616, RFC 8760).

Theory of operation: a registrar or UAS that wants credentials answers our request
with 401 and WWW-Authenticate challenges, a proxy with 407 and Proxy-Authenticate
(§22.2, §22.3). The user agent hands the header values to
:func:`parse_challenges_untrusted`, then the challenges to :meth:`DigestClient.answer`,
and re-sends the request with the header it returns (Authorization for 401,
Proxy-Authorization for 407). Several challenges may come at once, one per
algorithm (RFC 8760 §2.4); we answer the strongest we implement: SHA-256 before MD5,
the server's order among equals. The password never leaves this module: only hashes
of it do, and the credentials' repr leaves it out.

A challenge that repeats a nonce we already answered means the server refused our
credentials (RFC 7616 §3.3: stale is false), and answering it again would loop, so
``answer`` returns None; a challenge with ``stale=true`` only says the nonce expired,
and is answered. Each answered challenge is remembered per (realm, proxy) with its
nonce count, so :meth:`DigestClient.preauthorize` can credential a later request
without the round trip, reusing the nonce with the next ``nc`` (RFC 7616 §3.4).

Everything parsed comes from the network: sizes are bounded, control characters
refused (what we echo back into a header must not be able to break it), and every
fault raises :class:`DigestError`. Not implemented: ``qop=auth-int``, SHA-512-256,
``username*`` (RFC 7616 §3.4.4) and the ``domain`` protection space.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable

import attrs

from eko_rtp.sip.errors import describe
from eko_rtp.sip.headers import split_comma_list

__all__ = [
    "DigestError", "DigestCredentials", "Challenge", "DigestClient", "parse_challenges_untrusted",
    "MAX_CHALLENGES", "MAX_VALUE_LENGTH", "MAX_FIELD_LENGTH",
]

MAX_CHALLENGES = 8
MAX_VALUE_LENGTH = 4096
MAX_FIELD_LENGTH = 1024
# RFC 7616 §3.4: nc is 8 hex digits.
_MAX_NONCE_COUNT = 0xFFFFFFFF
# A hostile server could make us remember one session per realm it invents.
_MAX_SESSIONS = 8

# Canonical name -> (hashlib name, preference rank, spelling on the wire). RFC 7616
# §3.2 spells the session variants "-sess"; some servers compare them case-sensitively.
_ALGORITHMS = {
    "SHA-256": ("sha256", 0, "SHA-256"),
    "SHA-256-SESS": ("sha256", 0, "SHA-256-sess"),
    "MD5": ("md5", 1, "MD5"),
    "MD5-SESS": ("md5", 1, "MD5-sess"),
}

_TOKEN_TEXT = r"[A-Za-z0-9.!%*_+`'~-]+"
_TOKEN = re.compile(_TOKEN_TEXT + r"\Z")
# RFC 7235 §2.1: auth-param = token BWS "=" BWS ( token / quoted-string ).
_PARAMETER = re.compile(rf'({_TOKEN_TEXT})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|{_TOKEN_TEXT})\Z')
# challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
_SCHEME = re.compile(rf"({_TOKEN_TEXT})(?:[ \t]+(.*))?\Z", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


class DigestError(Exception):
    """A malformed or oversized challenge from the network; the message says what was wrong."""


def _no_line_breaks(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    # A CR or LF would let a value end the header it is quoted in; the message
    # names the field, never its value (it may be the password).
    if value is not None and any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{type(instance).__name__} {attribute.name} contains CR, LF or NUL")


def _non_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value:
        raise ValueError(f"{type(instance).__name__} {attribute.name} is empty")


@attrs.frozen(kw_only=True)
class DigestCredentials:
    """Who we are; ``realm`` None answers a challenge of any realm, else only that realm."""

    username: str = attrs.field(validator=[_non_empty, _no_line_breaks])
    password: str = attrs.field(repr=False, validator=_no_line_breaks)
    realm: str | None = attrs.field(default=None, validator=_no_line_breaks)


@attrs.frozen(kw_only=True)
class Challenge:
    """One Digest challenge; ``algorithm`` upper-case, ``qop`` options lower-case."""

    realm: str = attrs.field(validator=_no_line_breaks)
    nonce: str = attrs.field(validator=[_non_empty, _no_line_breaks])
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = attrs.field(default=None, validator=_no_line_breaks)
    stale: bool = False
    userhash: bool = False
    proxy: bool = False


def parse_challenges_untrusted(values: list[str], *, proxy: bool) -> list[Challenge]:
    """Every Digest challenge in the WWW-Authenticate (or, with ``proxy``, Proxy-Authenticate) values."""
    header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    found: list[tuple[str, list[tuple[str, str]]]] = []
    for value in values:
        if len(value) > MAX_VALUE_LENGTH:
            raise DigestError(f"{header} value of {len(value)} characters is longer than {MAX_VALUE_LENGTH}")
        if _CONTROL.search(value):
            raise DigestError(f"control character in {header} {describe(value)}")
        # RFC 7235 §4.1: one value may hold several challenges, and each challenge a
        # comma-separated list of parameters: an element that is not name=value
        # starts the next challenge.
        for element in split_comma_list([value]):
            parameter = _PARAMETER.match(element)
            if parameter is None:
                start = _SCHEME.match(element)
                if start is None:
                    raise DigestError(f"malformed {describe(element)} in {header}")
                if len(found) == MAX_CHALLENGES:
                    raise DigestError(f"more than {MAX_CHALLENGES} challenges in {header}")
                found.append((start.group(1).lower(), []))
                if start.group(2) is None:
                    continue
                parameter = _PARAMETER.match(start.group(2))
                if parameter is None:
                    if found[-1][0] == "digest":
                        raise DigestError(f"malformed {describe(element)} in {header}")
                    continue  # the token68 of another scheme, which we skip anyway
            elif not found:
                raise DigestError(f"{header} starts with a parameter, not a scheme: {describe(element)}")
            found[-1][1].append((parameter.group(1).lower(), parameter.group(2)))
    return [_challenge(parameters, header, proxy) for scheme, parameters in found if scheme == "digest"]


def _challenge(parameters: list[tuple[str, str]], header: str, proxy: bool) -> Challenge:
    fields: dict[str, str] = {}
    for name, value in parameters:
        if name in fields:
            # RFC 7235 §2.1: each parameter name MUST only occur once per challenge.
            raise DigestError(f"{name} twice in a Digest challenge in {header}")
        fields[name] = _ESCAPE.sub(r"\1", value[1:-1]) if value.startswith('"') else value
    for name in ("realm", "nonce"):
        if name not in fields:
            raise DigestError(f"Digest challenge without {name} in {header}")
    for name in ("realm", "nonce", "opaque"):
        if len(fields.get(name, "")) > MAX_FIELD_LENGTH:
            raise DigestError(
                f"{name} of {len(fields[name])} characters is longer than {MAX_FIELD_LENGTH} in {header}")
    if not fields["nonce"]:
        raise DigestError(f"empty nonce in {header}")
    # RFC 7616 §3.3: algorithm absent means MD5.
    algorithm = fields.get("algorithm", "MD5")
    if not _TOKEN.match(algorithm):
        raise DigestError(f"bad algorithm {describe(algorithm)} in {header}")
    qop = tuple(option.strip().lower() for option in fields["qop"].split(",")) if "qop" in fields else ()
    if not all(_TOKEN.match(option) for option in qop):
        raise DigestError(f"bad qop {describe(fields['qop'])} in {header}")
    return Challenge(
        realm=fields["realm"],
        nonce=fields["nonce"],
        algorithm=algorithm.upper(),
        qop=qop,
        opaque=fields.get("opaque"),
        # RFC 7616 §3.3: stale and userhash are case-insensitive flags; anything
        # but "true" is false.
        stale=fields.get("stale", "").lower() == "true",
        userhash=fields.get("userhash", "").lower() == "true",
        proxy=proxy,
    )


@attrs.frozen(kw_only=True)
class _Session:
    """A challenge we answered, kept to reuse its nonce."""

    challenge: Challenge
    nonce_count: int
    # RFC 7616 §3.4.2: a -sess key is computed once, with the first request's cnonce;
    # sending that cnonce again keeps the key the same whichever way the server caches it.
    cnonce: str


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestClient:
    """Answers Digest challenges with one set of credentials and remembers the nonces it used."""

    def __init__(self, credentials: DigestCredentials, *, cnonce: Callable[[], str] | None = None):
        self._credentials = credentials
        self._new_cnonce = cnonce or (lambda: secrets.token_hex(16))
        self._sessions: dict[tuple[str, bool], _Session] = {}

    def answer(
        self, challenges: list[Challenge], *, method: str, uri: str, body: bytes = b""
    ) -> tuple[str, str] | None:
        """The (header name, value) answering the strongest usable challenge; None if none is.

        ``body`` would feed ``qop=auth-int``, which we do not implement.
        """
        _check_request(method, uri)
        # A realm whose challenge repeats a nonce we answered refused our credentials:
        # skip all of its challenges, or we would alternate between its algorithms.
        refused = {(challenge.realm, challenge.proxy) for challenge in challenges
                   if not challenge.stale and self._answered(challenge)}
        usable = [challenge for challenge in challenges
                  if (challenge.realm, challenge.proxy) not in refused and self._usable(challenge)]
        if not usable:
            return None
        # RFC 8760 §2.4: the UAC uses the topmost challenge it supports unless local
        # policy says otherwise; ours puts SHA-256 first. min() keeps the first of equals.
        chosen = min(usable, key=lambda challenge: _ALGORITHMS[challenge.algorithm][1])
        cnonce = self._new_cnonce()
        session = _Session(challenge=chosen, nonce_count=1, cnonce=cnonce)
        key = (chosen.realm, chosen.proxy)
        self._sessions.pop(key, None)
        if len(self._sessions) >= _MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[key] = session
        return self._header(session, method, uri, cnonce)

    def preauthorize(self, *, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """Headers for a new request, reusing every remembered nonce with the next nc."""
        _check_request(method, uri)
        headers = []
        for key, session in list(self._sessions.items()):
            # Without qop there is no nc, so a reused nonce is a replay the server must refuse.
            if not session.challenge.qop:
                continue
            if session.nonce_count == _MAX_NONCE_COUNT:
                del self._sessions[key]
                continue
            session = attrs.evolve(session, nonce_count=session.nonce_count + 1)
            self._sessions[key] = session
            sess = session.challenge.algorithm.endswith("-SESS")
            headers.append(self._header(session, method, uri, session.cnonce if sess else self._new_cnonce()))
        return headers

    def forget(self, realm: str | None = None) -> None:
        """Drop the remembered challenges: all of them, or those of one realm."""
        self._sessions = {key: session for key, session in self._sessions.items()
                          if realm is not None and key[0] != realm}

    def _answered(self, challenge: Challenge) -> bool:
        session = self._sessions.get((challenge.realm, challenge.proxy))
        return session is not None and session.challenge.nonce == challenge.nonce

    def _usable(self, challenge: Challenge) -> bool:
        if challenge.algorithm not in _ALGORITHMS:  # e.g. SHA-512-256 (RFC 8760 §2.3)
            return False
        if self._credentials.realm is not None and challenge.realm != self._credentials.realm:
            return False
        if challenge.qop:
            return "auth" in challenge.qop
        # RFC 2617 §3.2.2: cnonce MUST NOT be sent without qop, and -sess needs it.
        return not challenge.algorithm.endswith("-SESS")

    def _header(self, session: _Session, method: str, uri: str, cnonce: str) -> tuple[str, str]:
        challenge, credentials = session.challenge, self._credentials
        hash_name, _, algorithm = _ALGORITHMS[challenge.algorithm]

        def digest(text: str) -> str:
            return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()

        # RFC 7616 §3.4.2: A1 = username:realm:password; for -sess its hash is
        # hashed again with the nonce and cnonce. §3.4.3: A2 = method:uri for qop=auth.
        secret = digest(f"{credentials.username}:{challenge.realm}:{credentials.password}")
        if challenge.algorithm.endswith("-SESS"):
            secret = digest(f"{secret}:{challenge.nonce}:{cnonce}")
        request = digest(f"{method}:{uri}")
        nonce_count = f"{session.nonce_count:08x}"
        if challenge.qop:
            # §3.4.1: response = KD(H(A1), nonce:nc:cnonce:qop:H(A2))
            response = digest(f"{secret}:{challenge.nonce}:{nonce_count}:{cnonce}:auth:{request}")
        else:
            # RFC 2069 §2.1.2, kept by RFC 2617 §3.2.2.1: KD(H(A1), nonce:H(A2)).
            response = digest(f"{secret}:{challenge.nonce}:{request}")
        username = credentials.username
        if challenge.userhash:
            # RFC 7616 §3.4.4: the hashed username is computed after every other hash.
            username = digest(f"{username}:{challenge.realm}")
        parts = [f"username={_quote(username)}", f"realm={_quote(challenge.realm)}",
                 f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}", f'response="{response}"',
                 f"algorithm={algorithm}"]
        if challenge.qop:
            parts.append(f"cnonce={_quote(cnonce)}")
        if challenge.opaque is not None:
            # RFC 7616 §3.3: opaque goes back unchanged.
            parts.append(f"opaque={_quote(challenge.opaque)}")
        if challenge.qop:
            # RFC 7616 §3.4: qop and nc are sent as tokens, not quoted.
            parts += ["qop=auth", f"nc={nonce_count}"]
        if challenge.userhash:
            parts.append("userhash=true")
        return ("Proxy-Authorization" if challenge.proxy else "Authorization", "Digest " + ", ".join(parts))


def _check_request(method: str, uri: str) -> None:
    if not _TOKEN.match(method):
        raise ValueError(f"bad method {method!r}")
    if not uri or _CONTROL.search(uri):
        raise ValueError(f"bad request URI {uri!r}")
