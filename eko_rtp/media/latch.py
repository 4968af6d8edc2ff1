"""Where one call's media may come from and go to: the source latch, sans I/O.

Theory of operation: a UDP port accepts datagrams from anyone, and an SDP ``c=``
line may name anyone. Two abuses follow, and this module is the one place that
says what stops them.

- **Reflection.** An INVITE whose ``c=`` names a victim, never ACKed, would have
  us stream the greeting to the victim (50 packets a second for the 32 s the
  unACKed 200 OK lives: hundreds of times the bytes of the INVITE). So media goes
  to a signalled address outside ``trusted_networks`` only once the caller has
  shown it is real: an RTP packet came from the caller (we then answer where the
  caller's media comes from, RFC 4961 symmetric RTP), or the ACK came (the dialog
  is confirmed, RFC 3261 §13.3.1.4) and the address is a public unicast one. A
  private-use, loopback, link-local, multicast or reserved address outside
  ``trusted_networks`` is one a remote caller cannot mean for us (a phone behind a
  NAT names its inside address; anything else aims at our own networks), and a
  name would need a blocking look-up: those wait for the caller's packets, ACK or
  not. Until then the stream plays nothing (its timestamps keep counting, and the
  greeting waits instead of being cut). Addresses in ``trusted_networks`` (our
  trunks' media gateways, loopback) get media from the 200 OK, so frame 0 still
  leaves with it.

- **Hijack.** Re-pointing a call's audio at the source of any well-formed RTP
  packet gives the call to whoever sends one first or last. So the stream latches
  *once*: to the first packet from the signalled address (``c=``/``m=``), or, for
  a caller behind a NAT, to the first packet after the answer from an
  *acceptable* source; from then on only packets from that exact (address, port)
  count (audio, RFC 4733 events, statistics, the inactivity timer). The rest are
  dropped and counted, never logged one by one. The latch moves again only when a
  re-INVITE signals a new address; or when the caller's own stream (its SSRC)
  comes from another acceptable source after the latched one has been silent for
  ``relatch_after`` (a NAT that re-mapped the caller's port); or when the
  signalled address itself starts sending to a stream latched by NAT rules (the
  caller proved that its own address works; a stray that won the race after the
  answer loses the latch to it).

An *acceptable* source, for a NAT latch (after the 200 OK only: before it the
caller does not know our port), is one of:

1. the signalled IP with another port (a NAT or a media relay that kept the
   address and changed the port);
2. an address in ``trusted_networks`` (a trunk whose media gateways send from
   another address of their pool than the one their SDP names);
3. any address, when the signalled one is a private-use address (RFC 1918,
   RFC 6598 shared address space, RFC 4193 unique local): a phone behind a NAT
   can only name its inside address, and symmetric RTP is the only way to reach
   it.

The caller's SSRC decides only a move after silence. Packets from the latched
source count whatever their SSRC: a change there is legitimate (RFC 3550 §8.2
collision, a B2BUA re-originating the stream), and a source that keeps sending
never falls silent, so refusing it would silence the call for good. But a move
must carry the SSRC the latched source last sent: a phone whose NAT re-mapped
keeps its stream, while an off-path stranger cannot guess a random 32-bit SSRC.
Silence alone is not enough, since callers with silence suppression (a phone's
VAD) go quiet for seconds at a time.

RTCP counts as the caller's sign of life (the inactivity timer) only from the IP
the RTP is latched to, or, before any latch, from a signalled IP or (after the
answer) an acceptable source: otherwise a stranger's RTCP would keep alive a call
that streams to a victim.

The per-packet cost stays a tuple compare: the stream compares a packet's source
with :attr:`SourceLatch.source` itself and calls :meth:`SourceLatch.admit` only
when they differ (strays, and the first packet).
"""

from __future__ import annotations

import functools
import ipaddress

import attrs

from eko_rtp.state_enum import StateEnum

__all__ = [
    "LatchAction",
    "LatchInput",
    "LatchPolicy",
    "LatchState",
    "SourceLatch",
    "TRANSITIONS",
    "DEFAULT_TRUSTED_NETWORKS",
    "PRIVATE_USE_NETWORKS",
    "parse_networks",
]

# Loopback: `bin/eko-dev run`, the tests and the benchmark run caller and server on one host.
DEFAULT_TRUSTED_NETWORKS = ("127.0.0.0/8", "::1/128")

