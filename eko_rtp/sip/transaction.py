"""SIP transactions (RFC 3261 §17, RFC 6026): server INVITE, server and client non-INVITE.

Theory of operation: a transaction is a small state machine that owns the
retransmissions of one request/response exchange, so the user agent above it sees
each request once. Every state change is looked up in :data:`TRANSITIONS` (the one
place that says what is legal); anything else raises :class:`IllegalTransition`
and parks the machine in ``ERROR``. Network input that a state does not accept (an
ACK while still proceeding, say) is checked with :meth:`Transaction.allows` first
and dropped by the caller; only our own misuse raises.

Timers are absolute deadlines compared with the ``now`` the caller passes:
``retransmit_at`` (G for a server INVITE's error response, E for a client request)
and ``timeout_at`` (H, I, J, L, F or K). Over a reliable transport the
retransmission timers never run and I, J and K are zero (§17.1.2.2, §17.2.1,
§17.2.2). A 2xx to an INVITE goes to the RFC 6026 ``ACCEPTED`` state: the 2xx
itself is retransmitted by the user agent core (§13.3.1.4), and the transaction
only stays to absorb INVITE retransmissions (it answers them with the 2xx again,
which speeds up recovery after a lost 200) until timer L.
"""

from __future__ import annotations

from typing import Any

import attrs

from eko_rtp.sip.headers import MAGIC_COOKIE
from eko_rtp.sip.message import Request
from eko_rtp.state_enum import StateEnum

__all__ = [
    "Kind",
    "State",
    "Input",
    "TRANSITIONS",
    "TimerSettings",
    "Hop",
    "IllegalTransition",
    "Transaction",
    "ServerTransaction",
    "ClientTransaction",
    "server_key",
    "client_key",
    "Backoff",
]


class Kind(StateEnum):
    INVITE_SERVER = "INVITE server"
    NON_INVITE_SERVER = "non-INVITE server"
    NON_INVITE_CLIENT = "non-INVITE client"


class State(StateEnum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"
    ERROR = "Error"


class Input(StateEnum):
    SEND_PROVISIONAL = "send 1xx"
    SEND_2XX = "send 2xx"
    SEND_FAILURE = "send 300-699"
    SEND_FINAL = "send 200-699"
    RECEIVE_REQUEST = "request retransmission"
    RECEIVE_ACK = "ACK"
    RECEIVE_PROVISIONAL = "receive 1xx"
    RECEIVE_FINAL = "receive 200-699"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"
    TIMER_J = "timer J"
    TIMER_L = "timer L"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_K = "timer K"


_S = State
_I = Input
# (kind, state, input) -> next state. Figures 7 and 8 of RFC 3261 §17.2, with the
# RFC 6026 Accepted state; figure 6 of §17.1.2 for the client side.
TRANSITIONS: dict[tuple[Kind, State, Input], State] = {
    (Kind.INVITE_SERVER, _S.PROCEEDING, _I.SEND_PROVISIONAL): _S.PROCEEDING,
    (Kind.INVITE_SERVER, _S.PROCEEDING, _I.RECEIVE_REQUEST): _S.PROCEEDING,
    (Kind.INVITE_SERVER, _S.PROCEEDING, _I.SEND_2XX): _S.ACCEPTED,
    (Kind.INVITE_SERVER, _S.PROCEEDING, _I.SEND_FAILURE): _S.COMPLETED,
    (Kind.INVITE_SERVER, _S.ACCEPTED, _I.RECEIVE_REQUEST): _S.ACCEPTED,
    (Kind.INVITE_SERVER, _S.ACCEPTED, _I.SEND_2XX): _S.ACCEPTED,
    (Kind.INVITE_SERVER, _S.ACCEPTED, _I.TIMER_L): _S.TERMINATED,
    (Kind.INVITE_SERVER, _S.COMPLETED, _I.RECEIVE_REQUEST): _S.COMPLETED,
    (Kind.INVITE_SERVER, _S.COMPLETED, _I.TIMER_G): _S.COMPLETED,
    (Kind.INVITE_SERVER, _S.COMPLETED, _I.RECEIVE_ACK): _S.CONFIRMED,
    (Kind.INVITE_SERVER, _S.COMPLETED, _I.TIMER_H): _S.TERMINATED,
    (Kind.INVITE_SERVER, _S.CONFIRMED, _I.RECEIVE_ACK): _S.CONFIRMED,
    (Kind.INVITE_SERVER, _S.CONFIRMED, _I.RECEIVE_REQUEST): _S.CONFIRMED,
    (Kind.INVITE_SERVER, _S.CONFIRMED, _I.TIMER_I): _S.TERMINATED,
    (Kind.NON_INVITE_SERVER, _S.TRYING, _I.RECEIVE_REQUEST): _S.TRYING,
    (Kind.NON_INVITE_SERVER, _S.TRYING, _I.SEND_PROVISIONAL): _S.PROCEEDING,
    (Kind.NON_INVITE_SERVER, _S.TRYING, _I.SEND_FINAL): _S.COMPLETED,
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _I.RECEIVE_REQUEST): _S.PROCEEDING,
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _I.SEND_PROVISIONAL): _S.PROCEEDING,
    (Kind.NON_INVITE_SERVER, _S.PROCEEDING, _I.SEND_FINAL): _S.COMPLETED,
    (Kind.NON_INVITE_SERVER, _S.COMPLETED, _I.RECEIVE_REQUEST): _S.COMPLETED,
    (Kind.NON_INVITE_SERVER, _S.COMPLETED, _I.TIMER_J): _S.TERMINATED,
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _I.TIMER_E): _S.TRYING,
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _I.RECEIVE_PROVISIONAL): _S.PROCEEDING,
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _I.RECEIVE_FINAL): _S.COMPLETED,
    (Kind.NON_INVITE_CLIENT, _S.TRYING, _I.TIMER_F): _S.TERMINATED,
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _I.TIMER_E): _S.PROCEEDING,
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _I.RECEIVE_PROVISIONAL): _S.PROCEEDING,
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _I.RECEIVE_FINAL): _S.COMPLETED,
    (Kind.NON_INVITE_CLIENT, _S.PROCEEDING, _I.TIMER_F): _S.TERMINATED,
    (Kind.NON_INVITE_CLIENT, _S.COMPLETED, _I.RECEIVE_PROVISIONAL): _S.COMPLETED,
    (Kind.NON_INVITE_CLIENT, _S.COMPLETED, _I.RECEIVE_FINAL): _S.COMPLETED,
    (Kind.NON_INVITE_CLIENT, _S.COMPLETED, _I.TIMER_K): _S.TERMINATED,
}
INITIAL_STATE = {Kind.INVITE_SERVER: State.PROCEEDING, Kind.NON_INVITE_SERVER: State.TRYING,
                 Kind.NON_INVITE_CLIENT: State.TRYING}


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen(kw_only=True)
class TimerSettings:
    """RFC 3261 §17.1.1.1 base timers, in seconds."""

    t1: float = attrs.field(default=0.5, validator=_positive)
    t2: float = attrs.field(default=4.0, validator=_positive)
    t4: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2}) must not be below t1 ({self.t1})")


