"""One call's state on the UAS side: the lifecycle table and what is in flight.

Theory of operation: a call is keyed by its Call-ID and walks the lifecycle in
:data:`CALL_TRANSITIONS`, the one place that says which (state, input) pairs are
legal. :meth:`Call.fire` looks every change up there; anything else raises
:class:`CallStateError` and parks the call in ``ERROR``, as transactions do
(``transaction.py``). Input from the network that a state does not take (a stray
ACK, a late timer) is checked with :meth:`Call.allows` and dropped by the caller;
only our own misuse raises.

The lifecycle, from RFC 3261 §13.3.1 and §15:

- ``OFFERED``: the INVITE is with the shell, no final response yet. A 2xx
  (``ANSWER``) confirms the dialog on our side (§12.1.1); a 300-699 (``REJECT``)
  or a ``CANCEL`` (§9.2, answered 487) ends the call.
- ``ANSWERED``: our 2xx is retransmitted, T1 doubling to T2, until its ACK
  (§13.3.1.4); 64·T1 without one (``ACK_TIMEOUT``) ends the session with a BYE.
- ``CONFIRMED``: the ACK came. A re-INVITE answered with 2xx (``REANSWER``) moves
  to ``REANSWERED``, where that 2xx is retransmitted until its own ACK, by the
  same rule.
- ``BYE_PENDING``: we hung up before the ACK. §15: "the callee's UA MUST NOT send
  a BYE on a confirmed dialog until it has received an ACK for its 2xx response or
  until the server transaction times out", so the BYE waits for either.
- ``ENDING``: our BYE is in flight (a BYE crossing it is answered and changes
  nothing); its final response or timeout (``BYE_DONE``) ends the call.
- ``ENDED``: forgotten.

Groups of states say what runs where: session timers (RFC 4028 §10) run while the
session is :data:`LIVE`; re-INVITEs are taken and our refreshes sent once it is
:data:`ESTABLISHED`; a 2xx is retransmitted in the states :data:`AWAITING_ACK`;
the shell has been told the call ended (one ``CallEnded``, its reason from
:data:`END_REASONS`) in the states :data:`OVER`.

Two things run beside the lifecycle and are kept as typed values on the call, not
flags: :class:`PendingOffer`, a re-INVITE or UPDATE offer waiting for the shell's
answer (§14.2, RFC 3311 §5.2: at most one at a time), and the client transaction
of our refresh UPDATE while it is in flight (RFC 4028 §7.4: no second refresh
before it ends), and our blind transfer (``refer.py``: the REFER and the NOTIFYs of
its implicit subscription, RFC 3515), which lives in the call's dialog and never
changes the lifecycle: a transfer that succeeds ends the call by the usual BYE.
:class:`AwaitingAck` holds the 2xx that the states
:data:`AWAITING_ACK` retransmit. The deadlines of all of these live in the user
agent's one ``Deadlines`` structure, keyed by (call, :class:`CallTimer`).
"""

from __future__ import annotations

import attrs

from eko_rtp.sip.dialog import Dialog
from eko_rtp.sip.events import EndReason
from eko_rtp.sip.refer import Transfer
from eko_rtp.sip.session_timer import SessionTimer
from eko_rtp.sip.transaction import Backoff, ServerTransaction
from eko_rtp.state_enum import StateEnum

__all__ = [
    "CallState",
    "CallInput",
    "CALL_TRANSITIONS",
    "LIVE",
    "ESTABLISHED",
    "AWAITING_ACK",
    "OVER",
    "END_REASONS",
    "CallStateError",
    "CallTimer",
    "AwaitingAck",
    "PendingOffer",
    "Call",
]


class CallState(StateEnum):
    OFFERED = "offered"  # INVITE received, no final response yet
    ANSWERED = "answered"  # 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    REANSWERED = "reanswered"  # confirmed, and our 2xx to a re-INVITE waits for its ACK
    BYE_PENDING = "bye pending"  # we hung up before the ACK: BYE goes once it comes (§15)
    ENDING = "ending"  # our BYE is in flight
    ENDED = "ended"
    ERROR = "error"


class CallInput(StateEnum):
    ANSWER = "answer"
    REJECT = "reject"
    CANCEL = "CANCEL"
    ACK = "ACK"
    ACK_TIMEOUT = "no ACK"
    REANSWER = "2xx to a re-INVITE"
    REMOTE_BYE = "BYE"
    HANGUP = "hangup"
    EXPIRE = "session expired"
    REFRESH_FAILED = "session refresh failed"
    BYE_DONE = "our BYE completed"


