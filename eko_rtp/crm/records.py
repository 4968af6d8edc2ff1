"""What the CRM tells us about a caller, and what we tell it about a call.

The CRM is another team's service: its replies are untrusted input. Values here are
validated in their constructors, and :func:`parse_caller_untrusted` turns a decoded
``crm.lookup_caller`` result into a :class:`CallerRecord` or raises
:class:`CrmReplyError` (and nothing else), so a wrong type in a reply costs one
lookup, never a call or a server task. Unknown extra keys are ignored so the CRM
can grow its schema without breaking us (docs/crm-rpc.md lists the required keys).

The other direction is untrusted too, for the embedded CRM: what a client sends
(``crm.log_call``, ``crm.create_ticket``, ``crm.request_callback``) is parsed by the
``parse_*_untrusted`` functions below, which raise only :class:`CrmReplyError` with a
message naming the field; the server answers it as "invalid params".
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import attrs

from eko_rtp.crm.errors import CrmReplyError
from eko_rtp.crm.rpc import describe_untrusted

MAX_TEXT = 256
MAX_TICKETS = 100
# What a caller said about their problem (an ASR transcript): a few sentences.
MAX_REASON = 2000
MAX_TOKEN = 32

# A short machine word: a script outcome, a ticket category, a callback queue.
_TOKEN = re.compile(rf"[a-z][a-z_]{{0,{MAX_TOKEN - 1}}}")
# E.164 (ITU-T E.164 section 6: at most 15 digits); eko_rtp.crm.phone gives no fewer than 8.
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{where} is longer than {MAX_TEXT} characters")
    return value


def is_word(value: object) -> bool:
    """Whether ``value`` is a short machine word a script outcome, category or queue may be."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _token(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{where} must be a lowercase word of a-z and _ ({MAX_TOKEN} characters at most), got {value[:40]!r}"
        )
    return value


def _phone(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if not _E164.fullmatch(value):
        raise ValueError(f"{where} must be an E.164 number (+ and 8 to 15 digits), got {value[:40]!r}")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"reason must be a string, got {type(value).__name__}")
    if len(value) > MAX_REASON:
        raise ValueError(f"reason is longer than {MAX_REASON} characters")
    return value


def _moment(value: object, where: str) -> datetime.datetime:
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        raise ValueError(f"{where} must be an aware datetime, got {value!r}")
    try:
        # to_wire() writes it in UTC: 0001-01-01T00:00+01:00 is a valid datetime whose
        # UTC time is before year 1, and would raise OverflowError there instead.
        value.astimezone(datetime.timezone.utc)
    except OverflowError:
        raise ValueError(f"{where} {value.isoformat()} is out of range in UTC") from None
    return value


def _utc_text(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat()


def parse_timestamp(text: str, where: str) -> datetime.datetime:
    """Parse an ISO-8601 timestamp; a naive one is taken as UTC so all compare."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where} is not an ISO-8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


@attrs.frozen(kw_only=True)
class Ticket:
    """One open support ticket of a caller."""

    id: str
    problem_type: str  # "internet", "mobile" or any other string the CRM uses
    status: str
    opened_at: datetime.datetime  # always timezone-aware

    def __attrs_post_init__(self) -> None:
        _text(self.id, "ticket id")
        if not self.id:
            raise ValueError("ticket id must not be empty")
        _text(self.problem_type, "ticket problem_type")
        _text(self.status, "ticket status")
        if not isinstance(self.opened_at, datetime.datetime) or self.opened_at.tzinfo is None:
            raise ValueError(f"ticket opened_at must be an aware datetime, got {self.opened_at!r}")


@attrs.frozen(kw_only=True)
class CallerRecord:
    """A known caller, as the CRM knows them."""

    client_id: str
    name: str = ""
    calls_count: int = 0
    open_tickets: tuple[Ticket, ...] = ()

    def __attrs_post_init__(self) -> None:
        _text(self.client_id, "client_id")
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        _text(self.name, "name")
        if type(self.calls_count) is not int or self.calls_count < 0:
            raise ValueError(f"calls_count must be a non-negative int, got {self.calls_count!r}")
        if not isinstance(self.open_tickets, tuple) or not all(isinstance(t, Ticket) for t in self.open_tickets):
            raise ValueError("open_tickets must be a tuple of Ticket")
        if len(self.open_tickets) > MAX_TICKETS:
            raise ValueError(f"more than {MAX_TICKETS} open tickets")

    def to_wire(self) -> dict[str, Any]:
        """The ``crm.lookup_caller`` result map for this record."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "calls_count": self.calls_count,
            "open_tickets": [
                {"id": t.id, "problem_type": t.problem_type, "status": t.status, "opened_at": t.opened_at.isoformat()}
                for t in self.open_tickets
            ],
        }


