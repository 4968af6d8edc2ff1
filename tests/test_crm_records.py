"""Untrusted CRM replies: what parses, and the exact error for what does not."""

from __future__ import annotations

import datetime

import attrs
import pytest

from eko_rtp.crm.errors import CrmReplyError
from eko_rtp.crm.records import (
    CallbackRequest,
    CallerRecord,
    CallLog,
    Ticket,
    TicketRequest,
    parse_call_log_untrusted,
    parse_callback_request_untrusted,
    parse_caller_untrusted,
    parse_created_id_untrusted,
    parse_ticket_request_untrusted,
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
                             "loss_ratio": None, "jitter_ms": None, "rtt_ms": None, "script_outcome": None}
    assert parse_call_log_untrusted(log.to_wire()) == log
    measured = attrs.evolve(log, loss_ratio=0.0125, jitter_ms=0.4, rtt_ms=1.5)
    assert parse_call_log_untrusted(measured.to_wire()) == measured
    # A client from before the quality figures and the script outcome sends none: they are None.
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
    # A container from the network is described, not repr'd into the message (and the log).
    with pytest.raises(CrmReplyError, match=r"^bad crm.log_call notification: duration_ms must be a non-negative int, "
                                            r"got an array of 10000$"):
        parse_call_log_untrusted({**log.to_wire(), "duration_ms": [[0] * 50] * 10_000})
    with pytest.raises(CrmReplyError, match=r"loss_ratio must be nil or a number from 0 to 1e6, got a map of 1$"):
        parse_call_log_untrusted({**log.to_wire(), "loss_ratio": {"x": [[[]]]}})


CALL_LOG = CallLog(call_id="a@b", phone=None, greeting=("greet",), duration_ms=1, outcome="remote_bye")


@pytest.mark.parametrize("script_outcome", ["transferred", "callback_offered", "no_input", "a", "x" * 32, "my_own_word"])
def test_script_outcome_any_well_formed_word_round_trips(script_outcome):
    log = attrs.evolve(CALL_LOG, script_outcome=script_outcome)
    assert log.to_wire()["script_outcome"] == script_outcome
    assert log.to_wire()["outcome"] == "remote_bye"  # the SIP side's, beside it
    assert parse_call_log_untrusted(log.to_wire()) == log


