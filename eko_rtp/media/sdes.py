"""SDES (RFC 4568): the SRTP keys of a call, carried in SDP ``a=crypto`` attributes.

Theory of operation: each side of an SDES call declares, in its own SDP, the master
key and salt it will *send* with (RFC 4568 §7.1: the key in an attribute protects
the media its sender sends). An offer lists one or more ``a=crypto`` lines in its
order of preference, each with a tag unique in the m= section; the answer carries
exactly one, with the tag and the crypto suite of the offered line it accepts and
a key of the answerer's own (§5.1.2). So a negotiated call has two keys:
the offerer's (for what we receive) and ours (for what we send), which
:class:`SrtpKeys` holds for ``media/srtp.py``.

:func:`parse_crypto_untrusted` reads one attribute value (the text after
``a=crypto:``) from the network, bounded in every length, and raises only
:class:`SdesError`. :func:`choose_answer` parses every offered value, skips the
ones we cannot honour (each with its reason), takes our most preferred suite among
the rest and makes a fresh key for our side; when nothing is left it raises
:class:`SdesError` with status 488 (RFC 4568 §5.1.2: an answerer that accepts no
offered crypto attribute rejects the stream). :func:`make_offer` and
:func:`accept_answer_untrusted` are the same for a re-INVITE without SDP, where
we offer.

What we refuse, and why (the RFC allows more than libsrtp through pylibsrtp can do):

- several master keys in one attribute (``inline:K1|2^20|1:4;inline:K2|2^20|2:4``).
  §6.1 makes an MKI mandatory then, because the sender may switch from key to key
  at any packet and names the key in it; one libsrtp context keyed once cannot
  follow, and taking the first key would fail authentication at the first switch.
  The attribute is skipped (another ``a=crypto`` line of the offer may do).
- one key *with* an MKI is accepted: the MKI is then the same fixed bytes in every
  packet, which ``media/srtp.py`` checks and cuts out before libsrtp sees it.
- session parameters that change the transform: ``KDR`` (libsrtp derives session
  keys once), ``UNENCRYPTED_SRTP``, ``UNENCRYPTED_SRTCP``, ``UNAUTHENTICATED_SRTP``
  (we only run encrypted and authenticated media), and any unknown parameter not
  marked optional by a leading ``-`` (§6.3, grammar in §9.2). ``WSH`` (replay
  window hint) is honoured; ``FEC_ORDER`` and ``FEC_KEY`` only concern an FEC
  stream, which we never negotiate, and are ignored.

A lifetime (``|2^31``) is kept but not enforced: it limits the packets the
*offerer* sends under its key, and rekeying is the offerer's re-INVITE. Our key
carries neither lifetime nor MKI (the defaults, §6.1).

Keys are secrets: the values here keep them out of ``repr``, and
:func:`redact_keys` takes them out of SDP bodies before anything is logged.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import secrets
from collections import Counter
from collections.abc import Callable, Sequence

import attrs

__all__ = [
    "SdesError",
    "SrtpMode",
    "SrtpPolicy",
    "CryptoSuite",
    "SUPPORTED_SUITES",
    "DEFAULT_PREFERENCE",
    "Mki",
    "CryptoAttribute",
    "SrtpKeys",
    "CryptoAnswer",
    "CryptoOffer",
    "parse_crypto_untrusted",
    "format_crypto",
    "choose_answer",
    "make_offer",
    "accept_answer_untrusted",
    "redact_keys",
]

KeySource = Callable[[int], bytes]

# Bounds on what the network may send us (the SDP body is already at most 16 KiB).
MAX_ATTRIBUTE_LENGTH = 1024
MAX_KEY_PARAMS = 16  # key-params in one attribute; more than one is refused anyway
MAX_SESSION_PARAMS = 16
MAX_BASE64_LENGTH = 128  # the longest key||salt of a registered suite (46 octets) is 64
MAX_TAG_DIGITS = 9  # RFC 4568 §9.1: tag = 1*9DIGIT
MAX_MKI_LENGTH = 128  # RFC 4568 §9.2: mki-length = 1*3DIGIT, 1..128 octets
MAX_LIFETIME_EXPONENT = 64
MAX_LIFETIME_DIGITS = 20
DEFAULT_REPLAY_WINDOW = 128  # libsrtp's own default (packets)
# libsrtp takes a window of 64 .. 0x7fff packets (srtp_stream_init).
MIN_REPLAY_WINDOW = 64
MAX_REPLAY_WINDOW = 0x7FFF


class SdesError(Exception):
    """An ``a=crypto`` we cannot use; ``status`` is the SIP response to send.

    Always 488 (Not Acceptable Here): a crypto attribute we cannot read is one we
    do not accept (RFC 4568 §7.1.1), not a malformed SDP body.
    """

    def __init__(self, message: str, *, status: int = 488):
        super().__init__(message)
        self.status = status


class CryptoSuite(enum.Enum):
    """The SRTP crypto suites we know (RFC 4568 §6.2, RFC 7714 §14.2)."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"

    @property
    def key_length(self) -> int:
        """Master key octets."""
        return _SIZES[self][0]

    @property
    def salt_length(self) -> int:
        """Master salt octets."""
        return _SIZES[self][1]

    @property
    def master_length(self) -> int:
        """Octets of key||salt, the ``inline:`` value decoded."""
        return _SIZES[self][0] + _SIZES[self][1]

    @property
    def rtp_tag_length(self) -> int:
        """Authentication tag octets on an SRTP packet."""
        return _SIZES[self][2]

    @property
    def rtcp_tag_length(self) -> int:
        """Authentication tag octets on an SRTCP packet."""
        return _SIZES[self][3]

    @property
    def is_aead(self) -> bool:
        return self is CryptoSuite.AEAD_AES_128_GCM


