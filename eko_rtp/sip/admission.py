"""Admission: who may start something with us, and how much (config ``[sip]``, docs/OPERATIONS.md).

Theory of operation: the UA core (``useragent.py``) asks this module about every
request that would *start* something: an initial INVITE, an OPTIONS, any request
outside a dialog, a CANCEL that matches no INVITE of ours, and an unparseable message.
Requests of calls we already have (in-dialog requests, ACKs, the CANCEL of an INVITE
we took) never come here: a call admitted once is served to its end, whichever
address its phone later sends from.

- **Trust** is the transport source address, never anything the message says about
  itself (a Via, a From or a P-Asserted-Identity are written by the sender). A source
  inside ``trusted_networks`` is the trunk, the Kamailio front, or this host; RFC 3325
  §4 calls that set of nodes the Trust Domain, and only a request from it may carry a
  P-Asserted-Identity we believe (§5, §8; ``useragent.py`` drops it otherwise).
- **Elsewhere** gets ``untrusted_action``: ``refuse`` answers 403 (RFC 3261 §21.4.4)
  statelessly (§8.2.7: never retransmitted, so we never amplify a spoofed source
  beyond one response per request), and only while the source is within its rate:
  beyond it, silence. ``drop`` is silence from the first request (nothing is kept
  about the source either). ``accept`` serves it like a trusted source, except
  that its P-Asserted-Identity is ignored: for a lab or a public test number.
- **Rate**: every source has a token bucket (``invite_burst`` tokens, refilled at
  ``invite_rate_per_source`` a second). An initial INVITE from a served source takes
  a token, a refusal of an untrusted one too; none left: a served source's INVITE
  gets 503 with Retry-After (§21.5.4: the trunk tries again later or elsewhere), an
  untrusted one silence. The table of buckets is bounded (``max_sources``): the
  least recently seen source goes first, and a source whose bucket has filled up
  again (idle) is forgotten, since a fresh entry would be the same.
- **Calls**: at most ``max_calls`` at once (:meth:`Admission.room_for_call`); the UA
  answers the next INVITE 503 with Retry-After before the RTP ports run out.

A flood is logged as a trickle: :class:`RefusalReports` lets the first refusal of
each reason through at once, then one line per reason every ``REPORT_INTERVAL``
saying how many were not reported. Everything is counted (``eko_sip_refused_total``).
Nothing here does I/O or reads a clock: ``now`` is monotonic seconds from the caller.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable

import attrs

__all__ = [
    "Admission",
    "AdmissionSettings",
    "Network",
    "Refusal",
    "RefusalReports",
    "UntrustedAction",
    "Verdict",
    "parse_networks",
    "REPORT_INTERVAL",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REPORT_INTERVAL = 10.0  # s between two log lines about refusals of one reason
DEFAULT_MAX_SOURCES = 4096  # sources whose rate is remembered at once
TRUST_VERDICTS_KEPT = 1024  # hosts whose trust is remembered at once (Admission.trusted)


class UntrustedAction(enum.Enum):
    """What a request from outside ``trusted_networks`` gets."""

    REFUSE = "refuse"  # 403 while within its rate, then silence
    DROP = "drop"  # silence
    ACCEPT = "accept"  # served; its P-Asserted-Identity ignored


class Verdict(enum.Enum):
    """What the UA does with a request that would start something."""

    ADMIT = "admit"
    FORBID = "forbid"  # 403, stateless
    BUSY = "busy"  # 503 with Retry-After
    DROP = "drop"  # no answer at all


class Refusal(enum.Enum):
    """Why a request was refused (the ``reason`` label of ``eko_sip_refused_total``)."""

    UNTRUSTED = "untrusted"  # its source is outside sip.trusted_networks
    RATE = "rate"  # its source is over sip.invite_rate_per_source
    MAX_CALLS = "max_calls"  # sip.max_calls calls are up
    UNHEALTHY = "unhealthy"  # no call could succeed now (the server's health)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings as networks; ValueError naming the bad one (host bits set, not an address)."""
    networks = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"expected CIDR strings like '192.0.2.0/24', got {value!r}")
        try:
            networks.append(ipaddress.ip_network(value.strip()))
            continue
        except ValueError:
            pass
        try:
            # An address with a prefix is most likely a typo for its network: say which.
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network like 192.0.2.0/24 or 2001:db8::/32") from None
        raise ValueError(f"{value!r} has host bits set: write {str(loose)!r} (or the address alone)")
    return tuple(networks)


def _networks(value) -> tuple[Network, ...]:
    if isinstance(value, tuple) and all(isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                                        for item in value):
        return value
    return parse_networks(value)


