"""TTS accounting: billed characters, cost at $0.11 per 1000, cache hit ratio, per call and total."""

from __future__ import annotations

import pytest

from eko_rtp.tts.accounting import TtsAccounting


def test_per_call_and_total_numbers():
    accounting = TtsAccounting()
    first = accounting.open_call("call-1")
    second = accounting.open_call("call-2")
    accounting.record_cache(first, hit=False)
    accounting.record_billed(first, 1000)
    accounting.record_cache(first, hit=True)
    accounting.record_cache(second, hit=False)
    accounting.record_billed(second, 250)
    accounting.record_failure(second, "TtsStreamBroken")
    accounting.record_cache(None, hit=True)  # outside any call: totals only

    one = first.snapshot()
    assert (one.characters, one.requests, one.cache_hits, one.cache_misses, one.failures) == (1000, 1, 1, 1, 0)
    assert one.cost_usd == pytest.approx(0.11)
    assert one.hit_ratio == 0.5
    two = second.snapshot()
    assert two.cost_usd == pytest.approx(0.0275)
    assert two.hit_ratio == 0.0
    total = accounting.total()
    assert (total.characters, total.requests, total.cache_hits, total.cache_misses, total.failures) == (1250, 2, 2, 2, 1)
    assert total.cost_usd == pytest.approx(0.1375)
    assert accounting.failures_by_kind == {"TtsStreamBroken": 1}


def test_summary_line():
    accounting = TtsAccounting()
    call = accounting.open_call("c")
    assert call.summary() == (
        "tts_chars=0 tts_requests=0 tts_cost_usd=0.00000 tts_cache_hits=0 tts_cache_misses=0 "
        "tts_hit_ratio=n/a tts_failures=0"
    )
    accounting.record_cache(call, hit=False)
    accounting.record_billed(call, 12)
    accounting.record_cache(call, hit=True)
    accounting.record_cache(call, hit=True)
    assert call.summary() == (
        "tts_chars=12 tts_requests=1 tts_cost_usd=0.00132 tts_cache_hits=2 tts_cache_misses=1 "
        "tts_hit_ratio=0.67 tts_failures=0"
    )


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match="cost_per_1000_characters must be >= 0, got -1"):
        TtsAccounting(-1)
    with pytest.raises(ValueError, match="characters must be >= 0, got -5"):
        TtsAccounting().record_billed(None, -5)
