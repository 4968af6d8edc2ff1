"""What the user agent core tells its shell (drained with ``UserAgent.events()``).

Every event is a frozen value. ``Transmit`` asks the shell to send bytes; the others
report what happened to a call, keyed by its Call-ID. Each call gets exactly one
``IncomingCall`` and, later, exactly one ``CallEnded``.
"""

from __future__ import annotations

from typing import Any

import attrs

from eko_rtp.sip.message import Request
from eko_rtp.state_enum import StateEnum

__all__ = [
    "Event",
    "Transmit",
    "CallerIdentity",
    "IncomingCall",
    "CallConfirmed",
    "SessionModified",
    "InfoDtmf",
    "EndReason",
    "CallEnded",
    "MessageRejected",
    "RequestRefused",
    "TransferUpdate",
    "RegistrationChanged",
]


@attrs.frozen(kw_only=True)
class Transmit:
    """Send ``data`` to ``destination`` over ``transport``; for TCP reuse ``connection`` if it lives.

    ``destination`` may hold a host name (a Contact or Route host): the shell resolves it.
    """

    data: bytes
    destination: tuple[str, int]
    transport: str
    connection: Any = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class CallerIdentity:
    """Who calls: the From header, and P-Asserted-Identity (RFC 3325) when a trusted source gave one.

    ``asserted_*`` are None when the INVITE came from outside ``sip.trusted_networks``
    (RFC 3325 §5: an identity asserted by a node outside the Trust Domain means
    nothing). ``withheld``: the caller asked for privacy (RFC 3323 §4.2 ``Privacy:``
    ``id``, ``user`` or ``header``): their number may identify them to us, and goes
    nowhere else (``eko_rtp/call/greeting.py``, ``caller_numbers``).
    """

    from_uri: str
    from_user: str | None
    display_name: str | None
    asserted_uri: str | None = None
    asserted_user: str | None = None
    withheld: bool = False


@attrs.frozen(kw_only=True)
class IncomingCall:
    """A new INVITE: answer with ``UserAgent.answer`` or refuse with ``reject``."""

    call_id: str
    request: Request
    offer: bytes | None
    caller: CallerIdentity
    source: tuple[str, int]
    # How the INVITE reached us: "udp", "tcp" or "tls". Only "tls" keeps what the
    # signalling carries from the network's eyes, so only then may its SDP carry SRTP
    # keys in the clear of a=crypto (RFC 4568 §8.3: SDES needs a secure signalling hop).
    transport: str = "udp"

    @property
    def secure_signalling(self) -> bool:
        """True when the INVITE came over TLS (a hop-by-hop guarantee: RFC 3261 §26.2.1)."""
        return self.transport == "tls"


@attrs.frozen(kw_only=True)
class CallConfirmed:
    """The ACK for our 2xx came; ``answer`` is its SDP when our 2xx carried the offer."""

    call_id: str
    answer: bytes | None


@attrs.frozen(kw_only=True)
class SessionModified:
    """A re-INVITE or UPDATE with SDP (or a re-INVITE without): reply with ``answer_modification``."""

    call_id: str
    offer: bytes | None


@attrs.frozen(kw_only=True)
class InfoDtmf:
    """A DTMF digit sent in an INFO (application/dtmf-relay or application/dtmf)."""

    call_id: str
    digit: str
    duration_ms: int | None


class EndReason(StateEnum):
    REMOTE_BYE = "remote BYE"
    LOCAL_BYE = "local BYE"
    CANCELLED = "cancelled"
    NO_ACK = "no ACK for our 2xx"
    SESSION_EXPIRED = "session timer expired"
    REFRESH_FAILED = "session refresh failed"
    REJECTED = "rejected"


@attrs.frozen(kw_only=True)
class CallEnded:
    """The call is over; the shell stops its media."""

    call_id: str
    reason: EndReason


@attrs.frozen(kw_only=True)
class MessageRejected:
    """Input we refused or dropped: one log line for the shell (what was wrong, from where)."""

    description: str
    source: tuple[str, int]
    status: int | None


@attrs.frozen(kw_only=True)
class RequestRefused:
    """A request admission turned away (``admission.py``): answered ``status`` (403, 503) or dropped (None).

    ``reason`` is an :class:`~eko_rtp.sip.admission.Refusal` value ("untrusted",
    "rate", "max_calls", "unhealthy"). ``report`` is set on the first refusal of its
    reason in a while, with ``unreported`` the like refusals since the previous report:
    the shell counts every event and logs only those.
    """

    method: str
    source: tuple[str, int]
    reason: str
    status: int | None
    report: bool
    unreported: int = 0


@attrs.frozen(kw_only=True)
class TransferUpdate:
    """News of our REFER (``refer.py``): its state changed, or the phone reported a new status.

    ``state`` is a :class:`~eko_rtp.sip.refer.TransferState` value ("trying",
    "succeeded", "failed"...); ``status`` the last SIP status heard (the REFER's
    response or the sipfrag's), None when a deadline passed in silence.
    """

    call_id: str
    state: str
    status: int | None
    reason: str


@attrs.frozen(kw_only=True)
class RegistrationChanged:
    """Our registration with the trunk changed state (``registration.py``); ``summary`` is one line."""

    state: str
    registered: bool
    last_status: int | None
    summary: str


Event = (Transmit | IncomingCall | CallConfirmed | SessionModified | InfoDtmf | CallEnded | MessageRejected
         | RequestRefused | TransferUpdate | RegistrationChanged)