# suite -> (master key, master salt, SRTP tag, SRTCP tag), in octets.
# RFC 4568 §6.2.1-6.2.2: 128-bit key, 112-bit salt; the _32 suite keeps an 80-bit
# tag on SRTCP. RFC 7714 §12: AEAD_AES_128_GCM has a 96-bit salt, §14.2 a 16-octet tag.
_SIZES = {
    CryptoSuite.AES_CM_128_HMAC_SHA1_80: (16, 14, 10, 10),
    CryptoSuite.AES_CM_128_HMAC_SHA1_32: (16, 14, 4, 10),
    CryptoSuite.AEAD_AES_128_GCM: (16, 12, 16, 16),
}
_SUITES_BY_NAME = {suite.value: suite for suite in CryptoSuite}

# What media/srtp.py can run (its tests check each one against the libsrtp in the
# pylibsrtp wheel, which is built with OpenSSL and so has AES-GCM). A suite missing
# here is never offered nor accepted.
SUPPORTED_SUITES: frozenset[CryptoSuite] = frozenset(CryptoSuite)

# Our order of preference when the offer leaves us a choice: the AEAD suite (one
# pass for encryption and authentication, a 128-bit tag, and cheaper per packet
# in libsrtp), then the 80-bit tag, then the 32-bit tag (RFC 4568 §6.2.2 meant it
# for low-bandwidth links; still authenticated, with a weaker tag).
DEFAULT_PREFERENCE: tuple[CryptoSuite, ...] = (
    CryptoSuite.AEAD_AES_128_GCM,
    CryptoSuite.AES_CM_128_HMAC_SHA1_80,
    CryptoSuite.AES_CM_128_HMAC_SHA1_32,
)


def _check_preference(preference: Sequence[CryptoSuite]) -> tuple[CryptoSuite, ...]:
    preference = tuple(preference)
    if not preference:
        raise ValueError("the crypto suite preference must name at least one suite")
    for suite in preference:
        if not isinstance(suite, CryptoSuite):
            raise ValueError(f"{suite!r} is not a CryptoSuite")
        if suite not in SUPPORTED_SUITES:
            raise ValueError(f"{suite.value} is not supported by the SRTP backend")
    if len(set(preference)) != len(preference):
        raise ValueError("the crypto suite preference names a suite twice")
    return preference


