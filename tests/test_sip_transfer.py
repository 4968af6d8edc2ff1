"""Our blind transfer in the UAS core: REFER out, NOTIFY in (RFC 3515), with explicit time."""

from __future__ import annotations

import pytest

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.events import CallEnded, EndReason, MessageRejected, TransferUpdate
from eko_rtp.sip.message import Request, Response
from eko_rtp.sip.refer import (
    TRANSFER_TRANSITIONS,
    Transfer,
    TransferError,
    TransferInput,
    TransferState,
    parse_sipfrag_status_untrusted,
)
from test_sip_useragent import PEER, confirmed_call, message, others, sent, statuses

TECHNICIAN = "sip:technicien@192.0.2.50:5080"


def response_to(request: Request, status: int, reason: str = "", extra: str = "", to_tag: str = "caller1") -> bytes:
    """The caller's phone answering a request of ours, copying what §8.2.6 says to copy."""
    lines = [f"SIP/2.0 {status} {reason or 'X'}"]
    lines += [f"Via: {value}" for value in request.headers.get_all("Via")]
    lines += [f"From: {request.headers.get('From')}", f"To: {request.headers.get('To')}",
              f"Call-ID: {request.headers.get('Call-ID')}", f"CSeq: {request.headers.get('CSeq')}"]
    if extra:
        lines += extra.strip("\n").split("\n")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def notify(h, sipfrag: bytes, *, cseq: int, state: str = "active;expires=60", event: str | None = None,
           content_type: str = "message/sipfrag;version=2.0") -> bytes:
    event = event or f"refer;id={h.refer_cseq}"
    return message("NOTIFY", branch=f"z9hG4bK-n{cseq}", cseq=cseq, to_tag=h.tag, body=sipfrag,
                   content_type=content_type, extra=f"Event: {event}\nSubscription-State: {state}")


def referred(**kwargs):
    """A confirmed call and our REFER to the technician, sent at t=1."""
    h = confirmed_call(**kwargs)
    assert h.ua.transfer("call-1", TECHNICIAN, 1.0)
    events = h.ua.events()
    (refer,) = sent(events)
    h.refer = refer
    h.refer_cseq = refer.cseq.number
    h.refer_events = events
    return h


def updates(events) -> list[tuple[str, int | None]]:
    return [(e.state, e.status) for e in events if isinstance(e, TransferUpdate)]


def test_refer_is_sent_in_the_dialog_with_refer_to_referred_by_and_contact():
    h = referred()
    refer = h.refer
    assert refer.method == "REFER" and refer.uri == "sip:alice@192.0.2.20:5070"
    assert refer.headers.get("Refer-To") == f"<{TECHNICIAN}>"
    assert refer.headers.get("Referred-By") == "<sip:eko@192.0.2.10:5060>"
    assert refer.headers.get("Contact") == "<sip:eko@192.0.2.10:5060>"
    assert refer.headers.get("To") == '"Alice" <sip:alice@example.org>;tag=caller1'
    assert refer.cseq.number == 1 and refer.cseq.method == "REFER"
    assert h.refer_events[-1].destination == PEER
    # One transfer at a time.
    assert not h.ua.transfer("call-1", TECHNICIAN, 1.1)


def test_refer_follows_the_record_route_set():
    rr = "Record-Route: <sip:127.0.0.1:5090;lr;ftag=abc>"
    h = referred(extra=rr)
    assert h.refer.headers.get_all("Route") == ["<sip:127.0.0.1:5090;lr;ftag=abc>"]
    assert h.refer.uri == "sip:alice@192.0.2.20:5070"  # loose routing: the target stays the Request-URI
    assert h.refer_events[-1].destination == ("127.0.0.1", 5090)


def test_accepted_then_trying_then_success():
    h = referred()
    assert updates(h.send(response_to(h.refer, 202, "Accepted"), 1.05)) == [("accepted", 202)]
    events = h.send(notify(h, b"SIP/2.0 100 Trying\r\n", cseq=2), 1.1)
    assert statuses(events) == [200] and updates(events) == [("trying", 100)]
    events = h.send(notify(h, b"SIP/2.0 200 OK\r\nContent-Type: application/sdp\r\n", cseq=3,
                           state="terminated;reason=noresource"), 4.0)
    assert statuses(events) == [200]
    (update,) = [e for e in events if isinstance(e, TransferUpdate)]
    assert update == TransferUpdate(call_id="call-1", state="succeeded", status=200,
                                    reason="technician side: 200 OK")
    # The deadlines are disarmed: nothing happens later, and the call is still ours to BYE.
    assert [e for _, e in h.run_until(200.0) if isinstance(e, TransferUpdate)] == []


