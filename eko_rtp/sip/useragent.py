"""The UAS core: one sans-I/O object answering every call of the server (RFC 3261 §8.2, §12-15).

Theory of operation: the shell feeds :meth:`UserAgent.receive` one datagram or one
framed TCP message at a time, calls :meth:`UserAgent.handle_timers` at
:meth:`UserAgent.next_deadline`, and after each call drains :meth:`UserAgent.events`:
``Transmit`` (bytes to send) and call events. The shell decides about calls through
``answer``, ``reject``, ``answer_modification``, ``reject_modification`` and
``hangup``. Nothing here does I/O or reads a clock: ``now`` comes in as monotonic
seconds.

A request first meets the transaction layer (``transaction.py``): a retransmission
is answered from its transaction, an ACK to an error response ends there. New
requests go through the §8.2 checks in RFC order (method, Require, then the
method's own rules). A call is keyed by its Call-ID and walks the lifecycle in
:data:`CALL_TRANSITIONS`; a 2xx to an INVITE is retransmitted by the core
(§13.3.1.4: T1 doubling to T2) until its ACK, and 64·T1 without one ends the call
with a BYE. Session timers (RFC 4028) run per call: we refresh with UPDATE when we
are the refresher, and send BYE when the session expires.

Bad input never escapes :meth:`receive`: it becomes an error response when the
request can be addressed (RFC 3261 §8.2.6 needs Via, From, To, Call-ID, CSeq) or
silence otherwise, plus one ``MessageRejected`` event. Max-Forwards: a UAS is the
end of the path and forwards nothing, so the 483 of §16.3 (a proxy rule) does not
apply; a Max-Forwards of 0 reaching us is served (§11.1 even uses it for OPTIONS),
a malformed one is 400.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import random
from typing import Any

import attrs

from eko_rtp.media.dtmf import DtmfError, parse_info_dtmf_untrusted
from eko_rtp.sip.dialog import Dialog
from eko_rtp.sip.errors import SipParseError, describe
from eko_rtp.sip.events import (
    CallConfirmed,
    CallEnded,
    CallerIdentity,
    EndReason,
    Event,
    IncomingCall,
    InfoDtmf,
    MessageRejected,
    SessionModified,
    Transmit,
)
from eko_rtp.sip.headers import (
    MAGIC_COOKIE,
    Via,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_token_list,
    parse_via,
    split_comma_list,
)
from eko_rtp.sip.message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    REASON_PHRASES,
    Headers,
    Request,
    Response,
    parse_message_untrusted,
)
from eko_rtp.sip.session_timer import (
    IntervalTooSmall,
    SessionTimer,
    SessionTimerSettings,
    adopt_refresh_response,
    negotiate_as_uas,
    refresh_request_headers,
)
from eko_rtp.sip.transaction import (
    Backoff,
    ClientTransaction,
    Hop,
    ServerTransaction,
    State,
    TimerSettings,
    client_key,
    server_key,
)
from eko_rtp.sip.uri import format_host_port

__all__ = ["UserAgent", "UserAgentSettings", "CallState", "CallStateError", "ALLOW", "ACCEPT", "SUPPORTED"]

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO")
ALLOW = ", ".join(METHODS)
ACCEPT = "application/sdp, application/dtmf-relay"
SUPPORTED = "timer"
_SUPPORTED_OPTIONS = frozenset({"timer"})


@attrs.frozen(kw_only=True)
class UserAgentSettings:
    """Where we are (for Via and Contact), who we say we are, timers, limits, and drain state."""

    host: str
    port: int = attrs.field(default=5060, validator=[attrs.validators.gt(0), attrs.validators.lt(65536)])
    contact_user: str = "eko"
    user_agent: str = "Eko RTP"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=attrs.validators.ge(1024))
    session_timer: SessionTimerSettings = SessionTimerSettings()
    accepting: bool = True
    retry_after: int = attrs.field(default=30, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ValueError(f"host must be a host name or address, not {self.host!r}")
        if any(ch in self.user_agent for ch in "\r\n"):
            raise ValueError("user_agent must be one line")
        TimerSettings(t1=self.t1, t2=self.t2, t4=self.t4)  # raises if t1, t2, t4 disagree

    @property
    def timers(self) -> TimerSettings:
        """T1, T2 and T4 as the transaction layer wants them."""
        return TimerSettings(t1=self.t1, t2=self.t2, t4=self.t4)


class CallState(enum.Enum):
    OFFERED = "offered"  # INVITE received, no final response yet
    ANSWERED = "answered"  # 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    BYE_PENDING = "bye pending"  # we hung up before the ACK: BYE goes once it comes (§15)
    ENDING = "ending"  # our BYE is in flight
    ENDED = "ended"


class CallInput(enum.Enum):
    ANSWER = "answer"
    REJECT = "reject"
    CANCEL = "CANCEL"
    ACK = "ACK"
    ACK_TIMEOUT = "no ACK"
    REMOTE_BYE = "BYE"
    HANGUP = "hangup"
    EXPIRE = "session expired"
    BYE_DONE = "our BYE completed"


_C = CallState
_CI = CallInput
CALL_TRANSITIONS: dict[tuple[CallState, CallInput], CallState] = {
    (_C.OFFERED, _CI.ANSWER): _C.ANSWERED,
    (_C.OFFERED, _CI.REJECT): _C.ENDED,
    (_C.OFFERED, _CI.CANCEL): _C.ENDED,
    (_C.ANSWERED, _CI.ACK): _C.CONFIRMED,
    (_C.ANSWERED, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.ANSWERED, _CI.REMOTE_BYE): _C.ENDED,
    (_C.ANSWERED, _CI.HANGUP): _C.BYE_PENDING,
    (_C.ANSWERED, _CI.EXPIRE): _C.ENDING,
    (_C.CONFIRMED, _CI.ACK): _C.CONFIRMED,
    (_C.CONFIRMED, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.CONFIRMED, _CI.REMOTE_BYE): _C.ENDED,
    (_C.CONFIRMED, _CI.HANGUP): _C.ENDING,
    (_C.CONFIRMED, _CI.EXPIRE): _C.ENDING,
    (_C.BYE_PENDING, _CI.ACK): _C.ENDING,
    (_C.BYE_PENDING, _CI.ACK_TIMEOUT): _C.ENDING,
    (_C.BYE_PENDING, _CI.REMOTE_BYE): _C.ENDED,
    (_C.ENDING, _CI.REMOTE_BYE): _C.ENDING,
    (_C.ENDING, _CI.BYE_DONE): _C.ENDED,
}


class CallStateError(Exception):
    """The shell asked for something the call's state forbids (a bug in the caller)."""


