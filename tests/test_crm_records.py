"""Untrusted CRM replies: what parses, and the exact error for what does not."""

from __future__ import annotations

import datetime

import attrs
import pytest

from eko_rtp.crm.errors import CrmReplyError
from eko_rtp.crm.records import (
    CallerRecord,
    CallLog,
    Ticket,
    parse_call_log_untrusted,
    parse_caller_untrusted,
)

UTC = datetime.timezone.utc
TICKET = {"id": "t1", "problem_type": "internet", "status": "open", "opened_at": "2025-03-02T09:15:00+00:00"}


def test_full_record_with_extra_keys_ignored():
    reply = {"client_id": "c1", "name": "Camille", "calls_count": 3, "open_tickets": [dict(TICKET, sla="4h")], "vip": True}
    assert parse_caller_untrusted(reply) == CallerRecord(
        client_id="c1",
        name="Camille",
        calls_count=3,
        open_tickets=(Ticket(id="t1", problem_type="internet", status="open",
                             opened_at=datetime.datetime(2025, 3, 2, 9, 15, tzinfo=UTC)),),
    )


def test_minimal_record_and_nil():
    assert parse_caller_untrusted(None) is None
    assert parse_caller_untrusted({"client_id": "c1"}) == CallerRecord(client_id="c1")
    naive = parse_caller_untrusted({"client_id": "c1", "open_tickets": [
        {"id": "t", "problem_type": "mobile", "opened_at": "2025-03-02T09:15:00"}]})
    assert naive.open_tickets[0].opened_at == datetime.datetime(2025, 3, 2, 9, 15, tzinfo=UTC)
    assert naive.open_tickets[0].status == "open"


def test_to_wire_round_trip():
    reply = {"client_id": "c1", "name": "Camille", "calls_count": 3, "open_tickets": [TICKET]}
    assert parse_caller_untrusted(reply).to_wire() == reply


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("c1", "result must be nil or a map, got str"),
        ([], "result must be nil or a map, got list"),
        ({"name": "x"}, "result lacks required key 'client_id'"),
        ({"client_id": 5}, "client_id must be a string, got int"),
        ({"client_id": ""}, "client_id must not be empty"),
        ({"client_id": "c" * 300}, "client_id is longer than 256 characters"),
        ({"client_id": "c1", "name": b"x"}, "name must be a string, got bytes"),
        ({"client_id": "c1", "calls_count": "3"}, "calls_count must be an int, got str"),
        ({"client_id": "c1", "calls_count": True}, "calls_count must be an int, got bool"),
        ({"client_id": "c1", "calls_count": -1}, "calls_count must be a non-negative int, got -1"),
        ({"client_id": "c1", "open_tickets": {}}, "open_tickets must be an array, got dict"),
        ({"client_id": "c1", "open_tickets": [TICKET] * 101}, "open_tickets has 101 entries (at most 100)"),
        ({"client_id": "c1", "open_tickets": ["t1"]}, "open_tickets[0] must be a map, got str"),
        ({"client_id": "c1", "open_tickets": [{"id": "t1", "problem_type": "x"}]},
         "open_tickets[0] lacks required key 'opened_at'"),
        ({"client_id": "c1", "open_tickets": [dict(TICKET, opened_at="yesterday")]},
         "open_tickets[0].opened_at is not an ISO-8601 timestamp: 'yesterday'"),
        ({"client_id": "c1", "open_tickets": [dict(TICKET, opened_at=1741000000)]},
         "open_tickets[0].opened_at must be a string, got int"),
        ({"client_id": "c1", "open_tickets": [TICKET, dict(TICKET, id=None)]},
         "open_tickets[1].id must be a string, got NoneType"),
    ],
)
def test_bad_replies_raise_crm_reply_error_only(reply, message):
    with pytest.raises(CrmReplyError) as caught:
        parse_caller_untrusted(reply)
    assert str(caught.value) == f"bad crm.lookup_caller reply: {message}"


def test_call_log_wire_round_trip_and_errors():
    log = CallLog(call_id="a@b", phone="+33612345678", greeting=("greet", "welcome"), duration_ms=4200, outcome="completed")
    assert log.to_wire() == {"call_id": "a@b", "phone": "+33612345678", "greeting": "greet+welcome",
                             "duration_ms": 4200, "outcome": "completed",
                             "loss_ratio": None, "jitter_ms": None, "rtt_ms": None}
    assert parse_call_log_untrusted(log.to_wire()) == log
    measured = attrs.evolve(log, loss_ratio=0.0125, jitter_ms=0.4, rtt_ms=1.5)
    assert parse_call_log_untrusted(measured.to_wire()) == measured
    # A client from before the quality figures sends none: they are None.
    assert parse_call_log_untrusted({"call_id": "a@b", "phone": "+33612345678", "greeting": "greet+welcome",
                                     "duration_ms": 4200, "outcome": "completed"}) == log
    with pytest.raises(CrmReplyError, match=r"^bad crm.log_call notification: rtt_ms must be nil or a number "
                                            r"from 0 to 1e6, got -1$"):
        parse_call_log_untrusted({**log.to_wire(), "rtt_ms": -1})
    with pytest.raises(CrmReplyError, match=r"jitter_ms must be nil or a number from 0 to 1e6, got nan$"):
        parse_call_log_untrusted({**log.to_wire(), "jitter_ms": float("nan")})
    with pytest.raises(CrmReplyError, match=r"^bad crm.log_call notification: call log lacks required key 'outcome'$"):
        parse_call_log_untrusted({"call_id": "a", "phone": None, "greeting": "greet", "duration_ms": 1})
    with pytest.raises(CrmReplyError, match=r"^bad crm.log_call notification: duration_ms must be a non-negative int, got '1'$"):
        parse_call_log_untrusted({"call_id": "a", "phone": None, "greeting": "greet", "duration_ms": "1", "outcome": "x"})
