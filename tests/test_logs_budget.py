"""LogBudget (issue 17): lines written once per datagram are a burst, then a few a second,
and the rest are counted and handed over once a second for one summary line."""

from __future__ import annotations

import pytest

from eko_rtp.service.logs import LogBudget


def test_a_burst_then_the_refill_rate_and_the_rest_counted():
    budget = LogBudget(burst=3, per_second=2.0)
    assert [budget.allow(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert budget.summary_due == 1.0  # a second after the first line held back
    assert budget.held_back(0.99) == 0
    assert budget.allow(0.5) is True  # half a second refills one token
    assert budget.allow(0.5) is False
    assert (budget.held_back(1.0), budget.summary_due, budget.held_total) == (3, None, 3)
    assert budget.held_back(5.0) == 0  # nothing held back since: no summary


def test_the_bucket_never_holds_more_than_the_burst():
    budget = LogBudget(burst=2, per_second=10.0)
    assert budget.allow(0.0) is True
    # An hour of quiet refills the burst, not 36,000 lines.
    assert [budget.allow(3600.0) for _ in range(3)] == [True, True, False]


def test_a_flood_costs_the_burst_then_the_rate_plus_one_summary_a_second():
    budget = LogBudget(burst=100, per_second=10.0)
    written = summaries = 0
    for index in range(10_000):  # 10,000 datagrams over 10 s
        now = index / 1000
        if budget.held_back(now):
            summaries += 1
        written += budget.allow(now)
    summaries += bool(budget.held_back(11.0))
    assert written == 100 + 100 - 1  # the burst, then 10 a second (the last token not quite refilled)
    assert summaries == 10 and budget.held_total == 10_000 - written


@pytest.mark.parametrize("burst, per_second", [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_the_budget_validates_its_settings(burst, per_second):
    with pytest.raises(ValueError, match="burst must be >= 1 and per_second > 0"):
        LogBudget(burst=burst, per_second=per_second)