def _ticket_untrusted(obj: object, index: int) -> Ticket:
    where = f"open_tickets[{index}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a map, got {type(obj).__name__}")
    for key in ("id", "problem_type", "opened_at"):
        if key not in obj:
            raise ValueError(f"{where} lacks required key {key!r}")
    opened_at = parse_timestamp(_text(obj["opened_at"], f"{where}.opened_at"), f"{where}.opened_at")
    return Ticket(
        id=_text(obj["id"], f"{where}.id"),
        problem_type=_text(obj["problem_type"], f"{where}.problem_type"),
        status=_text(obj.get("status", "open"), f"{where}.status"),
        opened_at=opened_at,
    )


def parse_caller_untrusted(obj: object) -> CallerRecord | None:
    """A ``crm.lookup_caller`` result as a record (None for nil); raises only CrmReplyError."""
    if obj is None:
        return None
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"result must be nil or a map, got {type(obj).__name__}")
        if "client_id" not in obj:
            raise ValueError("result lacks required key 'client_id'")
        tickets = obj.get("open_tickets", [])
        if not isinstance(tickets, list):
            raise ValueError(f"open_tickets must be an array, got {type(tickets).__name__}")
        if len(tickets) > MAX_TICKETS:
            raise ValueError(f"open_tickets has {len(tickets)} entries (at most {MAX_TICKETS})")
        calls_count = obj.get("calls_count", 0)
        if type(calls_count) is not int:
            raise ValueError(f"calls_count must be an int, got {type(calls_count).__name__}")
        return CallerRecord(
            client_id=_text(obj["client_id"], "client_id"),
            name=_text(obj.get("name", ""), "name"),
            calls_count=calls_count,
            open_tickets=tuple(_ticket_untrusted(t, i) for i, t in enumerate(tickets)),
        )
    except ValueError as error:
        raise CrmReplyError(f"bad crm.lookup_caller reply: {error}") from None


@attrs.frozen(kw_only=True)
class CallLog:
    """What the ``crm.log_call`` notification reports at the end of a call."""

    call_id: str
    phone: str | None  # E.164, or None for an anonymous caller
    greeting: tuple[str, ...]  # the phrase keys played as the greeting
    duration_ms: int
    outcome: str  # how the SIP side ended: "remote_bye", "local_bye", "rejected"...
    # The call's audio (eko_rtp.media.quality): None where nothing was measured.
    loss_ratio: float | None = None  # of the caller's packets, 0..1
    jitter_ms: float | None = None  # of the caller's packets as they reached us (RFC 3550 A.8)
    rtt_ms: float | None = None  # round trip from the caller's RTCP (RFC 3550 §6.4.1)
    # How the call's script ended ("transferred", "callback_offered", "no_input"...;
    # docs/crm-rpc.md lists them): a lowercase word, None where no script said.
    script_outcome: str | None = None

    def __attrs_post_init__(self) -> None:
        _text(self.call_id, "call_id")
        if self.phone is not None:
            _text(self.phone, "phone")
        if not isinstance(self.greeting, tuple) or not all(isinstance(k, str) and k for k in self.greeting):
            raise ValueError(f"greeting must be a tuple of phrase keys, got {self.greeting!r}")
        if type(self.duration_ms) is not int or self.duration_ms < 0:
            raise ValueError(f"duration_ms must be a non-negative int, got {describe_untrusted(self.duration_ms)}")
        _text(self.outcome, "outcome")
        for name in QUALITY_KEYS:
            _measure(getattr(self, name), name)
        if self.script_outcome is not None:
            _token(self.script_outcome, "script_outcome")

    def to_wire(self) -> dict[str, Any]:
        """The single ``crm.log_call`` parameter (greeting keys joined with "+")."""
        wire = {
            "call_id": self.call_id,
            "phone": self.phone,
            "greeting": "+".join(self.greeting),
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
        }
        for name in QUALITY_KEYS:
            wire[name] = getattr(self, name)
        wire["script_outcome"] = self.script_outcome
        return wire


QUALITY_KEYS = ("loss_ratio", "jitter_ms", "rtt_ms")


def _measure(value: object, where: str) -> None:
    """A quality figure: nil, or a finite non-negative number (1e6 at most: a bound, not a fact)."""
    if value is None:
        return
    if type(value) not in (int, float) or not 0 <= value <= 1e6:
        raise ValueError(f"{where} must be nil or a number from 0 to 1e6, got {describe_untrusted(value)}")