class SrtpMode(enum.Enum):
    """When a call uses SRTP (``media.srtp``)."""

    OFF = "off"  # RTP/AVP only: an RTP/SAVP offer is not acceptable (488)
    OPTIONAL = "optional"  # what the offer asks: RTP/AVP in clear, RTP/SAVP with a=crypto as SRTP
    REQUIRED = "required"  # RTP/SAVP only: an offer without usable crypto is not acceptable (488)


@attrs.frozen(kw_only=True)
class SrtpPolicy:
    """The server's SRTP settings, as the offer/answer core (``media/negotiation.py``) applies them.

    ``insecure_signalling``: accept (and send) ``a=crypto`` keys in SIP that came over
    UDP or TCP. RFC 4568 §8.3: the keys are in the clear in the SDP, so anyone who
    reads the signalling can decrypt the media; only TLS hides them. For test labs
    and private links only.
    """

    mode: SrtpMode = attrs.field(default=SrtpMode.OPTIONAL, validator=attrs.validators.instance_of(SrtpMode))
    preference: tuple[CryptoSuite, ...] = attrs.field(default=DEFAULT_PREFERENCE, converter=_check_preference)
    insecure_signalling: bool = False

    def keys_allowed_over(self, transport: str) -> bool:
        """Whether SDES keys may travel in SIP that came (or goes) over ``transport``."""
        return transport == "tls" or self.insecure_signalling


def _tag_value(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**MAX_TAG_DIGITS:
        raise ValueError(f"{attribute.name} must be 0..999999999 (RFC 4568 §9.1), not {value!r}")


@attrs.frozen(kw_only=True)
class Mki:
    """A master key identifier: ``value`` sent big-endian in ``length`` octets (RFC 3711 §3.1)."""

    value: int
    length: int

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.length, int) or not 1 <= self.length <= MAX_MKI_LENGTH:
            raise ValueError(f"MKI length must be 1..{MAX_MKI_LENGTH} octets, not {self.length!r}")
        if not isinstance(self.value, int) or not 0 <= self.value < 256**self.length:
            raise ValueError(f"MKI value {self.value!r} does not fit in {self.length} octet(s)")

    @property
    def octets(self) -> bytes:
        """The MKI field as it appears in each packet."""
        return self.value.to_bytes(self.length, "big")


def _master_for_suite(instance, attribute, value) -> None:
    if not isinstance(value, bytes) or len(value) != instance.suite.master_length:
        length = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ValueError(f"{attribute.name} for {instance.suite.value} must be {instance.suite.master_length} "
                         f"octets of key||salt, not {length}")


@attrs.frozen(kw_only=True)
class CryptoAttribute:
    """One ``a=crypto`` line, parsed: one master key, its suite, and what came with it."""

    tag: int = attrs.field(validator=_tag_value)
    suite: CryptoSuite = attrs.field(validator=attrs.validators.instance_of(CryptoSuite))
    master: bytes = attrs.field(validator=_master_for_suite, repr=False)  # key||salt: a secret
    lifetime: int | None = None  # packets, when given (§6.1 default: 2^48 SRTP, 2^31 SRTCP)
    mki: Mki | None = None
    window_size_hint: int | None = None  # WSH (§6.3.7)
    optional_parameters: tuple[str, ...] = ()  # '-'-prefixed session parameters we ignored

    def to_value(self) -> str:
        """The attribute value (after ``a=crypto:``), as we write it: no lifetime, MKI or parameters."""
        if self.lifetime is not None or self.mki is not None:
            raise ValueError("we never write a lifetime or an MKI")
        return format_crypto(tag=self.tag, suite=self.suite, master=self.master)