def test_notify_may_overtake_the_202():
    h = referred()
    events = h.send(notify(h, b"SIP/2.0 100 Trying\r\n", cseq=2), 1.01)
    assert updates(events) == [("trying", 100)]
    assert updates(h.send(response_to(h.refer, 202, "Accepted"), 1.02)) == []  # already implied


@pytest.mark.parametrize("status", [403, 405, 501, 603])
def test_refer_refused(status):
    h = referred()
    events = h.send(response_to(h.refer, status, "No"), 1.1)
    assert updates(events) == [("failed", status)]
    assert [e.reason for e in events if isinstance(e, TransferUpdate)] == [f"REFER refused: {status} No"]
    assert [e for _, e in h.run_until(100.0) if isinstance(e, TransferUpdate)] == []  # no deadline left
    assert h.ua.transfer("call-1", TECHNICIAN, 100.0)  # the script may try again


def test_failure_sipfrag():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    h.send(notify(h, b"SIP/2.0 100 Trying\r\n", cseq=2), 1.1)
    events = h.send(notify(h, b"SIP/2.0 486 Busy Here\r\n", cseq=3, state="terminated;reason=noresource"), 3.0)
    assert statuses(events) == [200] and updates(events) == [("failed", 486)]


def test_no_notify_in_time_is_a_failure_and_a_late_success_still_wins():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    timeline = h.run_until(10.0)
    assert [(t, e.state, e.status) for t, e in timeline if isinstance(e, TransferUpdate)] == [(6.0, "failed", 202)]
    # The technician picked up after all: our leg must end, so the script hears of it.
    events = h.send(notify(h, b"SIP/2.0 200 OK\r\n", cseq=2, state="terminated"), 12.0)
    assert updates(events) == [("succeeded", 200)]


def test_no_final_status_in_time():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    h.send(notify(h, b"SIP/2.0 180 Ringing\r\n", cseq=2), 1.2)
    timeline = h.run_until(100.0)
    assert [(t, e.state) for t, e in timeline if isinstance(e, TransferUpdate)] == [(61.0, "failed")]


def test_subscription_terminated_without_final_status():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    events = h.send(notify(h, b"SIP/2.0 100 Trying\r\n", cseq=2, state="terminated;reason=timeout"), 1.2)
    assert updates(events) == [("trying", 100), ("failed", 100)]


def test_refer_that_times_out_is_a_failure():
    h = referred()
    timeline = h.run_until(40.0)
    assert [(t, e.state, e.status) for t, e in timeline if isinstance(e, TransferUpdate)] == [
        (6.0, "failed", None)]  # the first NOTIFY deadline comes before timer F (64·T1 = 32 s)


@pytest.mark.parametrize("build, status", [
    (lambda h: notify(h, b"SIP/2.0 200 OK\r\n", cseq=2, event="presence"), 489),
    (lambda h: message("NOTIFY", branch="z9hG4bK-n2", cseq=2, to_tag=h.tag, body=b"SIP/2.0 200 OK\r\n",
                       content_type="message/sipfrag"), 489),  # no Event
    (lambda h: notify(h, b"SIP/2.0 200 OK\r\n", cseq=2, event="refer;id=77"), 481),
    (lambda h: notify(h, b"hello\r\n", cseq=2), 400),
    (lambda h: notify(h, b"SIP/2.0 200 OK\r\n", cseq=2, content_type="text/plain"), 415),
])
def test_bad_notifies_are_refused_and_change_nothing(build, status):
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    events = h.send(build(h), 1.2)
    assert statuses(events) == [status]
    assert updates(events) == []
    assert [type(e) for e in others(events)] == [MessageRejected]


def test_notify_without_a_transfer_is_481():
    h = confirmed_call()
    h.refer_cseq = 1
    events = h.send(notify(h, b"SIP/2.0 200 OK\r\n", cseq=2), 1.0)
    assert statuses(events) == [481]