@attrs.define
class _PendingAck:
    """A 2xx to an INVITE being retransmitted until its ACK (§13.3.1.4)."""

    data: bytes
    cseq: int
    backoff: Backoff
    deadline: float
    carried_offer: bool
    initial: bool


@attrs.define
class _Call:
    """One call's state: lifecycle, its INVITE transaction and dialog, timers, what is in flight."""

    call_id: str
    state: CallState
    invite: ServerTransaction
    dialog: Dialog
    timer: SessionTimer | None = None
    refreshed_at: float = 0.0  # when the session was last refreshed (RFC 4028 §10)
    pending_ack: _PendingAck | None = None
    modification: ServerTransaction | None = None  # a re-INVITE or UPDATE awaiting the shell
    modification_timer: SessionTimer | None = None  # its negotiated timer, applied on 2xx
    refresh_in_flight: tuple | None = None
    bye_in_flight: tuple | None = None
    reported_end: bool = False


class UserAgent:
    """All dialogs of the server, sans-I/O; see the module docstring."""

    def __init__(self, settings: UserAgentSettings, *, rng: random.Random | None = None):
        self.settings = settings
        self._timers = settings.timers
        self._rng = rng or random.SystemRandom()
        self._accepting = settings.accepting
        self._retry_after = settings.retry_after
        self._events: list[Event] = []
        self._calls: dict[str, _Call] = {}
        self._server: dict[tuple, ServerTransaction] = {}
        self._client: dict[tuple, ClientTransaction] = {}
        self._client_purpose: dict[tuple, tuple[str, str]] = {}
        # Timers: a heap of (deadline, sequence, transaction or call). Entries go stale
        # when their owner's deadline moves or the owner goes; they are checked when
        # they reach the top, so every change that makes a deadline *earlier* pushes
        # a new entry (``_schedule``).
        self._heap: list[tuple[float, int, Any]] = []
        self._sequence = itertools.count()

    # ---- shell interface -------------------------------------------------------

    def events(self) -> list[Event]:
        """The events produced since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    @property
    def accepting(self) -> bool:
        """False while draining: new calls get 503."""
        return self._accepting

    def set_accepting(self, flag: bool, retry_after: int | None = None) -> None:
        """Start or stop draining; ``retry_after`` (seconds) goes in the 503s' Retry-After."""
        self._accepting = flag
        if retry_after is not None:
            if retry_after < 0:
                raise ValueError(f"retry_after must be >= 0, not {retry_after}")
            self._retry_after = retry_after

    @property
    def call_ids(self) -> list[str]:
        """Call-IDs of calls not yet ended (including those whose BYE is in flight)."""
        return list(self._calls)

    def receive(self, data: bytes, *, source: tuple[str, int], transport: str, connection: Any = None,
                now: float) -> None:
        """Handle one datagram or one framed stream message from ``source``."""
        transport = transport.lower()
        if not data.strip(b"\r\n"):
            # A datagram of CRLFs is a keepalive (pjsip sends "\r\n" every 15 s by
            # default): §7.5 ignores CRLFs before a start line, so there is no message
            # here, nothing to answer and nothing to complain about. Over TCP the
            # framer already consumed them (RFC 5626 §3.5.1 pings).
            return
        try:
            message = parse_message_untrusted(data, transport=transport,
                                              max_message_size=self.settings.max_message_size)
        except SipParseError as error:
            self._reject_unparsed(error, source, transport, connection)
            return
        if isinstance(message, Response):
            self._receive_response(message, source, now)
        else:
            try:
                hop = self._response_hop(message, source, transport, connection)
            except SipParseError as error:
                self._rejected(message, source, error.reason, None)
                return
            self._receive_request(message, hop, source, now)
        self._schedule_call(message.headers.get("Call-ID"))

    def next_deadline(self) -> float | None:
        """When ``handle_timers`` must next run, None when no timer runs."""
        heap = self._heap
        while heap:
            deadline, _, owner = heap[0]
            actual = self._deadline_of(owner)
            if actual == deadline:
                return deadline
            heapq.heappop(heap)
            if actual is not None:
                heapq.heappush(heap, (actual, next(self._sequence), owner))
        return None

    def handle_timers(self, now: float) -> None:
        """Fire every timer due at ``now``: retransmissions, timeouts, session refresh and expiry."""
        due: dict[int, Any] = {}
        while self._heap and self._heap[0][0] <= now:
            owner = heapq.heappop(self._heap)[2]
            due[id(owner)] = owner
        for owner in due.values():
            if isinstance(owner, _Call):
                if self._calls.get(owner.call_id) is owner:
                    self._call_timers(owner, now)
            else:
                self._transaction_timers(owner, now)
            self._schedule(owner)

    def _transaction_timers(self, tx: ServerTransaction | ClientTransaction, now: float) -> None:
        table = self._client if isinstance(tx, ClientTransaction) else self._server
        if table.get(tx.key) is not tx:
            return
        for _ in range(3):  # timeout and retransmission may both be due
            deadline = tx.next_deadline()
            if deadline is None or deadline > now:
                break
            for data in tx.expire(now):
                self._transmit(data, tx.hop)
        if tx.terminated:
            del table[tx.key]
            if isinstance(tx, ClientTransaction):
                self._client_done(tx.key, tx, None, now)

    def _deadline_of(self, owner: Any) -> float | None:
        """The owner's current deadline; None once it is gone or has no timer."""
        if isinstance(owner, _Call):
            return self._call_deadline(owner) if self._calls.get(owner.call_id) is owner else None
        table = self._client if isinstance(owner, ClientTransaction) else self._server
        return owner.next_deadline() if table.get(owner.key) is owner else None

    def _schedule(self, owner: Any) -> None:
        deadline = self._deadline_of(owner)
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, next(self._sequence), owner))

    def _schedule_call(self, call_id: str | None) -> None:
        call = self._calls.get(call_id or "")
        if call is not None:
            self._schedule(call)

    def answer(self, call_id: str, sdp: bytes, now: float) -> bool:
        """Send 200 OK with ``sdp`` to the call's INVITE; False if the call already ended."""
        call = self._live_call(call_id, CallState.OFFERED, "answer")
        if call is None:
            return False
        if not sdp:
            raise ValueError("answer needs an SDP body")
        self._fire(call, CallInput.ANSWER)
        call.refreshed_at = now
        self._send_2xx(call, call.invite, sdp, now, initial=True)
        self._schedule(call)
        return True

    def reject(self, call_id: str, status: int, now: float, *, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> bool:
        """Refuse the call's INVITE with a final ``status`` (300-699); False if it already ended."""
        if not 300 <= status <= 699:
            raise ValueError(f"reject needs a status 300..699, not {status}")
        call = self._live_call(call_id, CallState.OFFERED, "reject")
        if call is None:
            return False
        self._respond(call.invite, status, now, reason=reason, to_tag=call.dialog.local_tag, extra=list(headers))
        self._fire(call, CallInput.REJECT)
        self._end(call, EndReason.REJECTED)
        return True

    def answer_modification(self, call_id: str, sdp: bytes, now: float) -> bool:
        """Answer the pending re-INVITE or UPDATE with 200 and ``sdp``; False if none is pending."""
        call = self._calls.get(call_id)
        if call is None or call.modification is None:
            return False
        if not sdp:
            raise ValueError("answer_modification needs an SDP body")
        tx, call.modification = call.modification, None
        call.timer, call.refreshed_at = call.modification_timer, now
        if tx.request.method == "INVITE":
            self._send_2xx(call, tx, sdp, now, initial=False)
        else:
            self._respond(tx, 200, now, extra=self._session_headers(call), body=sdp)
        self._schedule(call)
        return True

    def reject_modification(self, call_id: str, status: int, now: float, *, reason: str | None = None) -> bool:
        """Refuse the pending re-INVITE or UPDATE (the session stays as it was); False if none."""
        if not 300 <= status <= 699:
            raise ValueError(f"reject_modification needs a status 300..699, not {status}")
        call = self._calls.get(call_id)
        if call is None or call.modification is None:
            return False
        tx, call.modification = call.modification, None
        self._respond(tx, status, now, reason=reason)
        return True

    def hangup(self, call_id: str, now: float) -> bool:
        """End the call from our side: BYE (after the ACK if it is still due), CallEnded(LOCAL_BYE) now.

        Before the answer there is no dialog to BYE: the INVITE gets 480 and the call
        ends REJECTED. False when the call is unknown or already ending.
        """
        call = self._calls.get(call_id)
        if call is None or call.state in (CallState.BYE_PENDING, CallState.ENDING, CallState.ENDED):
            return False
        if call.state is CallState.OFFERED:
            return self.reject(call_id, 480, now)
        self._terminate_modification(call, now)
        self._fire(call, CallInput.HANGUP)
        self._end(call, EndReason.LOCAL_BYE)
        # §15: the callee must not send BYE before its 2xx is ACKed (BYE_PENDING
        # waits for the ACK or its timeout).
        if call.state is CallState.ENDING:
            self._send_bye(call, now)
        self._schedule(call)
        return True

    # ---- inbound requests ------------------------------------------------------

    def _receive_request(self, request: Request, hop: Hop, source: tuple[str, int], now: float) -> None:
        try:
            key = server_key(request)
        except SipParseError as error:
            self._rejected(request, source, error.reason, None)
            return
        tx = self._server.get(key)
        if tx is not None:
            if request.method != "ACK":
                resend = tx.receive_retransmission()
                if resend is not None:
                    self._transmit(resend, tx.hop)
                return
            if tx.state is not State.ACCEPTED:
                tx.receive_ack(now)  # timer I replaces timers G and H
                self._schedule(tx)
                return
            # An ACK for a 2xx reusing the INVITE's branch (wrong per §17.1.1.3, but
            # seen in the wild) belongs to the dialog: fall through.
        if request.method == "ACK":
            self._receive_ack(request, now)
            return
        tx = ServerTransaction(request=request, key=key, hop=hop, timers=self._timers)
        self._server[key] = tx
        try:
            if request.method == "CANCEL":
                self._receive_cancel(request, tx, source, now)
            else:
                self._dispatch(request, tx, source, now)
        except SipParseError as error:
            # A header the method needed was malformed: answer it, unless already answered.
            self._rejected(request, source, error.reason, error.status)
            if tx.state in (State.TRYING, State.PROCEEDING):
                self._respond(tx, error.status, now, reason=error.reason, to_tag=self._error_tag(request))

    def _dispatch(self, request: Request, tx: ServerTransaction, source: tuple[str, int], now: float) -> None:
        method, headers = request.method, request.headers
        if method not in METHODS:
            self._refuse(tx, source, 501, now, f"method {method} is not implemented", extra=[("Allow", ALLOW)])
            return
        unsupported = [option for option in parse_token_list(headers.get_all("Require"), "Require")
                       if option.lower() not in _SUPPORTED_OPTIONS]
        if unsupported:
            # §8.2.2.3: list what we lack so the UAC can retry without it.
            self._refuse(tx, source, 420, now, f"Require {', '.join(unsupported)} is not supported",
                         extra=[("Unsupported", ", ".join(unsupported))])
            return
        to_tag = parse_name_addr(headers.get("To") or "", "To").tag
        if to_tag is not None:
            self._dispatch_in_dialog(request, tx, to_tag, source, now)
        elif method == "INVITE":
            self._receive_invite(request, tx, source, now)
        elif method == "OPTIONS":
            self._answer_options(request, tx, now)
        else:
            # §15.1.2 for BYE; UPDATE and INFO likewise need a dialog.
            self._refuse(tx, source, 481, now, f"{method} outside a dialog")

    def _answer_options(self, request: Request, tx: ServerTransaction, now: float) -> None:
        if not self._accepting:
            self._respond(tx, 503, now, to_tag=self._error_tag(request),
                          extra=[("Retry-After", str(self._retry_after))])
            return
        self._respond(tx, 200, now, to_tag=self._error_tag(request),
                      extra=[("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)])

    def _check_sdp_body(self, request: Request, tx: ServerTransaction, source: tuple[str, int], now: float) -> bool:
        """§8.2.3: a body we cannot read gets 415 with what we accept. True when acceptable."""
        encoding = request.headers.get("Content-Encoding")
        if request.body and encoding is not None and encoding.strip().lower() != "identity":
            self._refuse(tx, source, 415, now, f"Content-Encoding {describe(encoding)} is not supported",
                         extra=[("Accept-Encoding", "identity")])
            return False
        if not request.body:
            return True
        content_type = request.headers.get("Content-Type")
        media = parse_media_type(content_type)[0] if content_type else None
        if media != "application/sdp":
            self._refuse(tx, source, 415, now,
                         f"{request.method} body of type {media or 'unknown'} is not application/sdp",
                         extra=[("Accept", "application/sdp")])
            return False
        return True

    def _receive_invite(self, request: Request, tx: ServerTransaction, source: tuple[str, int], now: float) -> None:
        call_id = request.headers.get("Call-ID") or ""
        if call_id in self._calls:
            # §8.2.2.2: the same request reached us by another path (merged), or a
            # second call reuses a Call-ID we are still serving.
            self._refuse(tx, source, 482, now, "initial INVITE for a Call-ID already in a call")
            return
        if not self._accepting:
            self._refuse(tx, source, 503, now, "draining: not accepting calls",
                         extra=[("Retry-After", str(self._retry_after))])
            return
        timer = self._check_offer(request, tx, source, now)
        if timer is False:
            return
        dialog = Dialog.from_invite(request, local_tag=self._token(), local_cseq=0)
        call = _Call(call_id=call_id, state=CallState.OFFERED, invite=tx, dialog=dialog, timer=timer)
        self._calls[call_id] = call
        self._respond(tx, 100, now)
        self._events.append(IncomingCall(call_id=call_id, request=request, offer=request.body or None,
                                         caller=_caller_identity(request), source=source))

    def _check_offer(self, request: Request, tx: ServerTransaction, source: tuple[str, int],
                     now: float) -> SessionTimer | None | bool:
        """Body and session timer of an INVITE or UPDATE: the timer, or False once refused (415, 422)."""
        if not self._check_sdp_body(request, tx, source, now):
            return False
        allow = {method.upper() for method in parse_token_list(request.headers.get_all("Allow"), "Allow")}
        outcome = negotiate_as_uas(request.headers, self.settings.session_timer,
                                   peer_allows_update="UPDATE" in allow)
        if isinstance(outcome, IntervalTooSmall):
            self._refuse(tx, source, 422, now, f"Session-Expires below our Min-SE {outcome.min_se}",
                         extra=[("Min-SE", str(outcome.min_se))])
            return False
        return outcome

    def _receive_cancel(self, request: Request, tx: ServerTransaction, source: tuple[str, int], now: float) -> None:
        invite_tx = self._server.get(server_key(request, method="INVITE"))
        if invite_tx is None:
            self._refuse(tx, source, 481, now, "CANCEL matches no INVITE")
            return
        # §9.2: the CANCEL always gets 200 (with the To tag of the INVITE's responses);
        # it only matters when no final response was sent.
        call = self._calls.get(invite_tx.request.headers.get("Call-ID") or "")
        self._respond(tx, 200, now, to_tag=call.dialog.local_tag if call is not None else self._token())
        if invite_tx.state is not State.PROCEEDING:
            return
        if call is not None and call.invite is invite_tx and call.state is CallState.OFFERED:
            self._respond(invite_tx, 487, now, to_tag=call.dialog.local_tag)
            self._fire(call, CallInput.CANCEL)
            self._end(call, EndReason.CANCELLED)
        elif call is not None and call.modification is invite_tx:
            call.modification = None
            self._respond(invite_tx, 487, now)

    def _receive_ack(self, request: Request, now: float) -> None:
        """An ACK for a 2xx: a transaction of its own (§17.1.1.3), matched to the dialog."""
        call = self._in_dialog_call(request)
        pending = call.pending_ack if call is not None else None
        if call is None or pending is None or parse_cseq(request.headers.get("CSeq") or "").number != pending.cseq:
            return  # a late or stray ACK: never answered (§17)
        call.pending_ack = None
        self._fire(call, CallInput.ACK)
        if pending.initial or pending.carried_offer:
            answer = (request.body or None) if pending.carried_offer else None
            if not call.reported_end:
                self._events.append(CallConfirmed(call_id=call.call_id, answer=answer))
        if call.state is CallState.ENDING and call.bye_in_flight is None:
            self._send_bye(call, now)

    def _in_dialog_call(self, request: Request) -> _Call | None:
        call = self._calls.get(request.headers.get("Call-ID") or "")
        if call is None or call.state is CallState.OFFERED:
            return None
        to_tag = parse_name_addr(request.headers.get("To") or "", "To").tag
        if to_tag != call.dialog.local_tag or not call.dialog.matches(request):
            return None
        return call

    def _dispatch_in_dialog(self, request: Request, tx: ServerTransaction, to_tag: str,
                            source: tuple[str, int], now: float) -> None:
        call = self._in_dialog_call(request)
        method = request.method
        if call is None or (call.state in (CallState.ENDING, CallState.BYE_PENDING) and method != "BYE"):
            self._refuse(tx, source, 481, now, f"in-dialog {method} matches no dialog")
            return
        number = parse_cseq(request.headers.get("CSeq") or "").number
        if number < call.dialog.remote_cseq:
            # §12.2.2: lower than the last one is out of order (equal ones that are
            # retransmissions were absorbed by their transaction already).
            self._refuse(tx, source, 500, now, f"CSeq {number} is below {call.dialog.remote_cseq}",
                         reason="CSeq Out Of Order")
            return
        call.dialog.remote_cseq = number
        if method == "BYE":
            self._respond(tx, 200, now)
            self._terminate_modification(call, now)
            call.pending_ack = None
            self._fire(call, CallInput.REMOTE_BYE)
            self._end(call, EndReason.REMOTE_BYE)
        elif method == "OPTIONS":
            self._answer_options(request, tx, now)
        elif method == "INFO":
            self._receive_info(call, request, tx, source, now)
        else:  # INVITE or UPDATE: ACK and CANCEL never get here
            self._receive_modification(call, request, tx, source, now)

    def _receive_modification(self, call: _Call, request: Request, tx: ServerTransaction,
                              source: tuple[str, int], now: float) -> None:
        is_invite = request.method == "INVITE"
        busy = call.modification is not None or (is_invite and call.state is not CallState.CONFIRMED)
        if busy and (is_invite or request.body):
            # §14.2 (and RFC 3311 §5.2 for UPDATE): an offer while one is outstanding.
            self._refuse(tx, source, 500, now, f"{request.method} while an offer or our 2xx is pending",
                         extra=[("Retry-After", str(self._rng.randint(0, 10)))])
            return
        timer = self._check_offer(request, tx, source, now)
        if timer is False:
            return
        call.dialog.refresh_target(request)
        if not is_invite and not request.body:
            # A session refresh without an offer (RFC 4028 §10): answer at once.
            call.timer, call.refreshed_at = timer, now
            self._respond(tx, 200, now, extra=self._session_headers(call))
            return
        if is_invite:
            self._respond(tx, 100, now)
        call.modification, call.modification_timer = tx, timer
        self._events.append(SessionModified(call_id=call.call_id, offer=request.body or None))

    def _receive_info(self, call: _Call, request: Request, tx: ServerTransaction,
                      source: tuple[str, int], now: float) -> None:
        content_type = request.headers.get("Content-Type")
        media = parse_media_type(content_type)[0] if content_type else None
        if media in ("application/dtmf-relay", "application/dtmf") and request.body:
            digit, duration = _parse_dtmf(media, request.body)
            self._respond(tx, 200, now)
            self._events.append(InfoDtmf(call_id=call.call_id, digit=digit, duration_ms=duration))
            return
        # Legacy INFO (RFC 6086 §9) with other content, or none: acknowledged and ignored,
        # because refusing it would make some peers tear the call down.
        self._respond(tx, 200, now)

    # ---- responses to our requests ------------------------------------------------

    def _receive_response(self, response: Response, source: tuple[str, int], now: float) -> None:
        try:
            via = parse_via(split_comma_list(response.headers.get_all("Via"))[0])
            cseq = parse_cseq(response.headers.get("CSeq") or "")
        except SipParseError as error:
            self._events.append(MessageRejected(description=f"response {response.status}: {error.reason}",
                                                source=source, status=None))
            return
        key = client_key(via.branch or "", cseq.method)
        tx = self._client.get(key)
        if tx is None:
            self._events.append(MessageRejected(
                description=f"response {response.status} to {cseq.method} matches no transaction; dropped",
                source=source, status=None))
            return
        if tx.receive_response(response.status, now):
            self._client_done(key, tx, response, now)
        self._schedule(tx)

    def _client_done(self, key: tuple, tx: ClientTransaction, response: Response | None, now: float) -> None:
        """Our BYE or UPDATE got its final response (or timed out when ``response`` is None)."""
        purpose = self._client_purpose.get(key)
        if tx.terminated:
            self._client_purpose.pop(key, None)
        if purpose is None or (response is None and not tx.timed_out):
            return
        self._client_purpose.pop(key, None)
        what, call_id = purpose
        call = self._calls.get(call_id)
        if call is None:
            return
        if what == "BYE":
            call.bye_in_flight = None
            self._fire(call, CallInput.BYE_DONE)
            return
        call.refresh_in_flight = None
        self._schedule(call)
        if response is not None and 200 <= response.status < 300 and call.timer is not None:
            try:
                call.timer = adopt_refresh_response(call.timer, response.headers)
            except SipParseError as error:
                self._events.append(MessageRejected(description=f"2xx to our UPDATE: {error.reason}",
                                                    source=tx.hop.address, status=None))
            call.refreshed_at = now
        elif response is None or response.status in (408, 481):
            # RFC 4028 §10: a refresh that times out or gets 408/481 ends the session.
            if call.state in (CallState.CONFIRMED, CallState.ANSWERED):
                self._fire(call, CallInput.EXPIRE)
                self._end(call, EndReason.REFRESH_FAILED)
                self._send_bye(call, now)

    # ---- timers of calls ---------------------------------------------------------

    def _call_deadline(self, call: _Call) -> float | None:
        deadlines = []
        if call.pending_ack is not None:
            deadlines += [call.pending_ack.backoff.due, call.pending_ack.deadline]
        if call.timer is not None and call.state in (CallState.ANSWERED, CallState.CONFIRMED):
            deadlines.append(call.timer.expiry_due(call.refreshed_at))
            if call.timer.we_refresh and call.refresh_in_flight is None:
                deadlines.append(call.timer.refresh_due(call.refreshed_at))
        return min(deadlines) if deadlines else None

    def _call_timers(self, call: _Call, now: float) -> None:
        pending = call.pending_ack
        if pending is not None:
            if pending.deadline <= now:
                # §13.3.1.4: 64·T1 without an ACK: the session is over, say so with a BYE.
                call.pending_ack = None
                self._fire(call, CallInput.ACK_TIMEOUT)
                self._end(call, EndReason.NO_ACK)
                self._send_bye(call, now)
                return
            if pending.backoff.due <= now:
                self._transmit(pending.data, call.invite.hop)
                pending.backoff.advance(now)
        if call.timer is None or call.state not in (CallState.ANSWERED, CallState.CONFIRMED):
            return
        if call.timer.expiry_due(call.refreshed_at) <= now:
            self._fire(call, CallInput.EXPIRE)
            self._end(call, EndReason.SESSION_EXPIRED)
            self._send_bye(call, now)
        elif (call.timer.we_refresh and call.refresh_in_flight is None and call.state is CallState.CONFIRMED
              and call.timer.refresh_due(call.refreshed_at) <= now):
            extra = refresh_request_headers(call.timer) + [("Contact", self._contact(call.invite.hop))]
            call.refresh_in_flight = self._send_request(call, "UPDATE", extra, now)

    # ---- building and sending ----------------------------------------------------

    def _send_2xx(self, call: _Call, tx: ServerTransaction, sdp: bytes, now: float, *, initial: bool) -> None:
        extra = [("Record-Route", value) for value in tx.request.headers.get_all("Record-Route")]
        extra += self._session_headers(call)
        data = self._respond(tx, 200, now, to_tag=call.dialog.local_tag, extra=extra, body=sdp)
        number = parse_cseq(tx.request.headers.get("CSeq") or "").number
        call.pending_ack = _PendingAck(data=data, cseq=number, backoff=Backoff(now, self._timers.t1, self._timers.t2),
                                       deadline=now + 64 * self._timers.t1,
                                       carried_offer=not tx.request.body, initial=initial)

    def _session_headers(self, call: _Call) -> list[tuple[str, str]]:
        """Headers of a 2xx to INVITE, re-INVITE or UPDATE: Contact, Allow, Supported, session timer."""
        extra = [("Contact", self._contact(call.invite.hop)), ("Allow", ALLOW), ("Supported", SUPPORTED)]
        if call.timer is not None:
            extra += call.timer.response_headers()
        return extra

    def _contact(self, hop: Hop) -> str:
        uri = f"sip:{self.settings.contact_user}@{format_host_port(self.settings.host, self.settings.port)}"
        if hop.transport != "udp":
            uri += f";transport={hop.transport}"
        return f"<{uri}>"

    def _respond(self, tx: ServerTransaction, status: int, now: float, *, reason: str | None = None,
                 to_tag: str | None = None, extra: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
        """Build the response to ``tx``'s request (§8.2.6), send it, and hand it to the transaction."""
        request = tx.request
        headers = request.headers
        vias = split_comma_list(headers.get_all("Via"))
        top = _stamp_via(parse_via(vias[0]), tx.hop)
        to_value = headers.get("To") or ""
        if to_tag and status != 100 and parse_name_addr(to_value, "To").tag is None:
            to_value += f";tag={to_tag}"
        fields = [("Via", str(top))] + [("Via", via) for via in vias[1:]]
        fields += [("From", headers.get("From") or ""), ("To", to_value),
                   ("Call-ID", headers.get("Call-ID") or ""), ("CSeq", headers.get("CSeq") or "")]
        if status == 100 and "Timestamp" in headers:
            fields.append(("Timestamp", headers.get("Timestamp") or ""))  # §8.2.6.1
        fields += list(extra)
        if status >= 200:
            fields.append(("Server", self.settings.user_agent))
        if body:
            fields.append(("Content-Type", "application/sdp"))
        response = Response(status=status, reason=reason or REASON_PHRASES.get(status, "Unknown"),
                            headers=Headers(fields), body=body)
        data = bytes(response)
        tx.respond(status, data, now)
        self._transmit(data, tx.hop)
        self._schedule(tx)
        return data

    def _send_request(self, call: _Call, method: str, extra: list[tuple[str, str]], now: float) -> tuple:
        transport = call.invite.hop.transport
        branch = MAGIC_COOKIE + self._token()
        via = Via(transport=transport.upper(), host=self.settings.host, port=self.settings.port,
                  parameters=(("branch", branch), ("rport", None)))
        request = call.dialog.build_request(method, via=via, extra_headers=extra)
        target = call.dialog.next_hop()
        port = target.port or (5061 if target.scheme == "sips" else 5060)
        hop = Hop(address=(target.host.strip("[]"), port), transport=transport, connection=call.invite.hop.connection)
        key = client_key(branch, method)
        tx = ClientTransaction(request=request, key=key, hop=hop, timers=self._timers, now=now)
        self._client[key] = tx
        self._client_purpose[key] = (method, call.call_id)
        self._transmit(tx.last_message or b"", hop)
        self._schedule(tx)
        return key

    def _send_bye(self, call: _Call, now: float) -> None:
        call.pending_ack = None
        if call.bye_in_flight is None:
            call.bye_in_flight = self._send_request(call, "BYE", [], now)

    def _terminate_modification(self, call: _Call, now: float) -> None:
        """§15.1.2: requests still pending when the dialog ends get 487."""
        if call.modification is not None:
            tx, call.modification = call.modification, None
            self._respond(tx, 487, now)

    def _transmit(self, data: bytes, hop: Hop) -> None:
        self._events.append(Transmit(data=data, destination=hop.address, transport=hop.transport,
                                     connection=hop.connection))

    # ---- helpers ---------------------------------------------------------------------

    def _live_call(self, call_id: str, state: CallState, action: str) -> _Call | None:
        call = self._calls.get(call_id)
        if call is None or call.reported_end:
            return None
        if call.state is not state:
            raise CallStateError(f"{action} on call {call_id} in state {call.state.value}")
        return call

    def _fire(self, call: _Call, event: CallInput) -> None:
        try:
            call.state = CALL_TRANSITIONS[(call.state, event)]
        except KeyError:
            raise CallStateError(f"call {call.call_id}: {event.value} in state {call.state.value}") from None
        if call.state is CallState.ENDED:
            self._calls.pop(call.call_id, None)

    def _end(self, call: _Call, reason: EndReason) -> None:
        if not call.reported_end:
            call.reported_end = True
            self._events.append(CallEnded(call_id=call.call_id, reason=reason))

    def _token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _error_tag(self, request: Request) -> str:
        """The To tag for a response outside any call: the call's if one exists, else fresh."""
        call = self._calls.get(request.headers.get("Call-ID") or "")
        if call is not None and call.invite.request is request:
            return call.dialog.local_tag
        return self._token()

    def _response_hop(self, request: Request, source: tuple[str, int], transport: str, connection: Any) -> Hop:
        """Where responses go (§18.2.2, RFC 3581 §4)."""
        via = parse_via(split_comma_list(request.headers.get_all("Via"))[0])
        if transport != "udp":
            return Hop(address=source, transport=transport, connection=connection)
        if via.rport is not False:
            return Hop(address=source, transport=transport)
        return Hop(address=(source[0], via.port or 5060), transport=transport)

    def _reject_unparsed(self, error: SipParseError, source: tuple[str, int], transport: str,
                         connection: Any) -> None:
        request = error.request
        status = None
        # §8.2.6.2: a response copies From, To, Call-ID and CSeq; without one of them
        # it is no SIP message at all (§8.1.1) and could match nothing on the client.
        addressable = isinstance(request, Request) and all(
            (request.headers.get(name) or "").strip() for name in ("From", "To", "Call-ID", "CSeq"))
        if addressable and request.method != "ACK":
            try:
                hop = self._response_hop(request, source, transport, connection)
                tx = ServerTransaction(request=request, key=("stateless",), hop=hop, timers=self._timers)
                self._respond(tx, error.status, 0.0, reason=error.reason, to_tag=self._token())
                status = error.status
            except (SipParseError, ValueError, IndexError):
                status = None  # not addressable: silence
        self._events.append(MessageRejected(description=f"unparseable message: {error.reason}",
                                            source=source, status=status))

    def _refuse(self, tx: ServerTransaction, source: tuple[str, int], status: int, now: float, why: str, *,
                extra: list[tuple[str, str]] = (), reason: str | None = None) -> None:
        """Answer ``tx`` with an error ``status`` and log ``why`` in a MessageRejected event."""
        self._respond(tx, status, now, reason=reason, to_tag=self._error_tag(tx.request), extra=list(extra))
        self._rejected(tx.request, source, why, status)

    def _rejected(self, request: Request, source: tuple[str, int], reason: str, status: int | None) -> None:
        call_id = request.headers.get("Call-ID") or "?"
        self._events.append(MessageRejected(description=f"{request.method} (Call-ID {call_id}): {reason}",
                                            source=source, status=status))


def _stamp_via(via: Via, hop: Hop) -> Via:
    """§18.2.1 received, RFC 3581 §4 rport: tell the client where its request came from.

    RFC 3581 §4 asks for both whatever the transport: over TCP they tell a client
    behind NAT which address and port its connection was seen from.
    """
    source_host, source_port = hop.address
    if via.rport is not False:
        return via.with_parameter("received", source_host).with_parameter("rport", str(source_port))
    if via.host.strip("[]") != source_host:
        return via.with_parameter("received", source_host)
    return via


def _caller_identity(request: Request) -> CallerIdentity:
    caller = parse_name_addr(request.headers.get("From") or "", "From")
    asserted_uri = asserted_user = None
    for value in request.headers.get_all("P-Asserted-Identity"):
        try:
            asserted = parse_name_addr_list([value], "P-Asserted-Identity")
        except SipParseError:
            continue  # informational only (RFC 3325): an unreadable one is ignored
        if asserted:
            asserted_uri, asserted_user = str(asserted[0].uri), asserted[0].uri.user
            break
    return CallerIdentity(from_uri=str(caller.uri), from_user=caller.uri.user, display_name=caller.display_name,
                          asserted_uri=asserted_uri, asserted_user=asserted_user)


def _parse_dtmf(media: str, body: bytes) -> tuple[str, int | None]:
    """The INFO's digit, by the one DTMF body parser (media/dtmf.py); 400 when it is bad."""
    try:
        return parse_info_dtmf_untrusted(media, body)
    except DtmfError as error:
        raise SipParseError(400, f"bad {media} body: {error}") from None