@attrs.frozen(kw_only=True)
class SrtpKeys:
    """What ``media/srtp.py`` needs for one call: two master keys and how to read the peer's packets."""

    suite: CryptoSuite = attrs.field(validator=attrs.validators.instance_of(CryptoSuite))
    send_master: bytes = attrs.field(validator=_master_for_suite, repr=False)  # ours
    receive_master: bytes = attrs.field(validator=_master_for_suite, repr=False)  # the peer's
    receive_mki: Mki | None = None  # in every packet the peer sends: checked, then cut out
    replay_window: int = DEFAULT_REPLAY_WINDOW

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.replay_window, int) or not MIN_REPLAY_WINDOW <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise ValueError(
                f"replay_window must be {MIN_REPLAY_WINDOW}..{MAX_REPLAY_WINDOW}, not {self.replay_window!r}")
        # A key used by both directions would make two streams share a keystream
        # whenever their SSRC and index meet (RFC 3711 §9.1; RFC 4568 §7.1.1): never.
        if self.send_master == self.receive_master:
            raise ValueError("the send and receive master keys must differ")


@attrs.frozen(kw_only=True)
class CryptoAnswer:
    """Our answer to an offer's ``a=crypto`` lines: the line to send and the call's keys."""

    offered: CryptoAttribute  # the offered attribute we accepted
    keys: SrtpKeys

    @property
    def tag(self) -> int:
        return self.offered.tag

    @property
    def attribute_value(self) -> str:
        """The value for the answer's ``a=crypto:`` attribute."""
        return format_crypto(tag=self.offered.tag, suite=self.keys.suite, master=self.keys.send_master)

    @property
    def line(self) -> str:
        """The whole SDP line, without its CRLF."""
        return f"a=crypto:{self.attribute_value}"


@attrs.frozen(kw_only=True)
class CryptoOffer:
    """Our ``a=crypto`` lines when we make the offer, one per suite, tags 1.. in our preference."""

    attributes: tuple[CryptoAttribute, ...]

    def __attrs_post_init__(self) -> None:
        if not self.attributes:
            raise ValueError("an offer needs at least one crypto attribute")
        tags = [attribute.tag for attribute in self.attributes]
        if len(set(tags)) != len(tags):
            raise ValueError("crypto attribute tags must be unique in a media section (RFC 4568 §4)")

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(f"a=crypto:{attribute.to_value()}" for attribute in self.attributes)


# ---------------------------------------------------------------- parsing

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")
_SUITE_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_INLINE_PREFIX = "inline:"


def _refuse(tag: str | None, why: str) -> SdesError:
    return SdesError(f"tag {tag}: {why}" if tag is not None else why)


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _parse_lifetime(text: str, tag: str) -> int:
    # RFC 4568 §9.2: lifetime = ["2^"] 1*(DIGIT)
    power = text.startswith("2^")
    digits = text[2:] if power else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > MAX_LIFETIME_DIGITS:
        raise _refuse(tag, f"key lifetime {_shown(text)} is not a number or 2^number")
    lifetime = int(digits)
    if power:
        if lifetime > MAX_LIFETIME_EXPONENT:
            raise _refuse(tag, f"key lifetime {_shown(text)} exceeds 2^{MAX_LIFETIME_EXPONENT}")
        lifetime = 1 << lifetime
    if lifetime == 0:
        raise _refuse(tag, "a key lifetime of 0 packets protects nothing")
    return lifetime


def _parse_mki(text: str, tag: str) -> Mki:
    # RFC 4568 §9.2: mki = mki-value ":" mki-length; mki-value = 1*DIGIT; mki-length = 1*3DIGIT
    value_text, _, length_text = text.partition(":")
    if (not value_text.isascii() or not value_text.isdigit() or not length_text.isascii()
            or not length_text.isdigit() or len(length_text) > 3):
        raise _refuse(tag, f"MKI {_shown(text)} is not <value>:<length>")
    length = int(length_text)
    if not 1 <= length <= MAX_MKI_LENGTH:
        raise _refuse(tag, f"MKI length {length} is outside 1..{MAX_MKI_LENGTH} octets")
    # A value that fits in `length` octets has at most this many decimal digits.
    if len(value_text) > 3 * length:
        raise _refuse(tag, f"MKI value does not fit in {length} octet(s)")
    value = int(value_text)
    if value >= 256**length:
        raise _refuse(tag, f"MKI value {value} does not fit in {length} octet(s)")
    return Mki(value=value, length=length)