@attrs.frozen(kw_only=True)
class AdmissionSettings:
    """The ``[sip]`` admission keys, validated."""

    trusted_networks: tuple[Network, ...] = attrs.field(converter=_networks)
    untrusted_action: UntrustedAction = attrs.field(default=UntrustedAction.REFUSE, converter=UntrustedAction)
    max_calls: int = attrs.field(default=2000, validator=attrs.validators.ge(1))
    invite_rate_per_source: float = attrs.field(default=100.0, converter=float, validator=attrs.validators.gt(0))
    invite_burst: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    max_sources: int = attrs.field(default=DEFAULT_MAX_SOURCES, validator=attrs.validators.ge(1))


@attrs.define(kw_only=True)
class _Bucket:
    tokens: float
    updated_at: float


class Admission:
    """Trust, per-source INVITE rate and the calls cap, on explicit time; see the module docstring."""

    def __init__(self, settings: AdmissionSettings):
        self.settings = settings
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently seen first
        # host -> trusted, for these settings: each INVITE asks twice (its source and its
        # asserted identity), and ipaddress parses in Python. Bounded, as a spoofed flood
        # comes from many hosts.
        self._trust: dict[str, bool] = {}

    def reconfigure(self, settings: AdmissionSettings) -> None:
        """New settings (a reload); the sources' buckets stay, none above the new burst."""
        self.settings = settings
        self._trust = {}
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, settings.invite_burst)

    @property
    def sources(self) -> int:
        """How many sources' buckets are remembered (at most ``max_sources``)."""
        return len(self._buckets)

    def trusted(self, host: str) -> bool:
        """Whether ``host`` (the transport source's address) is in ``trusted_networks``."""
        trust = self._trust
        verdict = trust.get(host)
        if verdict is None:
            if len(trust) >= TRUST_VERDICTS_KEPT:
                trust.clear()
            verdict = trust[host] = self._judge_trust(host)
        return verdict

    def _judge_trust(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False  # not an address: nothing we could have listed
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        elif isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            address = ipaddress.IPv6Address(str(address).partition("%")[0])
        return any(address in network for network in self.settings.trusted_networks)

    def judge(self, host: str, *, initial_invite: bool, now: float) -> tuple[Verdict, Refusal | None]:
        """What a request that would start something gets, and why not when it is refused.

        ``initial_invite``: an INVITE outside a dialog (the only request the rate
        counts from a served source). An unparseable message is judged as not one.
        """
        settings = self.settings
        trusted = self.trusted(host)
        if not trusted and settings.untrusted_action is UntrustedAction.DROP:
            return Verdict.DROP, Refusal.UNTRUSTED
        if trusted or settings.untrusted_action is UntrustedAction.ACCEPT:
            if not initial_invite or self._take(host, now):
                return Verdict.ADMIT, None
            return Verdict.BUSY, Refusal.RATE
        # Refused: one answer per token, so a spoofed flood cannot aim our 403s at anyone.
        return (Verdict.FORBID, Refusal.UNTRUSTED) if self._take(host, now) else (Verdict.DROP, Refusal.UNTRUSTED)

    def room_for_call(self, active_calls: int) -> bool:
        """Whether one more call fits under ``max_calls``."""
        return active_calls < self.settings.max_calls

    def _take(self, host: str, now: float) -> bool:
        """Take one token from ``host``'s bucket; False when it is empty."""
        settings = self.settings
        buckets = self._buckets
        bucket = buckets.get(host)
        if bucket is None:
            self._forget_idle(now)
            if len(buckets) >= settings.max_sources:
                buckets.popitem(last=False)  # the least recently seen source
            bucket = buckets[host] = _Bucket(tokens=float(settings.invite_burst), updated_at=now)
        else:
            buckets.move_to_end(host)
            elapsed = max(0.0, now - bucket.updated_at)  # a clock that went back refills nothing
            bucket.tokens = min(float(settings.invite_burst), bucket.tokens + elapsed * settings.invite_rate_per_source)
            bucket.updated_at = max(bucket.updated_at, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _forget_idle(self, now: float) -> None:
        """Drop the least recently seen sources whose bucket is full again (at most two a call)."""
        settings = self.settings
        for _ in range(2):
            if not self._buckets:
                return
            host, bucket = next(iter(self._buckets.items()))
            refilled = bucket.tokens + max(0.0, now - bucket.updated_at) * settings.invite_rate_per_source
            if refilled < settings.invite_burst:
                return
            del self._buckets[host]


@attrs.frozen(kw_only=True)
class Report:
    """A refusal worth a log line, and how many of its reason went unreported before it."""

    unreported: int


class RefusalReports:
    """One log line per reason now and then, however many refusals (see the module docstring)."""

    def __init__(self, interval: float = REPORT_INTERVAL):
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = interval
        self._last: dict[Refusal, float] = {}
        self._unreported: dict[Refusal, int] = {}

    def note(self, reason: Refusal, now: float) -> Report | None:
        """Count one refusal; a :class:`Report` when it should be logged, else None."""
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._unreported[reason] = self._unreported.get(reason, 0) + 1
            return None
        self._last[reason] = now
        return Report(unreported=self._unreported.pop(reason, 0))