# Addresses a phone behind a NAT names in its SDP, which nobody outside can reach.
PRIVATE_USE_NETWORKS = tuple(ipaddress.ip_network(text) for text in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598: carrier-grade NAT
    "fc00::/7",  # RFC 4193: unique local
))


def parse_networks(texts) -> tuple:
    """CIDR strings as ``ip_network`` values; a ``ValueError`` names the bad entry.

    The same rules and words as ``sip.trusted_networks`` (sip/admission.py), so an
    operator reads one kind of error for both keys.
    """
    networks = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"expected CIDR strings like '192.0.2.0/24', got {text!r}")
        try:
            networks.append(ipaddress.ip_network(text.strip()))
            continue
        except ValueError:
            pass
        try:
            # An address with a prefix is most likely a typo for its network: say which.
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network like 192.0.2.0/24 or 2001:db8::/32") from None
        raise ValueError(f"{text!r} has host bits set: write {str(loose)!r} (or the address alone)")
    return tuple(networks)


# Each call's latch reads its caller's address three ways at the INVITE, and ipaddress
# parses in Python: the answers per host are kept, bounded (a flood of offers may name
# many hosts), so a trunk's few gateways are parsed once.
_HOSTS_KEPT = 1024


@functools.lru_cache(maxsize=_HOSTS_KEPT)
def _address(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None  # not an IP literal: trusted by nothing, private to nobody


def _in(host: str, networks) -> bool:
    address = _address(host)
    return address is not None and any(address in network for network in networks)


@functools.lru_cache(maxsize=_HOSTS_KEPT)
def _private(host: str) -> bool:
    return _in(host, PRIVATE_USE_NETWORKS)


@functools.lru_cache(maxsize=_HOSTS_KEPT)
def _canonical(host: str) -> str:
    """``host`` as the kernel writes a datagram's source (an IPv6 address compressed, lowercase)."""
    address = _address(host)
    return host if address is None else address.compressed


@functools.lru_cache(maxsize=_HOSTS_KEPT)
def _public(host: str) -> bool:
    """Whether ``host`` is a unicast IP address a remote caller may name for itself."""
    address = _address(host)
    return (address is not None and not any(address in network for network in PRIVATE_USE_NETWORKS)
            and not (address.is_loopback or address.is_link_local or address.is_multicast
                     or address.is_unspecified or address.is_reserved))


_VERDICTS_KEPT = 1024


def _networks(instance, attribute, value) -> None:
    if not isinstance(value, tuple) or not all(
            isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for item in value):
        raise ValueError(f"{attribute.name} must be a tuple of ip_network values (see parse_networks), not {value!r}")


@attrs.frozen(kw_only=True)
class LatchPolicy:
    """The server-wide rules (config ``media.trusted_networks``, ``media.relatch_after``)."""

    trusted_networks: tuple = attrs.field(default=parse_networks(DEFAULT_TRUSTED_NETWORKS),
                                          validator=_networks)
    relatch_after: float = 2.0  # s the latched source must be silent before another may take its place
    # host -> trusted: parsing an address costs microseconds, and a flood of strays comes
    # from a few hosts; bounded, as a spoofed flood comes from many.
    _verdicts: dict = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.relatch_after, (int, float)) and self.relatch_after > 0):
            raise ValueError(f"relatch_after must be a positive number of seconds, not {self.relatch_after!r}")

    def trusts(self, host: str) -> bool:
        """Whether media may go to ``host`` before the caller proved it is there."""
        verdicts = self._verdicts
        verdict = verdicts.get(host)
        if verdict is None:
            if len(verdicts) >= _VERDICTS_KEPT:
                verdicts.clear()
            verdict = verdicts[host] = _in(host, self.trusted_networks)
        return verdict


class LatchState(StateEnum):
    WAITING = "waiting"  # nothing latched: media goes to the signalled address (when allowed)
    SIGNALLED = "signalled"  # latched to the address the SDP gave
    LEARNED = "learned"  # latched to another acceptable source (a NAT's outside address)


class LatchInput(StateEnum):
    FROM_SIGNALLED = "from the signalled address"
    FROM_ACCEPTABLE = "from an acceptable source"
    FROM_MOVED_CALLER = "the caller's SSRC from an acceptable source, the latched one silent"
    FROM_STRANGER = "from anyone else"
    NEW_ADDRESS = "new signalled address"  # a re-INVITE moved the media


