"""The UA core: one sans-I/O object for every call of the server (RFC 3261 §8.2, §10, §12-15, §22).

Theory of operation: the shell feeds :meth:`UserAgent.receive` one datagram or one
framed TCP message at a time, calls :meth:`UserAgent.handle_timers` at
:meth:`UserAgent.next_deadline`, and after each call drains :meth:`UserAgent.events`:
``Transmit`` (bytes to send) and call events. The shell decides about calls through
``answer``, ``reject``, ``answer_modification``, ``reject_modification`` and
``hangup``. Nothing here does I/O or reads a clock: ``now`` comes in as monotonic
seconds.

This module is the dispatch. A message is parsed once (``message.py``: its Via,
From, To, Call-ID and CSeq become typed fields). A request first meets the
transaction layer (``transaction.py``): a retransmission is answered from its
transaction, an ACK to an error response ends there. New requests go through the
§8.2 checks in RFC order (§8.2.1 method, §8.2.2.3 Require, §8.2.3 content, then the
method's own rules) and reach their call, whose lifecycle is the table of
``call_state.py``: every change of a call goes through :meth:`UserAgent._change`,
which also does what entering the new state means (§15.1.2: a pending re-INVITE or
UPDATE gets 487 when the session ends; the 2xx stops being retransmitted once its
ACK is no longer awaited; one ``CallEnded`` when the call ends for the shell; our
BYE when it enters ``ENDING``). Responses are built by ``responses.py``. Every timer
(transactions, 2xx retransmission and 64·T1 give-up of §13.3.1.4, RFC 4028 session
refresh and expiry) is armed in one ``deadlines.Deadlines`` when what it guards
starts, and disarmed when that ends.

Besides answering, the core sends requests of its own, each in a client transaction
with an :class:`Outgoing` record of what it is for: BYE, the refresh UPDATE, the
REFER of a blind transfer (``refer.py``: :meth:`UserAgent.transfer`; the NOTIFYs of
its implicit subscription come back in the dialog and become ``TransferUpdate``
events), and the REGISTERs of our registration with the trunk (``registration.py``:
:meth:`UserAgent.start_registration`). Any of them that gets 401 or 407 is sent again,
once per challenge, with a digest answer (``digest.py``, RFC 8760) when the server was
given credentials; the nonce is reused on later requests (RFC 7616 §3.4).

Admission (``admission.py``) comes before all of that for whatever would start
something (an initial INVITE, OPTIONS, any request outside our calls, an unparseable
message): a source outside the trusted networks gets a stateless 403 or silence, a
source over its INVITE rate 503, and an INVITE beyond the calls cap or while the
shell reports the server unhealthy (:meth:`UserAgent.set_health`: no call could
succeed) 503 with Retry-After, so no CRM look-up and no RTP port is ever spent on
it; OPTIONS outside a call say 503 then too, which is how a front or a trunk learns
it. Requests of calls we already have are never judged. Each refusal is one
``RequestRefused`` event.

Bad input never escapes :meth:`receive`: it becomes an error response when the
request can be addressed (RFC 3261 §8.2.6 needs Via, From, To, Call-ID, CSeq) or
silence otherwise, plus one ``MessageRejected`` event. Max-Forwards: a UAS is the
end of the path and forwards nothing, so the 483 of §16.3 (a proxy rule) does not
apply; a Max-Forwards of 0 reaching us is served (§11.1 even uses it for OPTIONS),
a malformed one is 400.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import attrs

from eko_rtp.media.dtmf import DtmfError, parse_info_dtmf_untrusted
from eko_rtp.sip.admission import Admission, Refusal, RefusalReports, UntrustedAction, Verdict
from eko_rtp.sip.call_state import (
    AWAITING_ACK,
    END_REASONS,
    ESTABLISHED,
    LIVE,
    OVER,
    AwaitingAck,
    Call,
    CallInput,
    CallState,
    CallStateError,
    CallTimer,
    PendingOffer,
)
from eko_rtp.sip.deadlines import Deadlines
from eko_rtp.sip.dialog import Dialog
from eko_rtp.sip.digest import DigestClient, DigestCredentials, DigestError, parse_challenges_untrusted
from eko_rtp.sip.errors import SipParseError, describe
from eko_rtp.sip.events import (
    CallConfirmed,
    CallEnded,
    CallerIdentity,
    Event,
    IncomingCall,
    InfoDtmf,
    MessageRejected,
    RegistrationChanged,
    RequestRefused,
    SessionModified,
    TransferUpdate,
    Transmit,
)
from eko_rtp.sip.headers import (
    MAGIC_COOKIE,
    SipWarning,
    Via,
    parameter,
    parse_media_type,
    parse_name_addr_list,
    parse_token_list,
    parse_token_with_parameters,
)
from eko_rtp.sip.message import DEFAULT_MAX_MESSAGE_SIZE, Request, Response, parse_message_untrusted
from eko_rtp.sip.refer import Transfer, TransferInput, parse_sipfrag_status_untrusted
from eko_rtp.sip.registration import Registration, RegistrationSettings, RegistrationState
from eko_rtp.sip.responses import (
    ACCEPT,
    ALLOW,
    METHODS,
    SUPPORTED,
    SUPPORTED_OPTIONS,
    build_response,
    contact,
    session_headers,
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


@attrs.frozen(kw_only=True)
class UserAgentSettings:
    """Where we are (for Via and Contact), who we say we are, timers, limits, and drain state."""

    host: str
    port: int = attrs.field(default=5060, validator=[attrs.validators.gt(0), attrs.validators.lt(65536)])
    # Our TLS listener's port, for the Via and Contact of what goes over TLS (None: ``port``).
    tls_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        [attrs.validators.gt(0), attrs.validators.lt(65536)]))
    contact_user: str = "eko"
    user_agent: str = "Eko RTP"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=attrs.validators.ge(1024))
    session_timer: SessionTimerSettings = SessionTimerSettings()
    accepting: bool = True
    retry_after: int = attrs.field(default=30, validator=attrs.validators.ge(0))
    # Retry-After of the 503s of overload (sip.max_calls, a source over its INVITE rate,
    # the server unhealthy): RFC 3261 §21.5.4, the sender may try again after it.
    busy_retry_after: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    # Our REFER (refer.py): the first NOTIFY must come within this (RFC 3515 §2.4.4: at
    # once), and the final one (the technician answered or not) within this.
    refer_notify_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    refer_result_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))

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

    def port_for(self, transport: str) -> int:
        """The port our Via and Contact name for ``transport`` (RFC 3261 §18.1.1, §8.1.1.8)."""
        if transport == "tls" and self.tls_port is not None:
            return self.tls_port
        return self.port


@attrs.define(kw_only=True, eq=False)
class Outgoing:
    """A request of ours and what it is for: in a call's dialog (BYE, UPDATE, REFER) or a REGISTER.

    Kept with its client transaction, so that a 401/407 can send it again with
    credentials and its final response reaches what waits for it.
    """

    method: str
    hop: Hop
    call: Call | None = None
    registration: Registration | None = None
    extra: list[tuple[str, str]] = attrs.Factory(list)


class UserAgent:
    """All dialogs of the server, sans-I/O; see the module docstring."""

    def __init__(self, settings: UserAgentSettings, *, rng: random.Random | None = None,
                 credentials: DigestCredentials | None = None, admission: Admission | None = None):
        """``admission``: who may start calls and how many (``admission.py``); the server
        always gives one from ``[sip]``. None admits every source without limits (core
        tests, and tools on a closed network)."""
        self.settings = settings
        self._admission = admission
        self._refusal_reports = RefusalReports()
        self._health_problem: str | None = None  # why no call could succeed now, None when one could
        self._timers = settings.timers
        self._rng = rng or random.SystemRandom()
        self._accepting = settings.accepting
        self._retry_after = settings.retry_after
        self._events: list[Event] = []
        self._calls: dict[str, Call] = {}
        self._server: dict[tuple, ServerTransaction] = {}
        self._client: dict[tuple, ClientTransaction] = {}
        self._client_purpose: dict[tuple, Outgoing] = {}  # what each request of ours is for
        # Keys: (transaction, None) for a transaction's own timers, (call, CallTimer) for a
        # call's, (registration, None) for our registration's refresh and retry.
        self._deadlines = Deadlines()
        # Digest answers for the requests we send (RFC 8760), when the trunk asks.
        self._digest = DigestClient(credentials) if credentials is not None else None
        self._registration: Registration | None = None
        self._registration_hop: Hop | None = None
        self._registration_reported: tuple | None = None

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

    def set_health(self, problem: str | None) -> None:
        """Report that no new call could succeed, and why (``problem``), or None once one could again.

        While a problem is set, new INVITEs and OPTIONS outside a call get 503 with
        ``busy_retry_after``; calls in progress go on.
        """
        self._health_problem = problem

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
            if self._untrusted_garbage(error, source, now):
                return
            self._reject_unparsed(error, source, transport, connection)
            return
        if isinstance(message, Response):
            self._receive_response(message, source, now)
        else:
            hop = self._response_hop(message, source, transport, connection)
            self._receive_request(message, hop, source, now)

    def next_deadline(self) -> float | None:
        """When ``handle_timers`` must next run, None when no timer runs."""
        return self._deadlines.next_deadline()

    def handle_timers(self, now: float) -> None:
        """Fire every timer due at ``now``: retransmissions, timeouts, session refresh and expiry."""
        due: dict[Any, list[CallTimer | None]] = {}
        for owner, kind in self._deadlines.pop_due(now):
            due.setdefault(owner, []).append(kind)
        for owner, kinds in due.items():
            if isinstance(owner, Call):
                self._call_timers(owner, kinds, now)
            elif isinstance(owner, Registration):
                self._registration_timer(owner, now)
            else:
                self._transaction_timers(owner, now)

    def answer(self, call_id: str, sdp: bytes, now: float) -> bool:
        """Send 200 OK with ``sdp`` to the call's INVITE; False if the call already ended."""
        call = self._live_call(call_id, CallInput.ANSWER, "answer")
        if call is None:
            return False
        if not sdp:
            raise ValueError("answer needs an SDP body")
        call.refreshed_at = now
        self._change(call, CallInput.ANSWER, now)
        self._send_2xx(call, call.invite, sdp, now)
        return True

    def reject(self, call_id: str, status: int, now: float, *, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
               warning: SipWarning | None = None) -> bool:
        """Refuse the call's INVITE with a final ``status`` (300-699); False if it already ended.

        ``headers`` go into the response as given (Retry-After...), then ``warning``
        (:meth:`warning` makes one naming us).
        """
        if not 300 <= status <= 699:
            raise ValueError(f"reject needs a status 300..699, not {status}")
        call = self._live_call(call_id, CallInput.REJECT, "reject")
        if call is None:
            return False
        self._respond(call.invite, status, now, reason=reason, to_tag=call.dialog.local_tag,
                      extra=_with_warning(headers, warning))
        self._change(call, CallInput.REJECT, now)
        return True

    def answer_modification(self, call_id: str, sdp: bytes, now: float) -> bool:
        """Answer the pending re-INVITE or UPDATE with 200 and ``sdp``; False if none is pending."""
        call = self._calls.get(call_id)
        if call is None or call.offer is None:
            return False
        if not sdp:
            raise ValueError("answer_modification needs an SDP body")
        offer, call.offer = call.offer, None
        call.timer, call.refreshed_at = offer.timer, now
        if offer.transaction.request.method == "INVITE":
            self._change(call, CallInput.REANSWER, now)
            self._send_2xx(call, offer.transaction, sdp, now)
        else:
            self._respond(offer.transaction, 200, now, extra=self._session_headers(call), body=sdp)
        self._arm_session(call)
        return True

    def reject_modification(self, call_id: str, status: int, now: float, *, reason: str | None = None,
                            warning: SipWarning | None = None) -> bool:
        """Refuse the pending re-INVITE or UPDATE (the session stays as it was); False if none.

        ``warning``: a Warning header beside the reason, as for :meth:`reject`.
        """
        if not 300 <= status <= 699:
            raise ValueError(f"reject_modification needs a status 300..699, not {status}")
        call = self._calls.get(call_id)
        if call is None or call.offer is None:
            return False
        offer, call.offer = call.offer, None
        self._respond(offer.transaction, status, now, reason=reason, extra=_with_warning((), warning))
        return True

    def warning(self, code: int, text: str) -> SipWarning:
        """A Warning from us (RFC 3261 §20.43): ``code`` and ``text``, our host as its warn-agent."""
        return SipWarning(code=code, agent=format_host_port(self.settings.host, None), text=text)

    def hangup(self, call_id: str, now: float) -> bool:
        """End the call from our side: BYE (after the ACK if it is still due), CallEnded(LOCAL_BYE) now.

        Before the answer there is no dialog to BYE: the INVITE gets 480 and the call
        ends REJECTED. False when the call is unknown or already ending.
        """
        call = self._calls.get(call_id)
        if call is None or call.state in OVER:
            return False
        if call.state is CallState.OFFERED:
            return self.reject(call_id, 480, now)
        # §15: the callee must not send BYE before its 2xx is ACKed (BYE_PENDING
        # waits for the ACK or its timeout).
        self._change(call, CallInput.HANGUP, now)
        return True

    def transfer(self, call_id: str, refer_to: str, now: float, *, referred_by: str | None = None) -> bool:
        """Ask the caller's phone to call ``refer_to`` instead (blind transfer, RFC 3515 §2.4.1).

        Sends REFER in the call's dialog; what becomes of it arrives as
        ``TransferUpdate`` events. False when the call is not established (or gone),
        or a transfer of it is still going.
        """
        call = self._calls.get(call_id)
        if call is None or call.state not in ESTABLISHED:
            return False
        if call.transfer is not None and not call.transfer.finished:
            return False
        transfer = Transfer(refer_to=refer_to, notify_due=now + self.settings.refer_notify_timeout,
                            result_due=now + self.settings.refer_result_timeout)
        call.transfer = transfer
        our_contact = self._contact(call)
        extra = [("Refer-To", f"<{refer_to}>" if not refer_to.startswith("<") else refer_to),
                 ("Referred-By", referred_by or our_contact), ("Contact", our_contact)]
        self._send(Outgoing(method="REFER", call=call, extra=extra, hop=self._dialog_hop(call)), now)
        self._arm_transfer(call)
        return True

    def start_registration(self, settings: RegistrationSettings, *, destination: tuple[str, int],
                           transport: str, now: float) -> None:
        """Register with the trunk's registrar at ``destination`` (an address) and keep it fresh."""
        if self._registration is not None:
            raise RuntimeError("a registration is already running")
        registration = Registration(settings, call_id=f"{self._token()}@{self.settings.host}",
                                    from_tag=self._token())
        self._registration = registration
        self._registration_hop = Hop(address=destination, transport=transport)
        if registration.start(now):
            self._send_register(now)
        self._registration_changed(now)

    def stop_registration(self, now: float) -> bool:
        """Unregister (Expires: 0, §10.2.2); True while that REGISTER is in flight."""
        registration = self._registration
        if registration is None:
            return False
        if registration.stop(now):
            self._send_register(now)
        self._registration_changed(now)
        return registration.state in (RegistrationState.UNREGISTER_PENDING, RegistrationState.UNREGISTERING)

    @property
    def registration(self) -> Registration | None:
        """Our registration with the trunk (None when the trunk is not registration-based)."""
        return self._registration

    # ---- the call lifecycle ------------------------------------------------------

    def _change(self, call: Call, event: CallInput, now: float) -> None:
        """Fire ``event`` on the call, then do what entering its new state means."""
        previous = call.state
        state = call.fire(event)
        if state not in LIVE and call.offer is not None:
            # §15.1.2: requests still pending when the session ends get 487.
            offer, call.offer = call.offer, None
            self._respond(offer.transaction, 487, now)
        if state not in AWAITING_ACK and call.ack is not None:
            call.ack = None
            self._deadlines.cancel((call, CallTimer.RETRANSMIT_2XX))
            self._deadlines.cancel((call, CallTimer.NO_ACK))
        if (previous in LIVE, previous in ESTABLISHED) != (state in LIVE, state in ESTABLISHED):
            self._arm_session(call)
        if previous not in OVER and state in OVER:
            self._events.append(CallEnded(call_id=call.call_id, reason=END_REASONS[event]))
            # A transfer dies with its call: no news of it for a call the shell closed.
            self._deadlines.cancel((call, CallTimer.TRANSFER_NOTIFY))
            self._deadlines.cancel((call, CallTimer.TRANSFER_RESULT))
        if state is CallState.ENDING and previous is not CallState.ENDING:
            self._send(Outgoing(method="BYE", call=call, hop=self._dialog_hop(call)), now)
        if state is CallState.ENDED:
            self._calls.pop(call.call_id, None)

    def _live_call(self, call_id: str, event: CallInput, action: str) -> Call | None:
        """The call the shell acts on with ``event``; None once it ended; CallStateError if misused."""
        call = self._calls.get(call_id)
        if call is None or call.state in OVER:
            return None
        if not call.allows(event):
            raise CallStateError(f"{action} on call {call_id} in state {call.state.value}")
        return call

    def _send_2xx(self, call: Call, tx: ServerTransaction, sdp: bytes, now: float) -> None:
        """Our 2xx to an INVITE or re-INVITE, retransmitted until its ACK (§13.3.1.4)."""
        extra = [("Record-Route", value) for value in tx.request.headers.get_all("Record-Route")]
        extra += self._session_headers(call)
        data = self._respond(tx, 200, now, to_tag=call.dialog.local_tag, extra=extra, body=sdp)
        call.ack = AwaitingAck(cseq=tx.request.cseq.number, data=data, carried_offer=not tx.request.body,
                               backoff=Backoff(now, self._timers.t1, self._timers.t2),
                               give_up_at=now + 64 * self._timers.t1)
        self._deadlines.schedule((call, CallTimer.RETRANSMIT_2XX), call.ack.backoff.due)
        self._deadlines.schedule((call, CallTimer.NO_ACK), call.ack.give_up_at)

    def _arm_session(self, call: Call) -> None:
        """Arm the session timers after a refresh or a change of state (RFC 4028 §10).

        Expiry runs while the session is LIVE; we refresh once it is ESTABLISHED,
        when we are the refresher and no refresh of ours is in flight.
        """
        timer = call.timer
        live = timer is not None and call.state in LIVE
        self._deadlines.schedule((call, CallTimer.SESSION_EXPIRY),
                                 timer.expiry_due(call.refreshed_at) if live else None)
        refresh = live and timer.we_refresh and call.state in ESTABLISHED and call.refresh is None
        self._deadlines.schedule((call, CallTimer.SESSION_REFRESH),
                                 timer.refresh_due(call.refreshed_at) if refresh else None)

    def _call_timers(self, call: Call, kinds: list[CallTimer | None], now: float) -> None:
        for kind in CallTimer:
            if kind not in kinds or self._calls.get(call.call_id) is not call:
                continue  # not due, or an earlier timer of this round ended the call
            if kind is CallTimer.NO_ACK and call.allows(CallInput.ACK_TIMEOUT):
                # §13.3.1.4: 64·T1 without an ACK: the session is over, say so with a BYE.
                self._change(call, CallInput.ACK_TIMEOUT, now)
            elif kind is CallTimer.RETRANSMIT_2XX and call.ack is not None:
                self._transmit(call.ack.data, call.invite.hop)
                call.ack.backoff.advance(now)
                self._deadlines.schedule((call, kind), call.ack.backoff.due)
            elif kind is CallTimer.SESSION_EXPIRY and call.allows(CallInput.EXPIRE):
                self._change(call, CallInput.EXPIRE, now)
            elif (kind is CallTimer.SESSION_REFRESH and call.state in ESTABLISHED and call.timer is not None
                  and call.refresh is None):
                extra = refresh_request_headers(call.timer) + [("Contact", self._contact(call))]
                call.refresh = self._send(Outgoing(method="UPDATE", call=call, extra=extra,
                                                   hop=self._dialog_hop(call)), now)
            elif kind is CallTimer.TRANSFER_NOTIFY and call.transfer is not None:
                self._transfer_input(call, TransferInput.NO_NOTIFY, None, "no NOTIFY after our REFER", now)
            elif kind is CallTimer.TRANSFER_RESULT and call.transfer is not None:
                self._transfer_input(call, TransferInput.NO_RESULT, None, "no final NOTIFY in time", now)

    def _transaction_timers(self, tx: ServerTransaction | ClientTransaction, now: float) -> None:
        for _ in range(3):  # timeout and retransmission may both be due
            deadline = tx.next_deadline()
            if deadline is None or deadline > now:
                break
            for data in tx.expire(now):
                self._transmit(data, tx.hop)
        if not tx.terminated:
            self._arm_transaction(tx)
        elif isinstance(tx, ClientTransaction):
            del self._client[tx.key]
            self._client_done(tx.key, tx, None, now)
        else:
            del self._server[tx.key]

    def _arm_transaction(self, tx: ServerTransaction | ClientTransaction) -> None:
        """Track the transaction's next timer; one outside the tables (stateless) runs none."""
        table = self._client if isinstance(tx, ClientTransaction) else self._server
        if table.get(tx.key) is tx:
            self._deadlines.schedule((tx, None), tx.next_deadline())

    # ---- inbound requests ------------------------------------------------------

    def _receive_request(self, request: Request, hop: Hop, source: tuple[str, int], now: float) -> None:
        key = server_key(request)
        tx = self._server.get(key)
        if tx is not None:
            if request.method != "ACK":
                resend = tx.receive_retransmission()
                if resend is not None:
                    self._transmit(resend, tx.hop)
                return
            if tx.state is not State.ACCEPTED:
                tx.receive_ack(now)  # timer I replaces timers G and H
                self._arm_transaction(tx)
                return
            # An ACK for a 2xx reusing the INVITE's branch (wrong per §17.1.1.3, but
            # seen in the wild) belongs to the dialog: fall through.
        if request.method == "ACK":
            self._receive_ack(request, now)
            return
        verdict, refusal = self._judge(request, source, now)
        if verdict is Verdict.DROP:
            self._refused(request.method, source, refusal, None, now)
            return
        if verdict is Verdict.FORBID:
            # §8.2.7: answered statelessly, never retransmitted (so a spoofed source gets
            # one 403 per request it is said to have sent); a retransmission is judged again.
            stateless = ServerTransaction(request=request, key=("stateless",), hop=hop, timers=self._timers)
            self._respond(stateless, 403, now, to_tag=self._token())
            self._refused(request.method, source, refusal, 403, now)
            return
        tx = ServerTransaction(request=request, key=key, hop=hop, timers=self._timers)
        self._server[key] = tx
        if verdict is Verdict.BUSY:
            self._busy(tx, source, refusal, now)
            return
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

    # ---- admission (admission.py) ----------------------------------------------------

    def _judge(self, request: Request, source: tuple[str, int], now: float) -> tuple[Verdict, Refusal | None]:
        """Admission of a new request: those of a call or INVITE we already have always pass."""
        admission = self._admission
        if admission is None:
            return Verdict.ADMIT, None
        initial_invite = request.method == "INVITE" and request.to.tag is None
        if not initial_invite and self._belongs_to_a_call(request):
            return Verdict.ADMIT, None
        return admission.judge(source[0], initial_invite=initial_invite, now=now)

    def _belongs_to_a_call(self, request: Request) -> bool:
        """An in-dialog request of one of our calls, or the CANCEL of an INVITE we took."""
        if request.method == "CANCEL":
            return server_key(request, method="INVITE") in self._server
        return request.to.tag is not None and self._in_dialog_call(request) is not None

    def _untrusted_garbage(self, error: SipParseError, source: tuple[str, int], now: float) -> bool:
        """True when an unparseable message came from a source we do not serve: dropped, counted.

        Whatever ``untrusted_action`` says, a stranger's garbage gets no answer: there
        is no call to keep going and no client to help.
        """
        admission = self._admission
        if (admission is None or admission.settings.untrusted_action is UntrustedAction.ACCEPT
                or admission.trusted(source[0])):
            return False
        self._refused("unparseable message", source, Refusal.UNTRUSTED, None, now)
        return True

    def _overloaded(self) -> Refusal | None:
        """Why a new call could not be taken now (unhealthy, at sip.max_calls), or None."""
        if self._health_problem is not None:
            return Refusal.UNHEALTHY
        if self._admission is not None and not self._admission.room_for_call(len(self._calls)):
            return Refusal.MAX_CALLS
        return None

    def _busy(self, tx: ServerTransaction, source: tuple[str, int], refusal: Refusal, now: float) -> None:
        """503 with Retry-After (RFC 3261 §21.5.4) for a request we cannot take now."""
        self._respond(tx, 503, now, to_tag=self._error_tag(tx.request),
                      extra=[("Retry-After", str(self.settings.busy_retry_after))])
        self._refused(tx.request.method, source, refusal, 503, now)

    def _refused(self, method: str, source: tuple[str, int], refusal: Refusal, status: int | None,
                 now: float) -> None:
        report = self._refusal_reports.note(refusal, now)
        self._events.append(RequestRefused(method=method, source=source, reason=refusal.value, status=status,
                                           report=report is not None,
                                           unreported=report.unreported if report is not None else 0))

    def _asserted_identity_trusted(self, source: tuple[str, int]) -> bool:
        """RFC 3325 §5, §8: a P-Asserted-Identity means something only from the Trust Domain."""
        return self._admission is None or self._admission.trusted(source[0])

    def _dispatch(self, request: Request, tx: ServerTransaction, source: tuple[str, int], now: float) -> None:
        method, headers = request.method, request.headers
        if method not in METHODS:
            self._refuse(tx, source, 501, now, f"method {method} is not implemented", extra=[("Allow", ALLOW)])
            return
        unsupported = [option for option in parse_token_list(headers.get_all("Require"), "Require")
                       if option.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            # §8.2.2.3: list what we lack so the UAC can retry without it.
            self._refuse(tx, source, 420, now, f"Require {', '.join(unsupported)} is not supported",
                         extra=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to.tag is not None:
            self._dispatch_in_dialog(request, tx, source, now)
        elif method == "INVITE":
            self._receive_invite(request, tx, source, now)
        elif method == "OPTIONS":
            self._answer_options(request, tx, now)
        else:
            # §15.1.2 for BYE; UPDATE, INFO and NOTIFY (RFC 6665 §4.1.3: no
            # subscription of ours exists outside a call) likewise need a dialog.
            self._refuse(tx, source, 481, now, f"{method} outside a dialog")

    def _answer_options(self, request: Request, tx: ServerTransaction, now: float, *, in_dialog: bool = False) -> None:
        if not self._accepting:
            self._respond(tx, 503, now, to_tag=self._error_tag(request),
                          extra=[("Retry-After", str(self._retry_after))])
            return
        if not in_dialog and self._overloaded() is not None:
            # The OPTIONS a trunk or a Kamailio dispatcher probes with (RFC 3261 §11.2: a
            # UAS answers OPTIONS as it would an INVITE): 503 while no new call could be
            # taken, so the node leaves the rotation. Not counted as a refusal: it is the
            # truth about the server, asked for. Within a call the call itself is fine.
            self._respond(tx, 503, now, to_tag=self._error_tag(request),
                          extra=[("Retry-After", str(self.settings.busy_retry_after))])
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
        call_id = request.call_id
        if call_id in self._calls:
            # §8.2.2.2: the same request reached us by another path (merged), or a
            # second call reuses a Call-ID we are still serving.
            self._refuse(tx, source, 482, now, "initial INVITE for a Call-ID already in a call")
            return
        if not self._accepting:
            self._refuse(tx, source, 503, now, "draining: not accepting calls",
                         extra=[("Retry-After", str(self._retry_after))])
            return
        overload = self._overloaded()
        if overload is not None:
            self._busy(tx, source, overload, now)
            return
        timer = self._check_offer(request, tx, source, now)
        if timer is False:
            return
        dialog = Dialog.from_invite(request, local_tag=self._token(), local_cseq=0)
        self._calls[call_id] = Call(call_id=call_id, invite=tx, dialog=dialog, timer=timer)
        self._respond(tx, 100, now)
        self._events.append(IncomingCall(call_id=call_id, request=request, offer=request.body or None,
                                         caller=_caller_identity(request, self._asserted_identity_trusted(source)),
                                         source=source, transport=tx.hop.transport))

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
        call = self._calls.get(invite_tx.request.call_id)
        self._respond(tx, 200, now, to_tag=call.dialog.local_tag if call is not None else self._token())
        if invite_tx.state is not State.PROCEEDING or call is None:
            return
        if call.invite is invite_tx and call.state is CallState.OFFERED:
            self._respond(invite_tx, 487, now, to_tag=call.dialog.local_tag)
            self._change(call, CallInput.CANCEL, now)
        elif call.offer is not None and call.offer.transaction is invite_tx:
            call.offer = None
            self._respond(invite_tx, 487, now)

    def _receive_ack(self, request: Request, now: float) -> None:
        """An ACK for a 2xx: a transaction of its own (§17.1.1.3), matched to the dialog."""
        call = self._in_dialog_call(request)
        ack = call.ack if call is not None else None
        if ack is None or request.cseq.number != ack.cseq:
            return  # a late or stray ACK: never answered (§17)
        previous = call.state
        self._change(call, CallInput.ACK, now)
        # The shell hears of the initial ACK, and of any ACK that brings the answer
        # to the offer our 2xx made (§13.2.1), unless the call already ended for it.
        if call.state is CallState.CONFIRMED and (previous is CallState.ANSWERED or ack.carried_offer):
            answer = (request.body or None) if ack.carried_offer else None
            self._events.append(CallConfirmed(call_id=call.call_id, answer=answer))

    def _in_dialog_call(self, request: Request) -> Call | None:
        call = self._calls.get(request.call_id)
        if call is None or call.state is CallState.OFFERED:
            return None
        if request.to.tag != call.dialog.local_tag or not call.dialog.matches(request):
            return None
        return call

    def _dispatch_in_dialog(self, request: Request, tx: ServerTransaction, source: tuple[str, int],
                            now: float) -> None:
        call = self._in_dialog_call(request)
        method = request.method
        if call is None or (call.state in OVER and method != "BYE"):
            self._refuse(tx, source, 481, now, f"in-dialog {method} matches no dialog")
            return
        number = request.cseq.number
        if number < call.dialog.remote_cseq:
            # §12.2.2: lower than the last one is out of order (equal ones that are
            # retransmissions were absorbed by their transaction already).
            self._refuse(tx, source, 500, now, f"CSeq {number} is below {call.dialog.remote_cseq}",
                         reason="CSeq Out Of Order")
            return
        call.dialog.remote_cseq = number
        if method == "BYE":
            self._respond(tx, 200, now)
            self._change(call, CallInput.REMOTE_BYE, now)
        elif method == "OPTIONS":
            self._answer_options(request, tx, now, in_dialog=True)
        elif method == "INFO":
            self._receive_info(call, request, tx, now)
        elif method == "NOTIFY":
            self._receive_notify(call, request, tx, source, now)
        else:  # INVITE or UPDATE: ACK and CANCEL never get here
            self._receive_modification(call, request, tx, source, now)

    def _receive_modification(self, call: Call, request: Request, tx: ServerTransaction,
                              source: tuple[str, int], now: float) -> None:
        is_invite = request.method == "INVITE"
        busy = call.offer is not None or (is_invite and call.state not in ESTABLISHED)
        if not is_invite and request.body and call.ack is not None and call.ack.carried_offer:
            # RFC 3311 §5.2: our 2xx carried an offer whose answer (in the ACK) has not
            # come: "the UAS MUST reject the UPDATE with a 491 response".
            self._refuse(tx, source, 491, now, "UPDATE with an offer while our offer awaits its answer",
                         reason="Request Pending", extra=[("Retry-After", str(self._rng.randint(0, 10)))])
            return
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
            self._arm_session(call)
            return
        if is_invite:
            self._respond(tx, 100, now)
        call.offer = PendingOffer(transaction=tx, timer=timer)
        self._events.append(SessionModified(call_id=call.call_id, offer=request.body or None))

    def _receive_info(self, call: Call, request: Request, tx: ServerTransaction, now: float) -> None:
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

    def _receive_notify(self, call: Call, request: Request, tx: ServerTransaction, source: tuple[str, int],
                        now: float) -> None:
        """A NOTIFY of the implicit subscription our REFER made (RFC 3515 §2.4.4-2.4.6)."""
        headers = request.headers
        event = headers.get("Event")
        if event is None:
            self._refuse(tx, source, 489, now, "NOTIFY without an Event header", reason="Bad Event")
            return
        package, event_parameters = parse_token_with_parameters(event, "Event")
        if package != "refer":
            # RFC 6665 §8.3.2: an event package we never subscribed to.
            self._refuse(tx, source, 489, now, f"NOTIFY for event package {package!r}", reason="Bad Event",
                         extra=[("Allow-Events", "refer")])
            return
        transfer = call.transfer
        event_id = parameter(event_parameters, "id")
        if transfer is None or (event_id is not None and event_id != str(transfer.refer_cseq)):
            # RFC 6665 §4.1.3: a NOTIFY matching no subscription of ours.
            self._refuse(tx, source, 481, now, "NOTIFY matches no REFER of ours",
                         reason="Subscription Does Not Exist")
            return
        content_type = headers.get("Content-Type")
        media = parse_media_type(content_type)[0] if content_type else None
        if media != "message/sipfrag":
            self._refuse(tx, source, 415, now, f"refer NOTIFY body of type {media or 'none'} is not message/sipfrag",
                         extra=[("Accept", "message/sipfrag")])
            return
        status, phrase = parse_sipfrag_status_untrusted(request.body)  # SipParseError -> 400
        state_value = headers.get("Subscription-State")
        terminated = (state_value is not None
                      and parse_token_with_parameters(state_value, "Subscription-State")[0] == "terminated")
        self._respond(tx, 200, now)
        if status < 200:
            event_input = TransferInput.NOTIFY_PROGRESS
        elif status < 300:
            event_input = TransferInput.NOTIFY_SUCCESS
        else:
            event_input = TransferInput.NOTIFY_FAILURE
        self._transfer_input(call, event_input, status, f"technician side: {status} {phrase}".strip(), now)
        if terminated:
            transfer.subscribed = False
            if not transfer.finished:
                self._transfer_input(call, TransferInput.SUBSCRIPTION_ENDED, None,
                                     "subscription terminated without a final status", now)

    def _transfer_input(self, call: Call, event: TransferInput, status: int | None, reason: str, now: float) -> None:
        """Feed the call's transfer; tell the shell when its state or status changed."""
        transfer = call.transfer
        if transfer is None or call.state in OVER or not transfer.allows(event):
            return  # late or stray news about a transfer (or a call) that no longer takes it
        before = (transfer.state, transfer.status)
        transfer.fire(event, status=status, reason=reason)
        self._arm_transfer(call)
        if (transfer.state, transfer.status) != before or event in (TransferInput.NO_NOTIFY, TransferInput.NO_RESULT):
            self._events.append(TransferUpdate(call_id=call.call_id, state=transfer.state.value,
                                               status=transfer.status, reason=transfer.reason))

    def _arm_transfer(self, call: Call) -> None:
        transfer = call.transfer
        self._deadlines.schedule((call, CallTimer.TRANSFER_NOTIFY), transfer.notify_due if transfer else None)
        self._deadlines.schedule((call, CallTimer.TRANSFER_RESULT), transfer.result_due if transfer else None)

    # ---- our requests and their responses ------------------------------------------

    def _dialog_hop(self, call: Call) -> Hop:
        """Where an in-dialog request goes: the first route, else the remote target (§12.2.1.1)."""
        target = call.dialog.next_hop()
        hop = call.invite.hop
        # RFC 3263 §4.2: 5061 is the default port of TLS, whether asked by sips: or transport=tls.
        port = target.port or (5061 if target.scheme == "sips" or hop.transport == "tls" else 5060)
        # Over a stream the request goes over the INVITE's connection while it lives,
        # else over one with the same peer, else a new one (the transport: RFC 5923 §4).
        return Hop(address=(target.host.strip("[]"), port), transport=hop.transport, connection=hop.connection)

    def _send(self, outgoing: Outgoing, now: float, authorization: list[tuple[str, str]] = ()) -> tuple[str, str]:
        """Send ``outgoing`` (§12.2.1 in a dialog, §10.2 a REGISTER) in a new client transaction; its key.

        Each send is a new request: a new branch, and the next CSeq of its dialog or
        registration (§22.2: a request re-sent with credentials is a new request).
        """
        hop = outgoing.hop
        branch = MAGIC_COOKIE + self._token()
        via = Via(transport=hop.transport.upper(), host=self.settings.host,
                  port=self.settings.port_for(hop.transport), parameters=(("branch", branch), ("rport", None)))
        extra = list(outgoing.extra)
        if outgoing.registration is not None:
            request = outgoing.registration.build_request(via=via, extra_headers=extra + list(authorization))
        else:
            request = outgoing.call.dialog.build_request(outgoing.method, via=via,
                                                         extra_headers=extra + list(authorization))
        if not authorization and self._digest is not None:
            # RFC 7616 §3.4: a nonce the server gave may be reused (nc + 1) on the next request.
            preauthorized = self._digest.preauthorize(method=outgoing.method, uri=request.uri, body=request.body)
            if preauthorized:
                request = attrs.evolve(request, headers=request.headers.with_added(preauthorized))
        if outgoing.method == "REFER" and outgoing.call is not None and outgoing.call.transfer is not None:
            outgoing.call.transfer.refer_cseq = outgoing.call.dialog.local_cseq
        key = client_key(branch, outgoing.method)
        tx = ClientTransaction(request=request, key=key, hop=hop, timers=self._timers, now=now)
        self._client[key] = tx
        self._client_purpose[key] = outgoing
        if outgoing.method == "REFER" and outgoing.call is not None and outgoing.call.transfer is not None:
            outgoing.call.transfer.refer_key = key
        self._transmit(tx.last_message or b"", hop)
        self._arm_transaction(tx)
        return key

    def _receive_response(self, response: Response, source: tuple[str, int], now: float) -> None:
        cseq = response.cseq
        key = client_key(response.vias[0].branch or "", cseq.method)
        tx = self._client.get(key)
        if tx is None:
            self._events.append(MessageRejected(
                description=f"response {response.status} to {cseq.method} matches no transaction; dropped",
                source=source, status=None))
            return
        if tx.receive_response(response.status, now):
            self._client_done(key, tx, response, now)
        self._arm_transaction(tx)

    def _client_done(self, key: tuple, tx: ClientTransaction, response: Response | None, now: float) -> None:
        """One of our requests got its final response (or timed out when ``response`` is None)."""
        outgoing = self._client_purpose.get(key)
        if tx.terminated:
            self._client_purpose.pop(key, None)
        if outgoing is None or (response is None and not tx.timed_out):
            return
        self._client_purpose.pop(key, None)
        if response is not None and response.status in (401, 407) and self._authorize(outgoing, tx, response, now):
            return  # sent again with credentials: the new request's response decides
        if outgoing.registration is not None:
            self._registration_done(outgoing.registration, response, now)
            return
        call = outgoing.call
        if self._calls.get(call.call_id) is not call:
            return
        if outgoing.method == "BYE":
            self._change(call, CallInput.BYE_DONE, now)
        elif outgoing.method == "REFER":
            self._refer_done(call, key, response, now)
        else:
            self._update_done(call, response, tx, now)

    def _authorize(self, outgoing: Outgoing, tx: ClientTransaction, response: Response, now: float) -> bool:
        """Answer a 401/407 with credentials (RFC 3261 §22.2, RFC 8760); False when we cannot.

        The digest client refuses to answer the same nonce twice unless it is stale,
        so wrong credentials end in the refusal instead of a loop.
        """
        if self._digest is None:
            return False
        proxy = response.status == 407
        values = response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            challenges = parse_challenges_untrusted(values, proxy=proxy)
        except DigestError as error:
            self._events.append(MessageRejected(description=f"{response.status} to our {outgoing.method}: {error}",
                                                source=tx.hop.address, status=None))
            return False
        header = self._digest.answer(challenges, method=outgoing.method, uri=tx.request.uri, body=tx.request.body)
        if header is None:
            return False
        # Credentials for a proxy and for the registrar may both be asked: keep earlier ones.
        kept = [(name, value) for name, value in tx.request.headers
                if name in ("Authorization", "Proxy-Authorization") and name != header[0]]
        key = self._send(outgoing, now, authorization=kept + [header])
        if outgoing.method == "UPDATE" and outgoing.call is not None:
            outgoing.call.refresh = key
        return True

    def _refer_done(self, call: Call, key: tuple, response: Response | None, now: float) -> None:
        transfer = call.transfer
        if transfer is None or transfer.refer_key != key:
            return
        transfer.refer_key = None
        if response is not None and 200 <= response.status < 300:
            self._transfer_input(call, TransferInput.REFER_ACCEPTED, response.status, "REFER accepted", now)
            return
        status = response.status if response is not None else None
        why = f"REFER refused: {response.status} {response.reason}" if response is not None else "REFER timed out"
        self._transfer_input(call, TransferInput.REFER_REFUSED, status, why, now)

    def _update_done(self, call: Call, response: Response | None, tx: ClientTransaction, now: float) -> None:
        """Our refresh UPDATE's outcome (RFC 4028 §10)."""
        call.refresh = None
        if response is not None and 200 <= response.status < 300 and call.timer is not None:
            try:
                call.timer = adopt_refresh_response(call.timer, response.headers)
            except SipParseError as error:
                self._events.append(MessageRejected(description=f"2xx to our UPDATE: {error.reason}",
                                                    source=tx.hop.address, status=None))
            call.refreshed_at = now
        elif (response is None or response.status in (408, 481)) and call.allows(CallInput.REFRESH_FAILED):
            # RFC 4028 §10: a refresh that times out or gets 408/481 ends the session.
            self._change(call, CallInput.REFRESH_FAILED, now)
            return
        self._arm_session(call)

    # ---- our registration ----------------------------------------------------------

    def _send_register(self, now: float) -> None:
        self._send(Outgoing(method="REGISTER", registration=self._registration, hop=self._registration_hop), now)

    def _registration_done(self, registration: Registration, response: Response | None, now: float) -> None:
        if registration is not self._registration or not registration.awaiting_response:
            return
        if response is None:
            send = registration.receive_final(status=408, headers=None, now=now)
        else:
            send = registration.receive_final(status=response.status, headers=response.headers, now=now)
        if send:
            self._send_register(now)
        self._registration_changed(now)

    def _registration_timer(self, registration: Registration, now: float) -> None:
        if registration is not self._registration:
            return
        if registration.handle_timer(now):
            self._send_register(now)
        self._registration_changed(now)

    def _registration_changed(self, now: float) -> None:
        """Re-arm the registration's deadline; tell the shell when its state changed."""
        registration = self._registration
        self._deadlines.schedule((registration, None), registration.next_deadline())
        status = registration.status
        reported = (status.state, status.registered, status.last_status, status.failures)
        if reported != self._registration_reported:
            self._registration_reported = reported
            self._events.append(RegistrationChanged(state=status.state.value, registered=status.registered,
                                                    last_status=status.last_status,
                                                    summary=registration.describe(now)))

    # ---- building and sending ----------------------------------------------------

    def _session_headers(self, call: Call) -> list[tuple[str, str]]:
        return session_headers(self._contact(call), call.timer)

    def _contact(self, call: Call) -> str:
        """Our Contact in ``call``'s dialog: for its transport, a sips: URI when the dialog is secure.

        §12.1.1: a dialog begun by a request with a SIPS Request-URI over TLS is
        secure, and the Contact of our response "MUST be a SIPS URI".
        """
        transport = call.invite.hop.transport
        sips = transport == "tls" and call.invite.request.uri[:5].lower() == "sips:"
        return contact(self.settings.contact_user, self.settings.host, self.settings.port_for(transport), transport,
                       sips=sips)

    def _respond(self, tx: ServerTransaction, status: int, now: float, *, reason: str | None = None,
                 to_tag: str | None = None, extra: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
        """Build the response to ``tx``'s request (§8.2.6), send it, and hand it to the transaction."""
        response = build_response(tx.request, status, hop=tx.hop, server=self.settings.user_agent, reason=reason,
                                  to_tag=to_tag, extra=extra, body=body)
        data = bytes(response)
        tx.respond(status, data, now)
        self._transmit(data, tx.hop)
        self._arm_transaction(tx)
        return data

    def _transmit(self, data: bytes, hop: Hop) -> None:
        self._events.append(Transmit(data=data, destination=hop.address, transport=hop.transport,
                                     connection=hop.connection))

    # ---- helpers ---------------------------------------------------------------------

    def _token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _error_tag(self, request: Request) -> str:
        """The To tag for a response outside any call: the call's if one exists, else fresh."""
        call = self._calls.get(request.call_id)
        if call is not None and call.invite.request is request:
            return call.dialog.local_tag
        return self._token()

    def _response_hop(self, request: Request, source: tuple[str, int], transport: str, connection: Any) -> Hop:
        """Where responses go (§18.2.2, RFC 3581 §4)."""
        via = request.vias[0]
        if transport != "udp":
            return Hop(address=source, transport=transport, connection=connection)
        if via.rport is not False:
            return Hop(address=source, transport=transport)
        return Hop(address=(source[0], via.port or 5060), transport=transport)

    def _reject_unparsed(self, error: SipParseError, source: tuple[str, int], transport: str,
                         connection: Any) -> None:
        request = error.request
        status = None
        # §8.2.6.2: a response copies From, To, Call-ID and CSeq and is routed by the
        # top Via; without them it is no SIP message at all (§8.1.1) and could match
        # nothing on the client. The To must parse, for our tag goes into it.
        addressable = (isinstance(request, Request) and request.method != "ACK" and request.vias
                       and request.to is not None
                       and all((request.headers.get(name) or "").strip() for name in ("From", "Call-ID", "CSeq")))
        if addressable:
            hop = self._response_hop(request, source, transport, connection)
            tx = ServerTransaction(request=request, key=("stateless",), hop=hop, timers=self._timers)
            self._respond(tx, error.status, 0.0, reason=error.reason, to_tag=self._token())
            status = error.status
        self._events.append(MessageRejected(description=f"unparseable message: {error.reason}",
                                            source=source, status=status))

    def _refuse(self, tx: ServerTransaction, source: tuple[str, int], status: int, now: float, why: str, *,
                extra: list[tuple[str, str]] = (), reason: str | None = None) -> None:
        """Answer ``tx`` with an error ``status`` and log ``why`` in a MessageRejected event."""
        self._respond(tx, status, now, reason=reason, to_tag=self._error_tag(tx.request), extra=list(extra))
        self._rejected(tx.request, source, why, status)

    def _rejected(self, request: Request, source: tuple[str, int], reason: str, status: int | None) -> None:
        self._events.append(MessageRejected(description=f"{request.method} (Call-ID {request.call_id}): {reason}",
                                            source=source, status=status))


def _with_warning(headers: Iterable[tuple[str, str]], warning: SipWarning | None) -> list[tuple[str, str]]:
    return [*headers, ("Warning", str(warning))] if warning is not None else list(headers)


# RFC 3323 §4.2 privacy values that hide who calls ("session" and "critical" do not).
_IDENTITY_PRIVACY = frozenset({"id", "user", "header"})


def _caller_identity(request: Request, asserted_trusted: bool) -> CallerIdentity:
    """Who calls: From, and P-Asserted-Identity only when it came from a trusted source.

    RFC 3325 §5 and §8: an asserted identity is worth what the node that asserted it
    is; from outside the Trust Domain it is ignored, and the caller is who From says.
    """
    caller = request.from_
    asserted_uri = asserted_user = None
    for value in request.headers.get_all("P-Asserted-Identity") if asserted_trusted else ():
        try:
            asserted = parse_name_addr_list([value], "P-Asserted-Identity")
        except SipParseError:
            continue  # informational only (RFC 3325): an unreadable one is ignored
        if asserted:
            asserted_uri, asserted_user = str(asserted[0].uri), asserted[0].uri.user
            break
    return CallerIdentity(from_uri=str(caller.uri), from_user=caller.uri.user, display_name=caller.display_name,
                          asserted_uri=asserted_uri, asserted_user=asserted_user,
                          withheld=_privacy_requested(request.headers.get_all("Privacy")))


def _privacy_requested(values: list[str]) -> bool:
    """Whether ``Privacy`` asks to hide who calls (RFC 3323 §4.2: ``priv-value *(";" priv-value)``).

    Read leniently (commas too, any case): the header only ever makes us more careful.
    """
    return any(word.strip().lower() in _IDENTITY_PRIVACY
               for value in values for word in value.replace(",", ";").split(";"))


def _parse_dtmf(media: str, body: bytes) -> tuple[str, int | None]:
    """The INFO's digit, by the one DTMF body parser (media/dtmf.py); 400 when it is bad."""
    try:
        return parse_info_dtmf_untrusted(media, body)
    except DtmfError as error:
        raise SipParseError(400, f"bad {media} body: {error}") from None