def test_transfer_needs_an_established_call():
    h = confirmed_call()
    assert not h.ua.transfer("nope", TECHNICIAN, 1.0)
    h.ua.hangup("call-1", 1.0)
    h.ua.events()
    assert not h.ua.transfer("call-1", TECHNICIAN, 1.1)


def test_caller_hanging_up_during_the_transfer_ends_the_call():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    events = h.send(message("BYE", branch="z9hG4bK-bye", cseq=5, to_tag=h.tag, content_type=None), 2.0)
    assert statuses(events) == [200]
    assert others(events) == [CallEnded(call_id="call-1", reason=EndReason.REMOTE_BYE)]
    assert [e for _, e in h.run_until(100.0) if isinstance(e, TransferUpdate)] == []


def test_in_dialog_requests_after_the_refer_take_the_next_cseq():
    h = referred()
    h.send(response_to(h.refer, 202, "Accepted"), 1.05)
    h.ua.hangup("call-1", 2.0)
    (bye,) = sent(h.ua.events())
    assert (bye.method, bye.cseq.number) == ("BYE", 2)


# ---- the transfer's own table ----------------------------------------------------------


@pytest.mark.parametrize("inputs, expected", [
    ([TransferInput.REFER_ACCEPTED, TransferInput.NOTIFY_PROGRESS, TransferInput.NOTIFY_SUCCESS], "succeeded"),
    ([TransferInput.REFER_REFUSED], "failed"),
    ([TransferInput.REFER_ACCEPTED, TransferInput.NO_NOTIFY], "failed"),
    ([TransferInput.REFER_ACCEPTED, TransferInput.NO_NOTIFY, TransferInput.NOTIFY_SUCCESS], "succeeded"),
    ([TransferInput.NOTIFY_FAILURE, TransferInput.NOTIFY_PROGRESS], "failed"),
])
def test_transfer_table(inputs, expected):
    transfer = Transfer(refer_to=TECHNICIAN)
    for event in inputs:
        transfer.fire(event)
    assert transfer.state.value == expected


def test_illegal_transfer_input_parks_in_error():
    transfer = Transfer(refer_to=TECHNICIAN)
    transfer.fire(TransferInput.REFER_ACCEPTED)
    transfer.fire(TransferInput.NOTIFY_SUCCESS)
    with pytest.raises(TransferError, match="no final status in time in state succeeded"):
        transfer.fire(TransferInput.NO_RESULT)
    assert transfer.state is TransferState.ERROR
    assert all(state is not TransferState.ERROR for state, _ in TRANSFER_TRANSITIONS)


@pytest.mark.parametrize("body, expected", [
    (b"SIP/2.0 100 Trying\r\n", (100, "Trying")),
    (b"SIP/2.0 200 OK", (200, "OK")),
    (b"\r\nSIP/2.0 603 Declined\r\nContent-Length: 0\r\n", (603, "Declined")),
    (b"sip/2.0 486 Busy Here\n", (486, "Busy Here")),
])
def test_sipfrag_status(body, expected):
    assert parse_sipfrag_status_untrusted(body) == expected


@pytest.mark.parametrize("body, reason", [
    (b"", "message/sipfrag does not start with a SIP status line: ''"),
    (b"INVITE sip:a@b SIP/2.0\r\n", "message/sipfrag does not start with a SIP status line: 'INVITE sip:a@b SIP/2.0\\r'"),
    (b"SIP/2.0 99 Odd\r\n", "message/sipfrag does not start with a SIP status line: 'SIP/2.0 99 Odd\\r'"),
    (b"SIP/2.0 200 OK\r\n" + b"X" * 5000, "message/sipfrag body of 5016 bytes is over 4096"),
])
def test_bad_sipfrag(body, reason):
    with pytest.raises(SipParseError) as caught:
        parse_sipfrag_status_untrusted(body)
    assert (caught.value.status, caught.value.reason) == (400, reason)


def test_sipfrag_response_value_is_unused():
    # The NOTIFY is answered 200 whatever the sipfrag said (RFC 3515 §2.4.5).
    h = referred()
    events = h.send(notify(h, b"SIP/2.0 503 Service Unavailable\r\n", cseq=2), 1.1)
    assert isinstance(sent(events)[0], Response) and statuses(events) == [200]