class LatchAction(StateEnum):
    LATCH = "latch"  # the packet's source is the caller's from now on (the packet counts)
    DROP = "drop"  # a stray: counted and ignored
    RESET = "reset"  # forget the latch


_S, _I, _A = LatchState, LatchInput, LatchAction
_STRANGER = LatchInput.FROM_STRANGER

# Every (state, input) pair is here: a packet can always be classified, so no input is illegal.
TRANSITIONS: dict[tuple[LatchState, LatchInput], tuple[LatchState, LatchAction]] = {
    (_S.WAITING, _I.FROM_SIGNALLED): (_S.SIGNALLED, _A.LATCH),
    (_S.WAITING, _I.FROM_ACCEPTABLE): (_S.LEARNED, _A.LATCH),
    (_S.WAITING, _I.FROM_MOVED_CALLER): (_S.LEARNED, _A.LATCH),
    (_S.WAITING, _I.FROM_STRANGER): (_S.WAITING, _A.DROP),
    (_S.SIGNALLED, _I.FROM_SIGNALLED): (_S.SIGNALLED, _A.LATCH),
    (_S.SIGNALLED, _I.FROM_ACCEPTABLE): (_S.SIGNALLED, _A.DROP),
    (_S.SIGNALLED, _I.FROM_MOVED_CALLER): (_S.LEARNED, _A.LATCH),
    (_S.SIGNALLED, _I.FROM_STRANGER): (_S.SIGNALLED, _A.DROP),
    # The signalled address itself speaking beats a NAT latch, at once.
    (_S.LEARNED, _I.FROM_SIGNALLED): (_S.SIGNALLED, _A.LATCH),
    (_S.LEARNED, _I.FROM_ACCEPTABLE): (_S.LEARNED, _A.DROP),
    (_S.LEARNED, _I.FROM_MOVED_CALLER): (_S.LEARNED, _A.LATCH),
    (_S.LEARNED, _I.FROM_STRANGER): (_S.LEARNED, _A.DROP),
    (_S.WAITING, _I.NEW_ADDRESS): (_S.WAITING, _A.RESET),
    (_S.SIGNALLED, _I.NEW_ADDRESS): (_S.WAITING, _A.RESET),
    (_S.LEARNED, _I.NEW_ADDRESS): (_S.WAITING, _A.RESET),
}