def _parse_key_param(text: str, suite: CryptoSuite, tag: str) -> tuple[bytes, int | None, Mki | None]:
    # RFC 4568 §9.2: key-param = "inline:" key-salt ["|" lifetime] ["|" mki]; ABNF
    # literals are case-insensitive (RFC 5234 §2.3), so "INLINE:" is the same method.
    if text[: len(_INLINE_PREFIX)].lower() != _INLINE_PREFIX:
        method = text.partition(":")[0]
        raise _refuse(tag, f"key method {_shown(method)} is not supported (only inline:)")
    parts = text[len(_INLINE_PREFIX):].split("|")
    if len(parts) > 3:
        raise _refuse(tag, "an inline key has at most a lifetime and an MKI after it")
    encoded, extras = parts[0], parts[1:]
    if len(encoded) > MAX_BASE64_LENGTH:
        raise _refuse(tag, f"the inline key is {len(encoded)} characters long, more than {MAX_BASE64_LENGTH}")
    # Some stacks drop the base64 padding; put it back before the strict decode.
    padded = encoded + "=" * (-len(encoded) % 4)
    if not _BASE64.match(padded):
        raise _refuse(tag, "the inline key is not base64")
    try:
        master = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(tag, "the inline key is not base64") from None
    if len(master) != suite.master_length:
        raise _refuse(tag, f"{suite.value} needs {suite.master_length} octets of key and salt "
                           f"({suite.key_length} + {suite.salt_length}), the inline key has {len(master)}")
    lifetime = mki = None
    for extra in extras:
        if ":" in extra:
            if mki is not None:
                raise _refuse(tag, "the inline key has two MKIs")
            mki = _parse_mki(extra, tag)
        else:
            if lifetime is not None or mki is not None:
                raise _refuse(tag, "a key lifetime must come once, before the MKI")
            lifetime = _parse_lifetime(extra, tag)
    return master, lifetime, mki


def _parse_session_parameter(text: str, tag: str) -> int | None:
    """The WSH value, None for a parameter we may ignore; refuses the rest."""
    name, has_value, value = text.partition("=")
    if name == "WSH" and has_value:
        # RFC 4568 §6.3.7: the window size hint is at least 64.
        if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) < MIN_REPLAY_WINDOW:
            raise _refuse(tag, f"window size hint {_shown(text)} is not a number of at least {MIN_REPLAY_WINDOW}")
        return int(value)
    if name in ("FEC_ORDER", "FEC_KEY"):
        return None  # only for an FEC stream, which we never negotiate
    if name in ("KDR", "UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"):
        raise _refuse(tag, f"session parameter {name} is not supported")
    if text.startswith("-"):
        return None  # optional: a receiver that does not know it may ignore it
    raise _refuse(tag, f"unknown session parameter {_shown(text)}")


