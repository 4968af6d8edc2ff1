"""A blind transfer we ask for: our REFER and the implicit subscription it creates (RFC 3515).

Theory of operation: the script hands the caller to a technician by sending REFER
in the call's dialog (§2.4.1: ``Refer-To`` names the technician, RFC 3892
``Referred-By`` names us). The caller's phone answers the REFER (2xx: it will try;
403/405/501/603 and the like: it will not), then reports how its own INVITE to the
technician goes in NOTIFY requests of the implicit ``refer`` subscription (§2.4.4,
RFC 6665 in the INVITE's dialog, no Contact change): each NOTIFY carries a
``message/sipfrag`` body (RFC 3420) whose status line is the technician's
response: 1xx is progress, 2xx is success (the caller talks to the technician), 3xx
to 6xx is failure. ``Subscription-State: terminated`` (RFC 6665 §4.1.3) ends the
subscription; ending it without a final status is a failure too.

:class:`Transfer` is one such attempt, and every change of it is a row of
:data:`TRANSFER_TRANSITIONS` (``ERROR`` for anything else, as in
``transaction.py``). Two deadlines guard it, because a phone that accepted may
otherwise never speak again: the first NOTIFY must come within
``notify_timeout`` of the REFER (§2.4.4: the notifier sends one at once), and a
final status within ``result_timeout`` (the technician ringing). Either missing is
a failure. A success that arrives after a failure (the technician answered
late) still wins: the caller is with the technician, so our leg ends; the table
allows it so that no caller is left talking to both. Nothing here does I/O or
reads a clock.
"""

from __future__ import annotations

import re

import attrs

from eko_rtp.sip.errors import SipParseError, describe
from eko_rtp.state_enum import StateEnum

__all__ = [
    "TransferState",
    "TransferInput",
    "TRANSFER_TRANSITIONS",
    "FINISHED",
    "TransferError",
    "Transfer",
    "parse_sipfrag_status_untrusted",
    "MAX_SIPFRAG_SIZE",
]

MAX_SIPFRAG_SIZE = 4096  # bytes of a sipfrag body we read: a status line and a few headers


class TransferState(StateEnum):
    REFERRING = "referring"  # our REFER is in flight
    ACCEPTED = "accepted"  # the REFER got 2xx; no NOTIFY yet
    TRYING = "trying"  # a NOTIFY said 1xx: the phone is calling the technician
    SUCCEEDED = "succeeded"  # a NOTIFY said 2xx: the caller is with the technician
    FAILED = "failed"  # refused, a failure sipfrag, or silence past a deadline
    ERROR = "error"


class TransferInput(StateEnum):
    REFER_ACCEPTED = "2xx to REFER"
    REFER_REFUSED = "REFER refused"  # 3xx-6xx, or our REFER timed out
    NOTIFY_PROGRESS = "NOTIFY 1xx"
    NOTIFY_SUCCESS = "NOTIFY 2xx"
    NOTIFY_FAILURE = "NOTIFY 3xx-6xx"
    SUBSCRIPTION_ENDED = "subscription terminated without a final status"
    NO_NOTIFY = "no NOTIFY in time"
    NO_RESULT = "no final status in time"