class SourceLatch:
    """One call's latch: where its media comes from, and whether it may be sent yet.

    The shell tells it the signalled address (:meth:`signal`, at the INVITE and each
    re-INVITE or ACK with SDP), the answer (:meth:`answer`) and the ACK
    (:meth:`acknowledge`), and asks :meth:`admit` about every RTP packet whose
    source is not :attr:`source`.
    """

    __slots__ = ("policy", "state", "source", "ssrc", "signalled", "_signalled_hosts", "_signalled_trusted",
                 "_signalled_private", "_signalled_public", "answered", "acknowledged", "strays", "relatches",
                 "rtcp_strays")

    def __init__(self, *, policy: LatchPolicy, signalled: tuple | None = None, signalled_rtcp: tuple | None = None):
        self.policy = policy
        self.state = LatchState.WAITING
        self.source: tuple | None = None  # the latched (address, port); None while WAITING
        self.ssrc: int | None = None  # the SSRC of the packet that latched it
        self.signalled: tuple | None = None
        self._signalled_hosts: tuple[str, ...] = ()  # RTP's and RTCP's, for RTCP before a latch
        self._signalled_trusted = False
        self._signalled_private = False
        self._signalled_public = False
        self.answered = False
        self.acknowledged = False
        self.strays = 0  # RTP packets dropped: not from the latched source
        self.rtcp_strays = 0  # RTCP packets dropped: not from the caller's address
        self.relatches = 0  # latches after the first (re-INVITE excepted)
        self.signal(signalled, signalled_rtcp)

    # -- what the shell tells us ---------------------------------------------------

    def signal(self, address: tuple | None, rtcp: tuple | None = None) -> bool:
        """The SDP's RTP (and RTCP) address; None: none given (on hold). True when a latch was reset.

        The same address again (a hold, a resume, a session refresh) keeps the latch:
        only a moved address is a new stream to latch (RFC 3264 §8.3.1).
        """
        if address is None:
            return False
        address = (_canonical(address[0]), address[1])
        if address == self.signalled:
            return False
        self.signalled = address
        hosts = {address[0]} if rtcp is None else {address[0], _canonical(rtcp[0])}
        self._signalled_hosts = tuple(hosts)
        self._signalled_trusted = self.policy.trusts(address[0])
        self._signalled_private = _private(address[0])
        self._signalled_public = _public(address[0])
        if self.state is LatchState.WAITING:
            return False
        self._move(LatchInput.NEW_ADDRESS)
        self.source = None
        self.ssrc = None
        return True

    def answer(self) -> None:
        """Our 200 OK is out: the caller knows our port, a NAT latch may begin."""
        self.answered = True

    def acknowledge(self) -> None:
        """The ACK came: the dialog is confirmed, media may go to a public signalled address."""
        self.acknowledged = True

    # -- what the shell asks -------------------------------------------------------

    @property
    def may_send(self) -> bool:
        """Whether media may go to :attr:`destination` now (reflection guard)."""
        return (self.source is not None or self._signalled_trusted
                or self.acknowledged and self._signalled_public)

    @property
    def destination(self) -> tuple | None:
        """Where our media goes: the latched source, else the signalled address."""
        return self.source if self.source is not None else self.signalled

    def classify(self, source: tuple, ssrc: int, now: float, last_heard: float | None,
                 caller_ssrc: int | None) -> LatchInput:
        """What a packet from ``source`` (not the latched one) carrying ``ssrc`` is, at ``now``.

        ``last_heard``: when the latched source was last heard (RTP, or RTCP from its
        address), None if never; ``caller_ssrc``: the SSRC of its last RTP packet.
        """
        signalled = self.signalled
        # An IPv6 socket's sources are (host, port, flowinfo, scope id): the first two say who.
        if signalled is not None and source[1] == signalled[1] and source[0] == signalled[0]:
            return LatchInput.FROM_SIGNALLED
        if not self.answered or self.source is not None and ssrc != caller_ssrc:
            return _STRANGER  # latched, another SSRC: dropped without looking further
        if not self._acceptable(source[0]):
            return _STRANGER
        if self.source is None:
            return LatchInput.FROM_ACCEPTABLE
        if last_heard is None or now - last_heard >= self.policy.relatch_after:
            return LatchInput.FROM_MOVED_CALLER
        return LatchInput.FROM_ACCEPTABLE  # the caller's SSRC, but the latched source is not silent

    def _acceptable(self, host: str) -> bool:
        signalled = self.signalled
        return ((signalled is not None and host == signalled[0]) or self._signalled_private
                or self.policy.trusts(host))

    def admit(self, source: tuple, ssrc: int, now: float, *, last_heard: float | None = None,
              caller_ssrc: int | None = None) -> bool:
        """An RTP packet from ``source``, which is not :attr:`source`: True if it latched (it counts).

        False: a stray, counted in :attr:`strays`, to be dropped whole (no audio, no
        digit, no statistics, no sign of life). ``last_heard`` and ``caller_ssrc``
        as for :meth:`classify` (``caller_ssrc`` defaults to the SSRC that latched).
        """
        if caller_ssrc is None:
            caller_ssrc = self.ssrc
        event = self.classify(source, ssrc, now, last_heard, caller_ssrc)
        if event is _STRANGER:
            # Every state keeps itself and drops it (TRANSITIONS): a flood of strays skips the
            # table lookup (hashing enum members costs more than the rest of this path).
            self.strays += 1
            return False
        if self._move(event) is LatchAction.DROP:
            self.strays += 1
            return False
        if self.source is not None and self.source != source:
            self.relatches += 1
        self.source = source
        self.ssrc = ssrc
        return True

    def accepts_rtcp(self, host: str) -> bool:
        """Whether RTCP from ``host`` is the caller's (it counts as a sign of life)."""
        if self.source is not None:
            accepted = host == self.source[0]
        else:  # a phone may report before its first RTP packet reaches us
            accepted = host in self._signalled_hosts or self.answered and self._acceptable(host)
        if not accepted:
            self.rtcp_strays += 1
        return accepted

    def _move(self, event: LatchInput) -> LatchAction:
        self.state, action = TRANSITIONS[(self.state, event)]
        return action
