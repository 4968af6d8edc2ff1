"""Transactions (RFC 3261 §17): transition table, timers at exact times, keys."""

from __future__ import annotations

import pytest

from eko_rtp.sip.message import parse_message_untrusted
from eko_rtp.sip.transaction import (
    TRANSITIONS,
    ClientTransaction,
    Hop,
    IllegalTransition,
    Input,
    Kind,
    ServerTransaction,
    State,
    TimerSettings,
    server_key,
)

TIMERS = TimerSettings()
UDP = Hop(address=("192.0.2.1", 5060), transport="udp")
TCP = Hop(address=("192.0.2.1", 5060), transport="tcp")


def request(method: str, branch: str = "z9hG4bK-1", cseq_method: str | None = None, sent_by: str = "192.0.2.1"):
    data = (f"{method} sip:eko@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {sent_by};branch={branch}\r\n"
            f"From: <sip:a@example.org>;tag=f\r\nTo: <sip:eko@example.net>\r\nCall-ID: tx-1\r\n"
            f"CSeq: 1 {cseq_method or method}\r\n\r\n").encode()
    return parse_message_untrusted(data, transport="udp")


def drive(tx, until: float) -> list[tuple[float, State, int]]:
    """Run the transaction's timers at their exact deadlines: (time, state, messages sent)."""
    log = []
    for _ in range(100):
        deadline = tx.next_deadline()
        if deadline is None or deadline > until:
            break
        sent = tx.expire(deadline)
        log.append((deadline, tx.state, len(sent)))
    return log


def test_table_has_only_known_states():
    for (kind, state, event), target in TRANSITIONS.items():
        assert isinstance(kind, Kind) and isinstance(event, Input)
        assert state is not State.TERMINATED and target is not State.ERROR


def test_invite_error_response_retransmitted_on_timer_g_until_h():
    tx = ServerTransaction(request=request("INVITE"), key=("k",), hop=UDP, timers=TIMERS)
    tx.respond(100, b"100", 0.0)
    assert tx.state is State.PROCEEDING
    tx.respond(486, b"486", 0.0)
    assert tx.state is State.COMPLETED
    log = drive(tx, 40.0)
    times = [t for t, _, sent in log if sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-1] == (32.0, State.TERMINATED, 0)


def test_invite_ack_confirms_then_timer_i():
    tx = ServerTransaction(request=request("INVITE"), key=("k",), hop=UDP, timers=TIMERS)
    tx.respond(487, b"487", 1.0)
    assert tx.receive_retransmission() == b"487"
    assert tx.receive_ack(2.0) is True
    assert tx.state is State.CONFIRMED
    assert tx.receive_ack(2.1) is False  # absorbed
    assert tx.receive_retransmission() is None
    assert drive(tx, 100.0) == [(7.0, State.TERMINATED, 0)]  # T4 after the ACK


def test_invite_2xx_goes_to_accepted_and_timer_l():
    tx = ServerTransaction(request=request("INVITE"), key=("k",), hop=TCP, timers=TIMERS)
    assert tx.receive_retransmission() is None  # nothing sent yet
    tx.respond(100, b"100", 0.0)
    assert tx.receive_retransmission() == b"100"
    tx.respond(200, b"200", 0.0)
    assert tx.state is State.ACCEPTED
    assert tx.receive_ack(0.1) is False  # a 2xx's ACK is not the transaction's
    assert tx.receive_retransmission() == b"200"
    assert drive(tx, 100.0) == [(32.0, State.TERMINATED, 0)]


def test_non_invite_server_timer_j_udp_and_tcp():
    tx = ServerTransaction(request=request("BYE"), key=("k",), hop=UDP, timers=TIMERS)
    assert tx.receive_retransmission() is None  # Trying: absorbed
    tx.respond(200, b"200", 5.0)
    assert tx.receive_retransmission() == b"200"
    assert drive(tx, 100.0) == [(37.0, State.TERMINATED, 0)]
    tx = ServerTransaction(request=request("BYE"), key=("k",), hop=TCP, timers=TIMERS)
    tx.respond(200, b"200", 5.0)
    assert drive(tx, 100.0) == [(5.0, State.TERMINATED, 0)]


def test_client_non_invite_timer_e_then_f():
    tx = ClientTransaction(request=request("BYE"), key=("b", "BYE"), hop=UDP, timers=TIMERS, now=0.0)
    log = drive(tx, 100.0)
    assert [t for t, _, sent in log if sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-1] == (32.0, State.TERMINATED, 0)
    assert tx.timed_out


def test_client_non_invite_provisional_then_final_then_timer_k():
    tx = ClientTransaction(request=request("BYE"), key=("b", "BYE"), hop=UDP, timers=TIMERS, now=0.0)
    assert drive(tx, 0.5) == [(0.5, State.TRYING, 1)]
    assert tx.receive_response(100, 0.7) is False
    assert tx.state is State.PROCEEDING
    assert drive(tx, 9.0) == [(1.5, State.PROCEEDING, 1), (5.5, State.PROCEEDING, 1)]
    assert tx.receive_response(200, 6.0) is True
    assert tx.receive_response(200, 6.1) is False
    assert drive(tx, 100.0) == [(11.0, State.TERMINATED, 0)]
    assert not tx.timed_out and tx.response_status == 200


def test_illegal_transition_raises_and_parks_in_error():
    tx = ServerTransaction(request=request("BYE"), key=("k",), hop=UDP, timers=TIMERS)
    tx.respond(200, b"200", 0.0)
    with pytest.raises(IllegalTransition, match=r"non-INVITE server transaction \('k',\): send 200-699 in Completed"):
        tx.respond(200, b"200", 0.0)
    assert tx.state is State.ERROR and tx.terminated


def test_keys_match_ack_and_cancel_to_their_invite():
    invite = server_key(request("INVITE"))
    assert invite == ("z9hG4bK-1", "192.0.2.1:5060", "INVITE")
    assert server_key(request("ACK")) == invite
    assert server_key(request("CANCEL")) == ("z9hG4bK-1", "192.0.2.1:5060", "CANCEL")
    assert server_key(request("CANCEL"), method="INVITE") == invite
    assert server_key(request("INVITE", sent_by="192.0.2.1:5070")) != invite
    old = server_key(request("INVITE", branch="1234"))
    assert old[0] == "rfc2543" and old[-1] == "INVITE"


def test_timer_settings_validate():
    with pytest.raises(ValueError, match=r"t2 \(0.1\) must not be below t1 \(0.5\)"):
        TimerSettings(t2=0.1)
