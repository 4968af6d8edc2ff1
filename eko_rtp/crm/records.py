"""What the CRM tells us about a caller, and what we tell it about a call.

The CRM is another team's service: its replies are untrusted input. Values here are
validated in their constructors, and :func:`parse_caller_untrusted` turns a decoded
``crm.lookup_caller`` result into a :class:`CallerRecord` or raises
:class:`CrmReplyError` (and nothing else), so a wrong type in a reply costs one
lookup, never a call or a server task. Unknown extra keys are ignored so the CRM
can grow its schema without breaking us (docs/crm-rpc.md lists the required keys).
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from eko_rtp.crm.errors import CrmReplyError

MAX_TEXT = 256
MAX_TICKETS = 100


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{where} is longer than {MAX_TEXT} characters")
    return value


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

    def __attrs_post_init__(self) -> None:
        _text(self.call_id, "call_id")
        if self.phone is not None:
            _text(self.phone, "phone")
        if not isinstance(self.greeting, tuple) or not all(isinstance(k, str) and k for k in self.greeting):
            raise ValueError(f"greeting must be a tuple of phrase keys, got {self.greeting!r}")
        if type(self.duration_ms) is not int or self.duration_ms < 0:
            raise ValueError(f"duration_ms must be a non-negative int, got {self.duration_ms!r}")
        _text(self.outcome, "outcome")
        for name in QUALITY_KEYS:
            _measure(getattr(self, name), name)

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
        return wire


QUALITY_KEYS = ("loss_ratio", "jitter_ms", "rtt_ms")


def _measure(value: object, where: str) -> None:
    """A quality figure: nil, or a finite non-negative number (1e6 at most: a bound, not a fact)."""
    if value is None:
        return
    if type(value) not in (int, float) or not 0 <= value <= 1e6:
        raise ValueError(f"{where} must be nil or a number from 0 to 1e6, got {value!r}")


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
            # Optional: a CRM client older than the quality figures does not send them.
            **{name: obj.get(name) for name in QUALITY_KEYS},
        )
    except ValueError as error:
        raise CrmReplyError(f"bad crm.log_call notification: {error}") from None