@attrs.frozen(kw_only=True)
class Hop:
    """Where to send: address, transport ('udp', 'tcp' or 'tls'), and the stream connection to reuse if any."""

    address: tuple[str, int]
    transport: str = attrs.field(validator=attrs.validators.in_(("udp", "tcp", "tls")))
    connection: Any = attrs.field(default=None, eq=False)

    @property
    def reliable(self) -> bool:
        """True over a stream transport, where nothing is retransmitted (§17.1.1.2)."""
        return self.transport != "udp"


class Backoff:
    """Retransmission schedule: first at start + T1, the interval doubling up to a cap.

    Deadlines are absolute (start + T1, + 2·T1, ...), so a late ``handle_timers`` does
    not shift the schedule; one retransmission is sent however late the call is.
    """

    def __init__(self, start: float, first: float, cap: float):
        self.interval = first
        self.cap = cap
        self.due = start + first

    def advance(self, now: float) -> None:
        """Move past ``now`` to the next deadline."""
        while self.due <= now:
            self.interval = min(self.interval * 2, self.cap)
            self.due += self.interval


class IllegalTransition(Exception):
    """A transaction was driven with an input its state does not accept (a bug in the caller)."""


def server_key(request: Request, method: str | None = None) -> tuple:
    """§17.2.3 matching key of a parsed request; ACK keys as its INVITE, ``method`` overrides (CANCEL -> INVITE)."""
    via = request.vias[0]
    method = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by, method)
    # RFC 2543 peers: the identifying headers of the request (§17.2.3, second half).
    return ("rfc2543", request.uri, request.from_.tag, request.call_id, request.cseq.number, str(via), method)


def client_key(branch: str, method: str) -> tuple[str, str]:
    """§17.1.3: a response matches the client transaction of its top Via branch and CSeq method."""
    return (branch, method)