def parse_crypto_untrusted(value: str) -> CryptoAttribute:
    """Parse one ``a=crypto`` value (the text after ``a=crypto:``); raises only :class:`SdesError`.

    ``<tag> <suite> inline:<base64 key||salt>[|lifetime][|MKI:length] [session parameters]``
    (RFC 4568 §4, §6.1, grammar in §9). Refuses what we cannot honour (see the
    module docstring) as well as what does not parse.
    """
    if not isinstance(value, str):
        raise SdesError(f"a crypto attribute must be text, not {type(value).__name__}")
    if len(value) > MAX_ATTRIBUTE_LENGTH:
        raise SdesError(
            f"crypto attribute of {len(value)} characters exceeds the {MAX_ATTRIBUTE_LENGTH}-character limit")
    fields = value.split()
    if len(fields) < 3:
        raise SdesError(f"crypto attribute {_shown(value)} is not <tag> <crypto-suite> <key-params>")
    tag_text, suite_name, key_params = fields[0], fields[1], fields[2]
    if not tag_text.isascii() or not tag_text.isdigit() or len(tag_text) > MAX_TAG_DIGITS:
        raise SdesError(f"crypto attribute tag {_shown(tag_text)} is not 1 to {MAX_TAG_DIGITS} digits")
    tag = str(int(tag_text))
    if not _SUITE_NAME.match(suite_name):
        raise _refuse(tag, f"crypto suite {_shown(suite_name)} is not a suite name")
    suite = _SUITES_BY_NAME.get(suite_name)
    if suite is None or suite not in SUPPORTED_SUITES:
        raise _refuse(tag, f"crypto suite {_shown(suite_name)} is not supported")
    keys = key_params.split(";")
    if len(keys) > 1:
        # RFC 4568 §6.1: several keys each carry an MKI and the sender may switch
        # between them at any packet; one libsrtp context keyed once cannot follow.
        shown = len(keys) if len(keys) <= MAX_KEY_PARAMS else f"more than {MAX_KEY_PARAMS}"
        raise _refuse(tag, f"{shown} master keys in one attribute (switched by MKI) are not supported")
    master, lifetime, mki = _parse_key_param(keys[0], suite, tag)
    session_parameters = fields[3:]
    if len(session_parameters) > MAX_SESSION_PARAMS:
        raise _refuse(tag, f"more than {MAX_SESSION_PARAMS} session parameters")
    window_size_hint = None
    optional = []
    for parameter in session_parameters:
        hint = _parse_session_parameter(parameter, tag)
        if hint is not None:
            window_size_hint = hint
        elif parameter.startswith("-"):
            optional.append(parameter)
    return CryptoAttribute(
        tag=int(tag),
        suite=suite,
        master=master,
        lifetime=lifetime,
        mki=mki,
        window_size_hint=window_size_hint,
        optional_parameters=tuple(optional),
    )


# ---------------------------------------------------------------- writing


def format_crypto(*, tag: int, suite: CryptoSuite, master: bytes) -> str:
    """An ``a=crypto`` value: ``<tag> <suite> inline:<base64 key||salt>``."""
    if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag < 10**MAX_TAG_DIGITS:
        raise ValueError(f"tag must be 0..999999999 (RFC 4568 §9.1), not {tag!r}")
    if not isinstance(master, bytes) or len(master) != suite.master_length:
        raise ValueError(f"{suite.value} needs {suite.master_length} octets of key and salt")
    return f"{tag} {suite.value} {_INLINE_PREFIX}{base64.b64encode(master).decode('ascii')}"


def _fresh_master(suite: CryptoSuite, rng: KeySource) -> bytes:
    master = rng(suite.master_length)
    if not isinstance(master, bytes) or len(master) != suite.master_length:
        raise ValueError(f"the key source returned {len(master) if isinstance(master, bytes) else master!r} "
                         f"instead of {suite.master_length} octets")
    return master


def _replay_window(offered: CryptoAttribute) -> int:
    if offered.window_size_hint is None:
        return DEFAULT_REPLAY_WINDOW
    # A hint above libsrtp's ceiling gets the ceiling; below our default, the default
    # (a larger window only forgives more reordering, it never lets a replay through).
    return max(DEFAULT_REPLAY_WINDOW, min(offered.window_size_hint, MAX_REPLAY_WINDOW))