@pytest.mark.parametrize(
    ("script_outcome", "message"),
    [
        ("Transferred", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got 'Transferred'"),
        ("x" * 33, f"script_outcome must be a lowercase word of a-z and _ (32 characters at most), got {'x' * 33!r}"),
        ("", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got ''"),
        ("_x", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got '_x'"),
        ("no input", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got 'no input'"),
        ("no-input", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got 'no-input'"),
        ("hang_up\n", "script_outcome must be a lowercase word of a-z and _ (32 characters at most), got 'hang_up\\n'"),
        (7, "script_outcome must be a string, got int"),
    ],
)
def test_bad_script_outcome_is_refused(script_outcome, message):
    with pytest.raises(CrmReplyError) as caught:
        parse_call_log_untrusted({**CALL_LOG.to_wire(), "script_outcome": script_outcome})
    assert str(caught.value) == f"bad crm.log_call notification: {message}"
    with pytest.raises(ValueError, match="^script_outcome must be"):
        attrs.evolve(CALL_LOG, script_outcome=script_outcome)


CREATED = datetime.datetime(2026, 3, 6, 14, 5, tzinfo=UTC)
TICKET_REQUEST = TicketRequest(call_id="c1@x", phone="+33612345678", reason="Plus d'internet depuis hier",
                               category="internet", created_at=CREATED)
CALLBACK_REQUEST = CallbackRequest(call_id="c1@x", phone="+33612345678", reason="", not_before=None,
                                   queue="technicians")
TICKET_WIRE = {"call_id": "c1@x", "phone": "+33612345678", "reason": "Plus d'internet depuis hier",
               "category": "internet", "created_at": "2026-03-06T14:05:00+00:00"}
CALLBACK_WIRE = {"call_id": "c1@x", "phone": "+33612345678", "reason": "", "not_before": None, "queue": "technicians"}


def test_ticket_and_callback_requests_wire_round_trip():
    assert TICKET_REQUEST.to_wire() == TICKET_WIRE
    assert parse_ticket_request_untrusted(TICKET_WIRE) == TICKET_REQUEST
    anonymous = attrs.evolve(TICKET_REQUEST, phone=None)
    assert parse_ticket_request_untrusted(anonymous.to_wire()) == anonymous
    assert CALLBACK_REQUEST.to_wire() == CALLBACK_WIRE
    assert parse_callback_request_untrusted(CALLBACK_WIRE) == CALLBACK_REQUEST
    # Any offset goes out as UTC; a naive timestamp comes in as UTC; extra keys are ignored.
    paris = datetime.timezone(datetime.timedelta(hours=1))
    later = attrs.evolve(CALLBACK_REQUEST, not_before=datetime.datetime(2026, 3, 7, 8, 0, tzinfo=paris))
    assert later.to_wire()["not_before"] == "2026-03-07T07:00:00+00:00"
    assert parse_callback_request_untrusted({**later.to_wire(), "not_before": "2026-03-07T07:00:00", "x": 1}) == later
    assert TICKET_REQUEST.to_wire()["reason"] == "Plus d'internet depuis hier"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([TICKET_WIRE], "ticket must be a map, got list"),
        ({k: v for k, v in TICKET_WIRE.items() if k != "phone"}, "ticket lacks required key 'phone'"),
        ({k: v for k, v in TICKET_WIRE.items() if k != "created_at"}, "ticket lacks required key 'created_at'"),
        ({**TICKET_WIRE, "call_id": ""}, "call_id must not be empty"),
        ({**TICKET_WIRE, "call_id": 5}, "call_id must be a string, got int"),
        ({**TICKET_WIRE, "call_id": "c" * 257}, "call_id is longer than 256 characters"),
        ({**TICKET_WIRE, "phone": "0612345678"}, "phone must be an E.164 number (+ and 8 to 15 digits), got '0612345678'"),
        ({**TICKET_WIRE, "phone": "+3361234567890123"},
         "phone must be an E.164 number (+ and 8 to 15 digits), got '+3361234567890123'"),
        ({**TICKET_WIRE, "phone": 33612345678}, "phone must be a string, got int"),
        ({**TICKET_WIRE, "reason": "x" * 2001}, "reason is longer than 2000 characters"),
        ({**TICKET_WIRE, "reason": None}, "reason must be a string, got NoneType"),
        ({**TICKET_WIRE, "category": "Internet"},
         "category must be a lowercase word of a-z and _ (32 characters at most), got 'Internet'"),
        ({**TICKET_WIRE, "created_at": "hier"}, "created_at is not an ISO-8601 timestamp: 'hier'"),
        ({**TICKET_WIRE, "created_at": 1772805900}, "created_at must be a string, got int"),
    ],
)
def test_bad_ticket_params_name_the_field(params, message):
    with pytest.raises(CrmReplyError) as caught:
        parse_ticket_request_untrusted(params)
    assert str(caught.value) == f"bad crm.create_ticket params: {message}"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (None, "callback must be a map, got NoneType"),
        ({k: v for k, v in CALLBACK_WIRE.items() if k != "not_before"}, "callback lacks required key 'not_before'"),
        ({**CALLBACK_WIRE, "phone": None}, "phone must be a string, got NoneType"),
        ({**CALLBACK_WIRE, "reason": "x" * 2001}, "reason is longer than 2000 characters"),
        ({**CALLBACK_WIRE, "not_before": "demain"}, "not_before is not an ISO-8601 timestamp: 'demain'"),
        ({**CALLBACK_WIRE, "queue": ""}, "queue must be a lowercase word of a-z and _ (32 characters at most), got ''"),
        ({**CALLBACK_WIRE, "queue": ["technicians"]}, "queue must be a string, got list"),
    ],
)
def test_bad_callback_params_name_the_field(params, message):
    with pytest.raises(CrmReplyError) as caught:
        parse_callback_request_untrusted(params)
    assert str(caught.value) == f"bad crm.request_callback params: {message}"


def test_request_values_validate_in_the_constructor():
    with pytest.raises(ValueError, match=r"^created_at must be an aware datetime, got datetime.datetime\(2026, 3, 6, 14, 5\)$"):
        attrs.evolve(TICKET_REQUEST, created_at=datetime.datetime(2026, 3, 6, 14, 5))
    with pytest.raises(ValueError, match=r"^phone must be a string, got NoneType$"):
        attrs.evolve(CALLBACK_REQUEST, phone=None)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (None, "result must be a map, got NoneType"),
        ("eko-t000001", "result must be a map, got str"),
        ({"id": "eko-t000001"}, "result lacks required key 'ticket_id'"),
        ({"ticket_id": 1}, "ticket_id must be a string, got int"),
        ({"ticket_id": ""}, "ticket_id must not be empty"),
        ({"ticket_id": "t" * 257}, "ticket_id is longer than 256 characters"),
    ],
)
def test_bad_created_id_replies(reply, message):
    with pytest.raises(CrmReplyError) as caught:
        parse_created_id_untrusted(reply, "crm.create_ticket", "ticket_id")
    assert str(caught.value) == f"bad crm.create_ticket reply: {message}"
    assert parse_created_id_untrusted({"ticket_id": "T-1", "url": "https://crm/T-1"}, "crm.create_ticket", "ticket_id") == "T-1"