class Transaction:
    """State, timers and last message of one transaction; see the module docstring."""

    def __init__(self, *, kind: Kind, key: tuple, request: Request, hop: Hop, timers: TimerSettings):
        self.kind = kind
        self.key = key
        self.request = request
        self.hop = hop
        self.timers = timers
        self.state = INITIAL_STATE[kind]
        self.last_message: bytes | None = None
        self.retransmit: Backoff | None = None
        self.timeout_at: float | None = None
        self.timeout_input: Input | None = None

    def allows(self, event: Input) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self.kind, self.state, event) in TRANSITIONS

    def fire(self, event: Input) -> State:
        """Apply ``event``; raise IllegalTransition (state -> ERROR) when the table has no entry."""
        try:
            self.state = TRANSITIONS[(self.kind, self.state, event)]
        except KeyError:
            previous, self.state = self.state, State.ERROR
            raise IllegalTransition(
                f"{self.kind.value} transaction {self.key}: {event.value} in {previous.value}"
            ) from None
        if self.state is State.TERMINATED:
            self.retransmit = None
            self.timeout_at = self.timeout_input = None
        return self.state

    @property
    def terminated(self) -> bool:
        """True once the transaction can be forgotten."""
        return self.state in (State.TERMINATED, State.ERROR)

    def next_deadline(self) -> float | None:
        """The earliest timer, None when none runs."""
        deadlines = [d for d in (self.retransmit and self.retransmit.due, self.timeout_at) if d is not None]
        return min(deadlines) if deadlines else None

    def _start_timeout(self, event: Input, at: float) -> None:
        self.timeout_input = event
        self.timeout_at = at

    def expire(self, now: float) -> list[bytes]:
        """Fire the timers due at ``now``; return what must be retransmitted."""
        out = []
        if self.timeout_at is not None and self.timeout_at <= now and self.timeout_input is not None:
            self.fire(self.timeout_input)
            self.timeout_at = self.timeout_input = None
            return out
        if self.retransmit is not None and self.retransmit.due <= now:
            self.fire(Input.TIMER_G if self.kind is Kind.INVITE_SERVER else Input.TIMER_E)
            if self.last_message is not None:
                out.append(self.last_message)
            self.retransmit.advance(now)
        return out


class ServerTransaction(Transaction):
    """An INVITE or non-INVITE server transaction (§17.2)."""

    def __init__(self, *, request: Request, key: tuple, hop: Hop, timers: TimerSettings):
        kind = Kind.INVITE_SERVER if request.method == "INVITE" else Kind.NON_INVITE_SERVER
        super().__init__(kind=kind, key=key, request=request, hop=hop, timers=timers)

    def respond(self, status: int, data: bytes, now: float) -> None:
        """Record that response ``data`` with ``status`` is being sent, and start its timers."""
        t1, reliable = self.timers.t1, self.hop.reliable
        if status < 200:
            self.fire(Input.SEND_PROVISIONAL)
        elif self.kind is Kind.NON_INVITE_SERVER:
            self.fire(Input.SEND_FINAL)
            self._start_timeout(Input.TIMER_J, now if reliable else now + 64 * t1)
        elif status < 300:
            first = self.state is State.PROCEEDING
            self.fire(Input.SEND_2XX)
            if first:
                self._start_timeout(Input.TIMER_L, now + 64 * t1)
        else:
            self.fire(Input.SEND_FAILURE)
            if not reliable:
                self.retransmit = Backoff(now, t1, self.timers.t2)
            self._start_timeout(Input.TIMER_H, now + 64 * t1)
        self.last_message = data

    def receive_retransmission(self) -> bytes | None:
        """A retransmitted request arrived: the response to repeat, if any (§17.2.1, §17.2.2)."""
        if not self.allows(Input.RECEIVE_REQUEST):
            return None
        self.fire(Input.RECEIVE_REQUEST)
        if self.state in (State.TRYING, State.CONFIRMED):
            return None  # absorbed: nothing sent yet, or the ACK already came
        return self.last_message

    def receive_ack(self, now: float) -> bool:
        """An ACK for our error response arrived; True when it was the first (§17.2.1)."""
        if not self.allows(Input.RECEIVE_ACK):
            return False
        first = self.state is State.COMPLETED
        self.fire(Input.RECEIVE_ACK)
        if first:
            self.retransmit = None
            self._start_timeout(Input.TIMER_I, now if self.hop.reliable else now + self.timers.t4)
        return first


class ClientTransaction(Transaction):
    """A non-INVITE client transaction (§17.1.2) for the BYE and UPDATE we send."""

    def __init__(self, *, request: Request, key: tuple, hop: Hop, timers: TimerSettings, now: float):
        super().__init__(kind=Kind.NON_INVITE_CLIENT, key=key, request=request, hop=hop, timers=timers)
        self.last_message = bytes(request)
        self.response_status: int | None = None
        if not hop.reliable:
            self.retransmit = Backoff(now, timers.t1, timers.t2)
        self._start_timeout(Input.TIMER_F, now + 64 * timers.t1)

    def receive_response(self, status: int, now: float) -> bool:
        """Feed a response; True when it is the first final one (the TU acts on it)."""
        event = Input.RECEIVE_PROVISIONAL if status < 200 else Input.RECEIVE_FINAL
        if not self.allows(event):
            return False
        before = self.state
        self.fire(event)
        if event is Input.RECEIVE_PROVISIONAL:
            if before is State.TRYING and self.retransmit is not None:
                # §17.1.2.2: in Proceeding, timer E fires every T2.
                self.retransmit.interval = self.timers.t2
            return False
        if before is State.COMPLETED:
            return False
        self.response_status = status
        self.retransmit = None
        self._start_timeout(Input.TIMER_K, now if self.hop.reliable else now + self.timers.t4)
        return True

    @property
    def timed_out(self) -> bool:
        """True when timer F ended the transaction without a final response."""
        return self.state is State.TERMINATED and self.response_status is None