def choose_answer(
    offers: Sequence[str],
    *,
    preference: Sequence[CryptoSuite] = DEFAULT_PREFERENCE,
    rng: KeySource = secrets.token_bytes,
    previous: CryptoAnswer | None = None,
) -> CryptoAnswer:
    """Answer an m= section's ``a=crypto`` values (in offer order); raises :class:`SdesError` 488.

    The suite is the first of ``preference`` that some usable offered attribute
    has; among several with that suite, the offerer's first. Our key comes from
    ``rng(octets)`` (a CSPRNG: :func:`secrets.token_bytes`). The answer takes the
    accepted attribute's tag and suite (RFC 4568 §5.1.2).

    ``previous`` is the answer in force: when the offer still holds the attribute
    it accepted, unchanged, it is answered again as it was, so a re-INVITE that
    does not rekey leaves the SRTP contexts (and their rollover counters and replay
    windows) alone and the re-answer's body unchanged (RFC 3264 §8: same version).
    """
    preference = _check_preference(preference)
    usable: list[CryptoAttribute] = []
    reasons: list[str] = []
    for value in offers:
        try:
            usable.append(parse_crypto_untrusted(value))
        except SdesError as error:
            reasons.append(str(error))
    # RFC 4568 §4: tags are unique in a media section; an answer naming a tag that
    # two offered lines share would not say which one we took.
    tags = Counter(attribute.tag for attribute in usable)
    reasons.extend(f"tag {tag}: offered twice" for tag in sorted(tag for tag, count in tags.items() if count > 1))
    usable = [attribute for attribute in usable if tags[attribute.tag] == 1]
    if previous is not None and previous.offered in usable and previous.keys.suite in preference:
        return previous
    for suite in preference:
        chosen = next((attribute for attribute in usable if attribute.suite is suite), None)
        if chosen is not None:
            keys = SrtpKeys(
                suite=suite,
                send_master=_fresh_master(suite, rng),
                receive_master=chosen.master,
                receive_mki=chosen.mki,
                replay_window=_replay_window(chosen),
            )
            return CryptoAnswer(offered=chosen, keys=keys)
    if not offers:
        raise SdesError("no offered crypto suite is supported: the offer has no a=crypto attribute")
    for attribute in usable:
        reasons.append(f"tag {attribute.tag}: crypto suite {attribute.suite.value} is not in our preference")
    raise SdesError("no offered crypto suite is supported: " + "; ".join(reasons))


def make_offer(
    *,
    preference: Sequence[CryptoSuite] = DEFAULT_PREFERENCE,
    rng: KeySource = secrets.token_bytes,
) -> CryptoOffer:
    """Our ``a=crypto`` lines for an offer: one per suite of ``preference``, each with its own fresh key.

    A key per line, not one shared: the suites have different salt lengths, and a
    key offered but not chosen must never be the one that protects media.
    """
    preference = _check_preference(preference)
    return CryptoOffer(attributes=tuple(
        CryptoAttribute(tag=tag, suite=suite, master=_fresh_master(suite, rng))
        for tag, suite in enumerate(preference, start=1)
    ))


def accept_answer_untrusted(offer: CryptoOffer, answers: Sequence[str]) -> SrtpKeys:
    """The keys from the peer's answer to our :func:`make_offer`; raises only :class:`SdesError` (488).

    RFC 4568 §5.1.3: the offerer checks that the answer echoes the tag and the
    suite of one of its attributes, and fails the negotiation otherwise. (In an ACK a 488 cannot be sent: the caller hangs up.)
    """
    if len(answers) != 1:
        raise SdesError(f"the answer must carry exactly one a=crypto attribute, it has {len(answers)}")
    answered = parse_crypto_untrusted(answers[0])
    ours = next((attribute for attribute in offer.attributes if attribute.tag == answered.tag), None)
    if ours is None:
        raise SdesError(f"tag {answered.tag}: the answer's tag is not one we offered")
    if ours.suite is not answered.suite:
        raise SdesError(f"tag {answered.tag}: the answer chose {answered.suite.value}, we offered {ours.suite.value}")
    return SrtpKeys(
        suite=ours.suite,
        send_master=ours.master,
        receive_master=answered.master,
        receive_mki=answered.mki,
        replay_window=_replay_window(answered),
    )


# ---------------------------------------------------------------- logging

_INLINE_KEY_TEXT = re.compile(r"(?i)(inline:)[A-Za-z0-9+/=]+")
_INLINE_KEY_BYTES = re.compile(rb"(?i)(inline:)[A-Za-z0-9+/=]+")


def redact_keys(body: str | bytes) -> str | bytes:
    """``body`` with every inline SDES key replaced by ``[redacted]`` (lifetime and MKI kept)."""
    if isinstance(body, bytes):
        return _INLINE_KEY_BYTES.sub(rb"\1[redacted]", body)
    return _INLINE_KEY_TEXT.sub(r"\1[redacted]", body)
