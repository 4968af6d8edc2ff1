"""What live TTS did and cost: characters spoken, dollars, cache hits.

Every backend's characters are counted (espeak-ng's too: the metric and the call's
log line say how much text was rendered live, whoever rendered it); only a paid
backend's characters cost money. Characters count once the backend has accepted
the request (for ElevenLabs, it answered 200): a request refused (401, 429, 5xx) or
never answered is not counted, and a stream cancelled midway is counted in full
(the provider has already generated it).
Each call gets a :class:`CallTtsUsage` from :meth:`TtsAccounting.open_call`; what it
records goes into the call's numbers and into the process totals at once. No I/O.
"""

from __future__ import annotations

import collections

import attrs

from eko_rtp.tts.settings import COST_PER_1000_CHARACTERS


@attrs.frozen(kw_only=True)
class UsageSnapshot:
    """Numbers at one instant, for a log line or the metrics endpoint."""

    characters: int
    requests: int
    cost_usd: float
    cache_hits: int
    cache_misses: int
    failures: int

    @property
    def hit_ratio(self) -> float | None:
        """Dynamic-cache hits over lookups; None before the first lookup."""
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else None

    def summary(self) -> str:
        """One line: ``tts_chars=12 tts_requests=1 tts_cost_usd=0.00132 ...``."""
        ratio = "n/a" if self.hit_ratio is None else f"{self.hit_ratio:.2f}"
        return (
            f"tts_chars={self.characters} tts_requests={self.requests} tts_cost_usd={self.cost_usd:.5f} "
            f"tts_cache_hits={self.cache_hits} tts_cache_misses={self.cache_misses} "
            f"tts_hit_ratio={ratio} tts_failures={self.failures}"
        )


@attrs.define
class _Counters:
    characters: int = 0
    billed_characters: int = 0  # the part of ``characters`` a paid backend rendered
    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    failures: int = 0


class TtsAccounting:
    """Process-wide totals, and the factory of per-call usage."""

    def __init__(self, cost_per_1000_characters: float = COST_PER_1000_CHARACTERS):
        if cost_per_1000_characters < 0:
            raise ValueError(f"cost_per_1000_characters must be >= 0, got {cost_per_1000_characters}")
        self.cost_per_1000_characters = cost_per_1000_characters
        self._total = _Counters()
        self.failures_by_kind: collections.Counter[str] = collections.Counter()

    def open_call(self, call_id: str) -> "CallTtsUsage":
        """Usage for one call; its records also add to the totals."""
        return CallTtsUsage(self, call_id)

    def total(self) -> UsageSnapshot:
        return self._snapshot(self._total)

    def _snapshot(self, counters: _Counters) -> UsageSnapshot:
        return UsageSnapshot(
            characters=counters.characters,
            requests=counters.requests,
            cost_usd=counters.billed_characters * self.cost_per_1000_characters / 1000,
            cache_hits=counters.cache_hits,
            cache_misses=counters.cache_misses,
            failures=counters.failures,
        )

    def _add(self, counters: _Counters | None, field: str, amount: int = 1) -> None:
        for target in (self._total, counters):
            if target is not None:
                setattr(target, field, getattr(target, field) + amount)

    # The engine records through these; ``call`` may be None (speech outside a call).

    def record_spoken(self, call: "CallTtsUsage | None", characters: int, *, paid: bool) -> None:
        """A backend accepted a request for ``characters`` characters; ``paid`` ones cost money."""
        if characters < 0:
            raise ValueError(f"characters must be >= 0, got {characters}")
        self._add(call and call._counters, "characters", characters)
        if paid:
            self._add(call and call._counters, "billed_characters", characters)
        self._add(call and call._counters, "requests")

    def record_billed(self, call: "CallTtsUsage | None", characters: int) -> None:
        """A paid request was accepted for ``characters`` characters."""
        self.record_spoken(call, characters, paid=True)

    def record_cache(self, call: "CallTtsUsage | None", *, hit: bool) -> None:
        self._add(call and call._counters, "cache_hits" if hit else "cache_misses")

    def record_failure(self, call: "CallTtsUsage | None", kind: str) -> None:
        self._add(call and call._counters, "failures")
        self.failures_by_kind[kind] += 1


class CallTtsUsage:
    """One call's TTS numbers; :meth:`summary` is for the call-end log line."""

    def __init__(self, accounting: TtsAccounting, call_id: str):
        self.accounting = accounting
        self.call_id = call_id
        self._counters = _Counters()

    def snapshot(self) -> UsageSnapshot:
        return self.accounting._snapshot(self._counters)

    def summary(self) -> str:
        return self.snapshot().summary()
