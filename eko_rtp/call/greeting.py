"""Which phrases Eko greets a caller with, from what the CRM knows about them.

Pure functions, no I/O: the call path looks the caller up (with a deadline), then
asks :func:`choose_greeting` for phrase keys of the cache catalogue.

- Unknown caller (no record: not found, anonymous, or the CRM failed or was late):
  ``("greet", "welcome")``.
- Known caller with open tickets: the most recently opened ticket whose problem
  type has a phrase decides: ``internet`` -> ``returning_client_pending_internet``,
  ``mobile`` -> ``returning_client_pending_mobile``. The newest ticket is the one the
  caller is most likely calling about. Tickets of other problem types have no phrase
  and are skipped.
- Known caller with no open ticket of a type we can speak about:
  ``returning_client_no_ticket``.
"""

from __future__ import annotations

from eko_rtp.crm.phone import normalise_phone
from eko_rtp.crm.records import CallerRecord

UNKNOWN_CALLER_GREETING = ("greet", "welcome")
NO_TICKET_GREETING = ("returning_client_no_ticket",)
PENDING_GREETINGS = {
    "internet": ("returning_client_pending_internet",),
    "mobile": ("returning_client_pending_mobile",),
}


def choose_greeting(record: CallerRecord | None) -> tuple[str, ...]:
    """The phrase keys to play first for a caller with this CRM record (None: unknown)."""
    if record is None:
        return UNKNOWN_CALLER_GREETING
    speakable = [t for t in record.open_tickets if t.problem_type in PENDING_GREETINGS]
    if not speakable:
        return NO_TICKET_GREETING
    # max() keeps the first of equal timestamps, i.e. the CRM's order breaks ties.
    newest = max(speakable, key=lambda ticket: ticket.opened_at)
    return PENDING_GREETINGS[newest.problem_type]


def caller_number(asserted_user: str | None, from_user: str | None) -> str | None:
    """The caller's E.164 number, preferring P-Asserted-Identity over From.

    P-Asserted-Identity (RFC 3325 section 9.1) is set by the trusted trunk and is
    present even when the caller hid their number in From (section 9.3, privacy
    "id"). From is the fallback when there is no usable asserted identity.
    """
    return normalise_phone(asserted_user) or normalise_phone(from_user)