_C = CallState
_CI = CallInput
# (state, input) -> next state; a pair not listed is illegal (-> ERROR).
CALL_TRANSITIONS: dict[tuple[CallState, CallInput], CallState] = {
    (_C.OFFERED, _CI.ANSWER): _C.ANSWERED,
    (_C.OFFERED, _CI.REJECT): _C.ENDED,
    (_C.OFFERED, _CI.CANCEL): _C.ENDED,
    (_C.ANSWERED, _CI.ACK): _C.CONFIRMED,
    (_C.ANSWERED, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.ANSWERED, _CI.REMOTE_BYE): _C.ENDED,
    (_C.ANSWERED, _CI.HANGUP): _C.BYE_PENDING,
    (_C.ANSWERED, _CI.EXPIRE): _C.ENDING,
    (_C.ANSWERED, _CI.REFRESH_FAILED): _C.ENDING,
    (_C.CONFIRMED, _CI.REANSWER): _C.REANSWERED,
    (_C.CONFIRMED, _CI.REMOTE_BYE): _C.ENDED,
    (_C.CONFIRMED, _CI.HANGUP): _C.ENDING,
    (_C.CONFIRMED, _CI.EXPIRE): _C.ENDING,
    (_C.CONFIRMED, _CI.REFRESH_FAILED): _C.ENDING,
    (_C.REANSWERED, _CI.ACK): _C.CONFIRMED,
    (_C.REANSWERED, _CI.REANSWER): _C.REANSWERED,  # a later re-INVITE's 2xx replaces the first
    (_C.REANSWERED, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.REANSWERED, _CI.REMOTE_BYE): _C.ENDED,
    (_C.REANSWERED, _CI.HANGUP): _C.ENDING,
    (_C.REANSWERED, _CI.EXPIRE): _C.ENDING,
    (_C.REANSWERED, _CI.REFRESH_FAILED): _C.ENDING,
    (_C.BYE_PENDING, _CI.ACK): _C.ENDING,
    (_C.BYE_PENDING, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.BYE_PENDING, _CI.REMOTE_BYE): _C.ENDED,
    (_C.ENDING, _CI.REMOTE_BYE): _C.ENDING,
    (_C.ENDING, _CI.BYE_DONE): _C.ENDED,
}

ESTABLISHED = frozenset({_C.CONFIRMED, _C.REANSWERED})
LIVE = frozenset({_C.ANSWERED}) | ESTABLISHED
AWAITING_ACK = frozenset({_C.ANSWERED, _C.REANSWERED, _C.BYE_PENDING})
OVER = frozenset({_C.BYE_PENDING, _C.ENDING, _C.ENDED})

# The reason the shell is given when an input takes a call into OVER.
END_REASONS: dict[CallInput, EndReason] = {
    _CI.REJECT: EndReason.REJECTED,
    _CI.CANCEL: EndReason.CANCELLED,
    _CI.ACK_TIMEOUT: EndReason.NO_ACK,
    _CI.REMOTE_BYE: EndReason.REMOTE_BYE,
    _CI.HANGUP: EndReason.LOCAL_BYE,
    _CI.EXPIRE: EndReason.SESSION_EXPIRED,
    _CI.REFRESH_FAILED: EndReason.REFRESH_FAILED,
}


class CallStateError(Exception):
    """The call was driven with an input its state forbids (a bug in the caller)."""


class CallTimer(StateEnum):
    """A call's timers; when several are due at once they run in this order."""

    NO_ACK = "no ACK"  # §13.3.1.4: 64·T1 after the 2xx
    RETRANSMIT_2XX = "2xx retransmission"  # §13.3.1.4: T1 doubling to T2
    SESSION_EXPIRY = "session expiry"  # RFC 4028 §10: BYE before the peer gives up
    SESSION_REFRESH = "session refresh"  # RFC 4028 §10: half the interval
    TRANSFER_NOTIFY = "first NOTIFY of our REFER"  # RFC 3515 §2.4.4: sent at once
    TRANSFER_RESULT = "final NOTIFY of our REFER"  # the technician answered, or not


@attrs.define(kw_only=True)
class AwaitingAck:
    """Our 2xx to an INVITE or re-INVITE, retransmitted until its ACK (§13.3.1.4)."""

    cseq: int  # the ACK carries the INVITE's CSeq number
    data: bytes
    carried_offer: bool  # the INVITE had no SDP: the ACK brings the answer (§13.2.1)
    backoff: Backoff
    give_up_at: float


@attrs.frozen(kw_only=True)
class PendingOffer:
    """A re-INVITE or UPDATE with an offer, waiting for the shell's answer (§14.2, RFC 3311)."""

    transaction: ServerTransaction
    timer: SessionTimer | None  # negotiated from the request; takes effect with our 2xx


@attrs.define(kw_only=True, eq=False)
class Call:
    """One call: lifecycle state, its INVITE transaction and dialog, session timer, what is in flight.

    Compared by identity, so that it can key its timers.
    """

    call_id: str
    invite: ServerTransaction
    dialog: Dialog
    state: CallState = CallState.OFFERED
    timer: SessionTimer | None = None
    refreshed_at: float = 0.0  # when the session was last refreshed (RFC 4028 §10)
    ack: AwaitingAck | None = None  # set exactly in the states AWAITING_ACK
    offer: PendingOffer | None = None  # only while LIVE
    refresh: tuple[str, str] | None = None  # our refresh UPDATE's transaction key while in flight
    transfer: Transfer | None = None  # our REFER and its subscription, once the script transfers

    def allows(self, event: CallInput) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self.state, event) in CALL_TRANSITIONS

    def fire(self, event: CallInput) -> CallState:
        """Apply ``event``; raise CallStateError (state -> ERROR) when the table has no entry."""
        try:
            self.state = CALL_TRANSITIONS[(self.state, event)]
        except KeyError:
            previous, self.state = self.state, CallState.ERROR
            raise CallStateError(f"call {self.call_id}: {event.value} in state {previous.value}") from None
        return self.state