_T = TransferState
_I = TransferInput
# (state, input) -> next state; a pair not listed is illegal (-> ERROR).
TRANSFER_TRANSITIONS: dict[tuple[TransferState, TransferInput], TransferState] = {
    (_T.REFERRING, _I.REFER_ACCEPTED): _T.ACCEPTED,
    (_T.REFERRING, _I.REFER_REFUSED): _T.FAILED,
    # A NOTIFY may overtake the 2xx to the REFER (different transactions, UDP): it
    # implies the acceptance.
    (_T.REFERRING, _I.NOTIFY_PROGRESS): _T.TRYING,
    (_T.REFERRING, _I.NOTIFY_SUCCESS): _T.SUCCEEDED,
    (_T.REFERRING, _I.NOTIFY_FAILURE): _T.FAILED,
    (_T.REFERRING, _I.NO_NOTIFY): _T.FAILED,
    (_T.ACCEPTED, _I.NOTIFY_PROGRESS): _T.TRYING,
    (_T.ACCEPTED, _I.NOTIFY_SUCCESS): _T.SUCCEEDED,
    (_T.ACCEPTED, _I.NOTIFY_FAILURE): _T.FAILED,
    (_T.ACCEPTED, _I.SUBSCRIPTION_ENDED): _T.FAILED,
    (_T.ACCEPTED, _I.NO_NOTIFY): _T.FAILED,
    (_T.ACCEPTED, _I.NO_RESULT): _T.FAILED,
    (_T.TRYING, _I.NOTIFY_PROGRESS): _T.TRYING,
    (_T.TRYING, _I.NOTIFY_SUCCESS): _T.SUCCEEDED,
    (_T.TRYING, _I.NOTIFY_FAILURE): _T.FAILED,
    (_T.TRYING, _I.SUBSCRIPTION_ENDED): _T.FAILED,
    (_T.TRYING, _I.NO_RESULT): _T.FAILED,
    # Late news after we gave up: a success still ends our leg; anything else changes nothing.
    (_T.FAILED, _I.NOTIFY_SUCCESS): _T.SUCCEEDED,
    (_T.FAILED, _I.NOTIFY_PROGRESS): _T.FAILED,
    (_T.FAILED, _I.NOTIFY_FAILURE): _T.FAILED,
    (_T.FAILED, _I.SUBSCRIPTION_ENDED): _T.FAILED,
    (_T.FAILED, _I.REFER_ACCEPTED): _T.FAILED,
    (_T.SUCCEEDED, _I.NOTIFY_PROGRESS): _T.SUCCEEDED,
    (_T.SUCCEEDED, _I.NOTIFY_SUCCESS): _T.SUCCEEDED,
    (_T.SUCCEEDED, _I.SUBSCRIPTION_ENDED): _T.SUCCEEDED,
    (_T.SUCCEEDED, _I.REFER_ACCEPTED): _T.SUCCEEDED,
}

FINISHED = frozenset({_T.SUCCEEDED, _T.FAILED, _T.ERROR})


class TransferError(Exception):
    """The transfer was driven with an input its state forbids (a bug in the caller)."""


@attrs.define(kw_only=True, eq=False)
class Transfer:
    """One REFER of ours and what its subscription reported.

    ``notify_due`` and ``result_due`` are the absolute deadlines still armed (None
    once met or past); ``status`` is the last status the phone reported (the REFER's
    own response, then the sipfrag's), ``reason`` a few words for the log and the
    script.
    """

    refer_to: str
    refer_key: tuple | None = None  # the REFER's client transaction while in flight
    refer_cseq: int = 0  # the REFER's CSeq number: the NOTIFYs' Event id (§2.4.6)
    state: TransferState = TransferState.REFERRING
    status: int | None = None
    reason: str = ""
    notify_due: float | None = None
    result_due: float | None = None
    subscribed: bool = True  # False once a NOTIFY said Subscription-State: terminated

    def allows(self, event: TransferInput) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self.state, event) in TRANSFER_TRANSITIONS

    def fire(self, event: TransferInput, *, status: int | None = None, reason: str = "") -> TransferState:
        """Apply ``event``; raise TransferError (state -> ERROR) when the table has no entry."""
        try:
            self.state = TRANSFER_TRANSITIONS[(self.state, event)]
        except KeyError:
            previous, self.state = self.state, TransferState.ERROR
            raise TransferError(f"transfer to {self.refer_to}: {event.value} in state {previous.value}") from None
        if status is not None:
            self.status = status
        if reason:
            self.reason = reason
        if event is not TransferInput.REFER_ACCEPTED:
            self.notify_due = None  # any NOTIFY (or the end) meets the first deadline
        if self.state in FINISHED:
            self.notify_due = self.result_due = None
        return self.state

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9])(?: ([^\r\n]*))?\r?(?:\n|\Z)", re.IGNORECASE)


def parse_sipfrag_status_untrusted(body: bytes) -> tuple[int, str]:
    """The status code and reason phrase of a ``message/sipfrag`` body (RFC 3420).

    The body of a ``refer`` NOTIFY must start with a status line (RFC 3515 §2.4.5);
    whatever headers follow it are not needed here. Raises SipParseError(400) for
    anything else, and for a body over :data:`MAX_SIPFRAG_SIZE`.
    """
    if len(body) > MAX_SIPFRAG_SIZE:
        raise SipParseError(400, f"message/sipfrag body of {len(body)} bytes is over {MAX_SIPFRAG_SIZE}")
    match = _STATUS_LINE.match(body.lstrip(b"\r\n"))
    if match is None:
        first = body.lstrip(b"\r\n").split(b"\n", 1)[0][:80].decode("utf-8", "replace")
        raise SipParseError(400, f"message/sipfrag does not start with a SIP status line: {describe(first)}")
    reason = (match.group(2) or b"").decode("utf-8", "replace").strip()[:80]
    return int(match.group(1)), reason
