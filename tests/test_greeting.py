"""Greeting choice and caller number tables."""

from __future__ import annotations

import datetime

import pytest

from eko_rtp.call.greeting import CallerNumbers, caller_number, caller_numbers, choose_greeting
from eko_rtp.crm.records import CallerRecord, Ticket

UTC = datetime.timezone.utc


def ticket(problem_type: str, day: int, ticket_id: str | None = None) -> Ticket:
    return Ticket(
        id=ticket_id or f"t-{problem_type}-{day}",
        problem_type=problem_type,
        status="open",
        opened_at=datetime.datetime(2025, 3, day, 12, 0, tzinfo=UTC),
    )


def record(*tickets: Ticket) -> CallerRecord:
    return CallerRecord(client_id="c1", name="Camille Martin", calls_count=2, open_tickets=tickets)


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        (None, ("greet", "welcome")),
        (record(), ("returning_client_no_ticket",)),
        (record(ticket("internet", 2)), ("returning_client_pending_internet",)),
        (record(ticket("mobile", 2)), ("returning_client_pending_mobile",)),
        # The most recently opened ticket wins, whatever the order the CRM lists them in.
        (record(ticket("internet", 1), ticket("mobile", 3)), ("returning_client_pending_mobile",)),
        (record(ticket("mobile", 3), ticket("internet", 1)), ("returning_client_pending_mobile",)),
        (record(ticket("mobile", 1), ticket("internet", 3)), ("returning_client_pending_internet",)),
        # Types without a phrase are skipped, even when newer.
        (record(ticket("billing", 9)), ("returning_client_no_ticket",)),
        (record(ticket("internet", 1), ticket("billing", 9)), ("returning_client_pending_internet",)),
        # Equal timestamps: the first listed wins.
        (record(ticket("mobile", 4), ticket("internet", 4)), ("returning_client_pending_mobile",)),
    ],
)
def test_choose_greeting(caller, expected):
    assert choose_greeting(caller) == expected


def test_choose_greeting_compares_instants_across_time_zones():
    paris = datetime.timezone(datetime.timedelta(hours=1))
    older_in_utc = Ticket(id="a", problem_type="internet", status="open",
                          opened_at=datetime.datetime(2025, 3, 1, 12, 30, tzinfo=paris))  # 11:30 UTC
    newer = Ticket(id="b", problem_type="mobile", status="open",
                   opened_at=datetime.datetime(2025, 3, 1, 12, 0, tzinfo=UTC))
    assert choose_greeting(record(older_in_utc, newer)) == ("returning_client_pending_mobile",)


@pytest.mark.parametrize(
    ("asserted", "from_user", "expected"),
    [
        ("+33612345678", "0698765432", "+33612345678"),
        ("+33612345678", "anonymous", "+33612345678"),
        (None, "0698765432", "+33698765432"),
        ("anonymous", "06 98 76 54 32", "+33698765432"),
        (None, "anonymous", None),
        (None, None, None),
        ("garbage", "also garbage", None),
    ],
)
def test_caller_number_prefers_p_asserted_identity(asserted, from_user, expected):
    assert caller_number(asserted, from_user) == expected


@pytest.mark.parametrize(
    ("asserted", "from_user", "withheld", "expected"),
    [
        ("+33612345678", "anonymous", False, CallerNumbers(lookup="+33612345678", kept="+33612345678")),
        # Privacy: id (RFC 3325 §9.3): the trunk's assertion still finds the caller in the CRM, nothing more.
        ("+33612345678", "anonymous", True, CallerNumbers(lookup="+33612345678", kept=None)),
        (None, "0698765432", True, CallerNumbers(lookup="+33698765432", kept=None)),
        (None, "anonymous", True, CallerNumbers(lookup=None, kept=None)),
    ],
)
def test_a_withheld_number_is_for_the_lookup_only(asserted, from_user, withheld, expected):
    assert caller_numbers(asserted_user=asserted, from_user=from_user, withheld=withheld) == expected
