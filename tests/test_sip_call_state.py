"""The call lifecycle (RFC 3261 §13.3.1, §15): every (state, input) pair, legal and illegal."""

from __future__ import annotations

import pytest

from eko_rtp.sip.call_state import (
    AWAITING_ACK,
    CALL_TRANSITIONS,
    END_REASONS,
    ESTABLISHED,
    LIVE,
    OVER,
    Call,
    CallInput,
    CallState,
    CallStateError,
)
from eko_rtp.sip.events import EndReason

# Read a row as "in this state, this input leads to": '.' is illegal (-> ERROR).
#   §13.3.1: answer or reject the INVITE; §9.2: CANCEL before the final response;
#   §13.3.1.4: the 2xx waits for its ACK, 64·T1 without one ends the session;
#   §14: a re-INVITE's 2xx waits for its own ACK; §15: BYE from either side, ours
#   only once the 2xx is ACKed; RFC 4028 §10: expiry and failed refresh end it.
MATRIX = """
state        ANSWER    REJECT  CANCEL  ACK        ACK_TIMEOUT  REANSWER    REMOTE_BYE  HANGUP       EXPIRE  REFRESH_FAILED  BYE_DONE
OFFERED      ANSWERED  ENDED   ENDED   .          .            .           .           .            .       .               .
ANSWERED     .         .       .       CONFIRMED  ENDING       .           ENDED       BYE_PENDING  ENDING  ENDING          .
CONFIRMED    .         .       .       .          .            REANSWERED  ENDED       ENDING       ENDING  ENDING          .
REANSWERED   .         .       .       CONFIRMED  ENDING       REANSWERED  ENDED       ENDING       ENDING  ENDING          .
BYE_PENDING  .         .       .       ENDING     ENDING       .           ENDED       .            .       .               .
ENDING       .         .       .       .          .            .           ENDING      .            .       .               ENDED
ENDED        .         .       .       .          .            .           .           .            .       .               .
ERROR        .         .       .       .          .            .           .           .            .       .               .
"""


def expected_table() -> dict[tuple[CallState, CallInput], CallState | None]:
    header, *rows = MATRIX.strip().splitlines()
    inputs = [CallInput[name] for name in header.split()[1:]]
    table = {}
    for row in rows:
        state, *cells = row.split()
        assert len(cells) == len(inputs), row
        for event, cell in zip(inputs, cells):
            table[(CallState[state], event)] = None if cell == "." else CallState[cell]
    return table


EXPECTED = expected_table()


def call_in(state: CallState) -> Call:
    # The lifecycle needs neither transaction nor dialog.
    return Call(call_id="call-7", invite=None, dialog=None, state=state)


def test_the_matrix_covers_every_pair_and_matches_the_table():
    assert set(EXPECTED) == {(state, event) for state in CallState for event in CallInput}
    assert {pair: target for pair, target in EXPECTED.items() if target is not None} == CALL_TRANSITIONS


@pytest.mark.parametrize("state, event", sorted(EXPECTED, key=lambda pair: (pair[0].name, pair[1].name)),
                         ids=lambda item: item.name)
def test_every_pair_lands_where_the_rfc_says_or_parks_in_error(state, event):
    call = call_in(state)
    target = EXPECTED[(state, event)]
    assert call.allows(event) is (target is not None)
    if target is not None:
        assert call.fire(event) is target and call.state is target
        return
    with pytest.raises(CallStateError) as caught:
        call.fire(event)
    assert str(caught.value) == f"call call-7: {event.value} in state {state.value}"
    assert call.state is CallState.ERROR


@pytest.mark.parametrize("state, live, established, awaiting_ack, over", [
    (CallState.OFFERED, False, False, False, False),
    (CallState.ANSWERED, True, False, True, False),
    (CallState.CONFIRMED, True, True, False, False),
    (CallState.REANSWERED, True, True, True, False),
    (CallState.BYE_PENDING, False, False, True, True),
    (CallState.ENDING, False, False, False, True),
    (CallState.ENDED, False, False, False, True),
    (CallState.ERROR, False, False, False, False),
])
def test_state_groups(state, live, established, awaiting_ack, over):
    assert (state in LIVE, state in ESTABLISHED, state in AWAITING_ACK, state in OVER) == (
        live, established, awaiting_ack, over)


def test_ack_timeout_is_legal_exactly_where_a_2xx_awaits_its_ack():
    assert {state for (state, event) in CALL_TRANSITIONS if event is CallInput.ACK_TIMEOUT} == AWAITING_ACK


def test_every_way_into_over_has_an_end_reason():
    entering = {event for (state, event), target in CALL_TRANSITIONS.items()
                if state not in OVER and target in OVER}
    assert entering == set(END_REASONS)
    assert END_REASONS == {
        CallInput.REJECT: EndReason.REJECTED,
        CallInput.CANCEL: EndReason.CANCELLED,
        CallInput.ACK_TIMEOUT: EndReason.NO_ACK,
        CallInput.REMOTE_BYE: EndReason.REMOTE_BYE,
        CallInput.HANGUP: EndReason.LOCAL_BYE,
        CallInput.EXPIRE: EndReason.SESSION_EXPIRED,
        CallInput.REFRESH_FAILED: EndReason.REFRESH_FAILED,
    }


def test_a_whole_life_walks_the_table():
    call = call_in(CallState.OFFERED)
    path = [CallInput.ANSWER, CallInput.ACK, CallInput.REANSWER, CallInput.REANSWER, CallInput.ACK,
            CallInput.HANGUP, CallInput.REMOTE_BYE, CallInput.BYE_DONE]
    assert [call.fire(event) for event in path] == [
        CallState.ANSWERED, CallState.CONFIRMED, CallState.REANSWERED, CallState.REANSWERED, CallState.CONFIRMED,
        CallState.ENDING, CallState.ENDING, CallState.ENDED]
