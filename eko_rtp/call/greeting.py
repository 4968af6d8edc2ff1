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

Which number identifies the caller: :func:`caller_numbers` (P-Asserted-Identity from
a trusted source over From; a caller who asked for privacy is looked up and nothing
more).
"""

from __future__ import annotations

import attrs

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
    "id"). From is the fallback when there is no usable asserted identity. The SIP
    core passes an asserted identity only from a trusted source (``sip.trusted_networks``).
    """
    return normalise_phone(asserted_user) or normalise_phone(from_user)


@attrs.frozen(kw_only=True)
class CallerNumbers:
    """The caller's number for the CRM look-up, and the number the call may keep (None: none)."""

    lookup: str | None
    kept: str | None


def caller_numbers(*, asserted_user: str | None, from_user: str | None, withheld: bool) -> CallerNumbers:
    """What the call may do with the caller's number.

    A caller who asked for privacy (``Privacy: id``, RFC 3323 §4.2 and RFC 3325 §9.3)
    hid their number from whoever is outside the trunk's Trust Domain. We are its
    end (the trunk asserted the identity *to us*), so the number still identifies
    the caller to Eko: the CRM look-up uses it and the greeting can be the caller's
    own. It goes nowhere else: ``kept`` is None, so the call log stores no number,
    a callback becomes a ticket (calling back means dialling the hidden number), and
    a script never has it to speak, send to a TTS provider, or hand on. The look-up's
    log line masks it whatever ``service.log_full_numbers`` says (``lookup.py``).
    """
    number = caller_number(asserted_user, from_user)
    return CallerNumbers(lookup=number, kept=None if withheld else number)