def parse_call_log_untrusted(obj: object) -> CallLog:
    """The ``crm.log_call`` parameter map as a :class:`CallLog`; raises only CrmReplyError."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"call log must be a map, got {type(obj).__name__}")
        for key in ("call_id", "phone", "greeting", "duration_ms", "outcome"):
            if key not in obj:
                raise ValueError(f"call log lacks required key {key!r}")
        greeting = _text(obj["greeting"], "greeting")
        return CallLog(
            call_id=obj["call_id"],
            phone=obj["phone"],
            greeting=tuple(greeting.split("+")) if greeting else (),
            duration_ms=obj["duration_ms"],
            outcome=obj["outcome"],
            # Optional: a CRM client older than the quality figures or the script
            # outcome does not send them.
            **{name: obj.get(name) for name in QUALITY_KEYS},
            script_outcome=obj.get("script_outcome"),
        )
    except ValueError as error:
        raise CrmReplyError(f"bad crm.log_call notification: {error}") from None


@attrs.frozen(kw_only=True)
class TicketRequest:
    """A ``crm.create_ticket`` request: a technician is to look at the caller's problem."""

    call_id: str  # the SIP Call-ID; the CRM makes one ticket per call_id (idempotent)
    phone: str | None  # E.164, or None for an anonymous caller
    reason: str  # the caller's own words, as transcribed; may be empty
    category: str  # "internet", "mobile", "tv", "billing", "other" or another lowercase word
    created_at: datetime.datetime  # aware; when the caller asked

    def __attrs_post_init__(self) -> None:
        _call_id(self.call_id)
        if self.phone is not None:
            _phone(self.phone, "phone")
        _reason(self.reason)
        _token(self.category, "category")
        _moment(self.created_at, "created_at")

    def to_wire(self) -> dict[str, Any]:
        """The single ``crm.create_ticket`` parameter."""
        return {
            "call_id": self.call_id,
            "phone": self.phone,
            "reason": self.reason,
            "category": self.category,
            "created_at": _utc_text(self.created_at),
        }


@attrs.frozen(kw_only=True)
class CallbackRequest:
    """A ``crm.request_callback`` request: someone from ``queue`` is to call the caller back."""

    call_id: str  # the SIP Call-ID; the CRM makes one callback per call_id (idempotent)
    phone: str  # E.164: a callback needs a number, so an anonymous caller cannot have one
    reason: str  # the caller's own words, as transcribed; may be empty
    not_before: datetime.datetime | None  # aware; None: as soon as the service is open
    queue: str  # which team calls back: a lowercase word ("technicians", "billing")

    def __attrs_post_init__(self) -> None:
        _call_id(self.call_id)
        _phone(self.phone, "phone")
        _reason(self.reason)
        if self.not_before is not None:
            _moment(self.not_before, "not_before")
        _token(self.queue, "queue")

    def to_wire(self) -> dict[str, Any]:
        """The single ``crm.request_callback`` parameter."""
        return {
            "call_id": self.call_id,
            "phone": self.phone,
            "reason": self.reason,
            "not_before": None if self.not_before is None else _utc_text(self.not_before),
            "queue": self.queue,
        }


def _call_id(value: object) -> str:
    text = _text(value, "call_id")
    if not text:
        raise ValueError("call_id must not be empty")
    return text


def _required(obj: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a map, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise ValueError(f"{what} lacks required key {key!r}")
    return obj


def _timestamp_untrusted(value: object, where: str) -> datetime.datetime:
    return parse_timestamp(_text(value, where), where)


def parse_ticket_request_untrusted(obj: object) -> TicketRequest:
    """The ``crm.create_ticket`` parameter map as a :class:`TicketRequest`; raises only CrmReplyError."""
    try:
        wire = _required(obj, ("call_id", "phone", "reason", "category", "created_at"), "ticket")
        return TicketRequest(
            call_id=wire["call_id"],
            phone=wire["phone"],
            reason=wire["reason"],
            category=wire["category"],
            created_at=_timestamp_untrusted(wire["created_at"], "created_at"),
        )
    except ValueError as error:
        raise CrmReplyError(f"bad crm.create_ticket params: {error}") from None


def parse_callback_request_untrusted(obj: object) -> CallbackRequest:
    """The ``crm.request_callback`` parameter map as a :class:`CallbackRequest`; raises only CrmReplyError."""
    try:
        wire = _required(obj, ("call_id", "phone", "reason", "not_before", "queue"), "callback")
        not_before = wire["not_before"]
        return CallbackRequest(
            call_id=wire["call_id"],
            phone=wire["phone"],
            reason=wire["reason"],
            not_before=None if not_before is None else _timestamp_untrusted(not_before, "not_before"),
            queue=wire["queue"],
        )
    except ValueError as error:
        raise CrmReplyError(f"bad crm.request_callback params: {error}") from None


def parse_created_id_untrusted(obj: object, method: str, key: str) -> str:
    """The id in a ``{key: id}`` result of ``method`` (extra keys ignored); raises only CrmReplyError."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"result must be a map, got {type(obj).__name__}")
        if key not in obj:
            raise ValueError(f"result lacks required key {key!r}")
        created = _text(obj[key], key)
        if not created:
            raise ValueError(f"{key} must not be empty")
        return created
    except ValueError as error:
        raise CrmReplyError(f"bad {method} reply: {error}") from None
