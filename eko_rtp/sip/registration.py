"""Outbound registration with a trunk's registrar (RFC 3261 §10), as a state machine.

Theory of operation: a trunk that routes calls to a registered contact needs us to
send REGISTER for our address of record, and again before the binding expires.
:class:`Registration` decides when a REGISTER is due, builds it, and reads the
final response; it neither sends nor waits. The user agent hosting it wraps each
request in its own non-INVITE client transaction (which adds the Via and
retransmits), answers 401/407 challenges itself by calling :meth:`Registration.build_request`
again with the credentials (each build takes the next CSeq), passes only the final
outcome to :meth:`Registration.receive_final` (a transaction timeout as 408), and
arms :meth:`Registration.next_deadline` in its timer structure. Every method that
can make a REGISTER due returns True when it must be sent now. Time is the ``now``
the caller passes (monotonic seconds).

The lifecycle is :data:`REGISTRATION_TRANSITIONS`, the one place that says which
(state, input) pairs are legal; anything else raises :class:`RegistrationError`
and parks the machine in ``ERROR``, as transactions and calls do. A final
response in a state that has no REGISTER in flight is network input the caller
drops first (:attr:`Registration.awaiting_response`, :meth:`Registration.allows`);
only our own misuse raises.

- ``REGISTERING``: a REGISTER is in flight and no binding is live. A 2xx makes one
  (``REGISTERED``); a failure waits (``RETRY_WAIT``) and tries again.
- ``REGISTERED``: a binding is live and nothing is in flight. The next REGISTER is
  due at the refresh time, or after the backoff when a refresh failed (the old
  binding lives on until it expires: §10.3 changes no binding for a refused
  request). If it expires first, the machine falls to ``RETRY_WAIT``.
- ``REFRESHING``: a binding is live and a REGISTER renewing it is in flight; if
  the binding expires meanwhile, the same request carries on as ``REGISTERING``.
- ``RETRY_WAIT``: no binding, nothing in flight, waiting out the backoff.
- ``UNREGISTER_PENDING``: :meth:`Registration.stop` came while a REGISTER was in
  flight. §10.2: "A UA MUST NOT send a new registration (that is, containing new
  Contact header field values, as opposed to a retransmission) until it has
  received a final response from the registrar for the previous one or the
  previous REGISTER request has timed out", so the removal waits for that final
  response: after a 2xx it goes out; after a failure it does not (the registrar
  has just refused or ignored a REGISTER, and whatever binding remains lapses at
  its expiry on its own).
- ``UNREGISTERING``: the removal is in flight ("expires" 0, §10.2.2); any final
  response ends it.
- ``UNREGISTERED``: stopped; further stops are harmless.

A REGISTER is sent exactly when a transition enters a state with one in flight
(:data:`IN_FLIGHT`) while none is, or after a final response ended the previous
one (:func:`sends_register`): a 423 re-sent at once, the removal after
``UNREGISTER_PENDING``'s 2xx.

Intervals. §10.2.1.1: each REGISTER asks for ``expires`` seconds, as the Contact's
"expires" parameter and the Expires header. §10.2.8: "If a UA receives a 423
(Interval Too Brief) response, it MAY retry the registration after making the
expiration interval of all contact addresses in the REGISTER request equal to or
greater than the expiration interval within the Min-Expires header field", which
we do at once, at most ``max_interval_raises`` times in a row and never above
``max_expires``; the raised interval stays for later REGISTERs. §10.2.4: the 2xx
lists the current bindings, "each Contact value featuring an 'expires' parameter
indicating its expiration interval chosen by the registrar"; the granted interval
is that of the Contact matching ours (:func:`same_binding`), else the response's
Expires header, else what we asked, and never more than we asked (the registrar
may shorten it, §10.3 step 7; we do not count on longer). An unparsable value is
skipped for the next source, as is a 0 for a request that asked for more.

Refresh rule (RFC 3261 leaves the time to us): a binding granted ``G`` seconds is
refreshed when ``lead = max(G * refresh_margin, min(5, G / 2))`` seconds of it are
left, that is ``G - lead`` after the 2xx: with the default margin of 0.5 at half
the grant; with a small margin still at least 5 s before expiry, so that a lost
first transmission can still be retransmitted in time; and a grant of under 10 s
at its half at the latest.

Failures (3xx-6xx, 401/407 that reached us because the credentials failed, a
timeout as 408, a 423 we no longer follow) count in a row, and the next attempt
waits ``retry_initial`` doubling per failure up to ``retry_max``; a Retry-After
(§20.33, on any response) lengthens that wait to its value, still bounded by
``retry_max``. A 2xx resets the count. Redirections (3xx) are not followed.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable

import attrs

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import TOKEN, Via, parse_delta_seconds, parse_name_addr, split_comma_list
from eko_rtp.sip.message import Headers, Request
from eko_rtp.sip.uri import Uri, parse_uri

__all__ = [
    "RegistrationSettings",
    "RegistrationState",
    "RegistrationInput",
    "REGISTRATION_TRANSITIONS",
    "IN_FLIGHT",
    "FINAL_RESPONSES",
    "REFRESH_LEAD",
    "RegistrationError",
    "RegistrationStatus",
    "Registration",
    "refresh_delay",
    "same_binding",
    "sends_register",
]

# Refresh at least this many seconds before the binding expires (see the module docstring).
REFRESH_LEAD = 5.0
# §8.1.1.5 (CSeq below 2**31) and §25.1 (delta-seconds fit in 32 bits).
_MAX_DELTA = 2**32 - 1
_CALL_ID = re.compile(r"[!-~]+\Z")


def _sip_uri(what: str, *, userinfo: bool | None = None):
    """An attrs validator: ``value`` parses as a sip: or sips: URI (with or without a user)."""

    def check(instance: object, attribute: attrs.Attribute, value: str) -> None:
        try:
            uri = parse_uri(value, what)
        except SipParseError as error:
            raise ValueError(f"{attribute.name} {value!r}: {error.reason}") from None
        if uri.scheme not in ("sip", "sips"):
            raise ValueError(f"{attribute.name} {value!r}: {what} must be a sip: or sips: URI")
        if userinfo is False and uri.user is not None:
            # §10.2: "The 'userinfo' and '@' components of the SIP URI MUST NOT be present."
            raise ValueError(f"{attribute.name} {value!r}: a registrar URI has no user part (RFC 3261 §10.2)")

    return check


def _whole(low: int, high: int | None = None):
    """An attrs validator: ``value`` is an int (not a bool) in ``low..high``."""

    def check(instance: object, attribute: attrs.Attribute, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"within {low}..{high}"
            raise ValueError(f"{attribute.name} must be a whole number {bounds}, not {value!r}")

    return check


def _header_text(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value or not value.isprintable():
        raise ValueError(f"{attribute.name} must be printable text on one line, not {value!r}")


@attrs.frozen(kw_only=True)
class RegistrationSettings:
    """Where and what to register, and how hard to try (times in seconds)."""

    registrar: str = attrs.field(validator=_sip_uri("registrar", userinfo=False))  # the Request-URI
    aor: str = attrs.field(validator=_sip_uri("address of record"))  # To and From
    contact: str = attrs.field(validator=_sip_uri("contact"))  # our Contact URI
    expires: int = attrs.field(default=3600, validator=_whole(1))
    max_expires: int = attrs.field(default=86400, validator=_whole(1, _MAX_DELTA))  # 423 raises stop here
    refresh_margin: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)])
    retry_initial: float = attrs.field(default=5.0, validator=attrs.validators.gt(0.0))
    retry_max: float = 300.0
    max_interval_raises: int = attrs.field(default=3, validator=_whole(0))
    user_agent: str = attrs.field(default="Eko RTP", validator=_header_text)

    def __attrs_post_init__(self) -> None:
        if self.expires > self.max_expires:
            raise ValueError(f"expires ({self.expires}) is above max_expires ({self.max_expires})")
        if self.retry_max < self.retry_initial:
            raise ValueError(f"retry_max ({self.retry_max}) is below retry_initial ({self.retry_initial})")


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"  # REGISTER in flight, no binding
    REGISTERED = "registered"  # binding live, nothing in flight
    REFRESHING = "refreshing"  # binding live, REGISTER in flight
    RETRY_WAIT = "retry wait"  # no binding, waiting out the backoff
    UNREGISTER_PENDING = "unregister pending"  # stopped while a REGISTER was in flight (§10.2)
    UNREGISTERING = "unregistering"  # the expires=0 REGISTER is in flight (§10.2.2)
    UNREGISTERED = "unregistered"
    ERROR = "error"


class RegistrationInput(enum.Enum):
    START = "start"
    SUCCESS = "2xx"
    INTERVAL_TOO_BRIEF = "423 followed"
    FAILURE = "failure"
    TIMER = "refresh or retry due"
    EXPIRE = "binding expired"
    STOP = "stop"


_R = RegistrationState
_RI = RegistrationInput
# (state, input) -> next state; a pair not listed is illegal (-> ERROR).
REGISTRATION_TRANSITIONS: dict[tuple[RegistrationState, RegistrationInput], RegistrationState] = {
    (_R.IDLE, _RI.START): _R.REGISTERING,
    (_R.IDLE, _RI.STOP): _R.UNREGISTERED,
    (_R.REGISTERING, _RI.SUCCESS): _R.REGISTERED,
    (_R.REGISTERING, _RI.INTERVAL_TOO_BRIEF): _R.REGISTERING,
    (_R.REGISTERING, _RI.FAILURE): _R.RETRY_WAIT,
    (_R.REGISTERING, _RI.STOP): _R.UNREGISTER_PENDING,
    (_R.REGISTERED, _RI.TIMER): _R.REFRESHING,
    (_R.REGISTERED, _RI.EXPIRE): _R.RETRY_WAIT,  # a failed refresh's retry comes after the expiry
    (_R.REGISTERED, _RI.STOP): _R.UNREGISTERING,
    (_R.REFRESHING, _RI.SUCCESS): _R.REGISTERED,
    (_R.REFRESHING, _RI.INTERVAL_TOO_BRIEF): _R.REFRESHING,
    (_R.REFRESHING, _RI.FAILURE): _R.REGISTERED,  # the old binding lives until it expires
    (_R.REFRESHING, _RI.EXPIRE): _R.REGISTERING,
    (_R.REFRESHING, _RI.STOP): _R.UNREGISTER_PENDING,
    (_R.RETRY_WAIT, _RI.TIMER): _R.REGISTERING,
    (_R.RETRY_WAIT, _RI.STOP): _R.UNREGISTERED,
    (_R.UNREGISTER_PENDING, _RI.SUCCESS): _R.UNREGISTERING,
    (_R.UNREGISTER_PENDING, _RI.INTERVAL_TOO_BRIEF): _R.UNREGISTERED,
    (_R.UNREGISTER_PENDING, _RI.FAILURE): _R.UNREGISTERED,
    (_R.UNREGISTER_PENDING, _RI.EXPIRE): _R.UNREGISTER_PENDING,
    (_R.UNREGISTER_PENDING, _RI.STOP): _R.UNREGISTER_PENDING,
    (_R.UNREGISTERING, _RI.SUCCESS): _R.UNREGISTERED,
    (_R.UNREGISTERING, _RI.INTERVAL_TOO_BRIEF): _R.UNREGISTERED,
    (_R.UNREGISTERING, _RI.FAILURE): _R.UNREGISTERED,
    (_R.UNREGISTERING, _RI.EXPIRE): _R.UNREGISTERING,
    (_R.UNREGISTERING, _RI.STOP): _R.UNREGISTERING,
    (_R.UNREGISTERED, _RI.STOP): _R.UNREGISTERED,
}

# States in which one of our REGISTERs is in flight (a final response is expected).
IN_FLIGHT = frozenset({_R.REGISTERING, _R.REFRESHING, _R.UNREGISTER_PENDING, _R.UNREGISTERING})
# States that wait for the next REGISTER to fall due (refresh or retry).
_WAITING = frozenset({_R.REGISTERED, _R.RETRY_WAIT})
# States in which a binding may be live (``registered_until`` may be set).
_MAY_BE_BOUND = frozenset({_R.REGISTERED, _R.REFRESHING, _R.UNREGISTER_PENDING, _R.UNREGISTERING})
# Inputs that end the REGISTER in flight.
FINAL_RESPONSES = frozenset({_RI.SUCCESS, _RI.INTERVAL_TOO_BRIEF, _RI.FAILURE})


def sends_register(state: RegistrationState, event: RegistrationInput) -> bool:
    """Whether the legal transition for ``event`` in ``state`` sends a new REGISTER.

    It does when it enters a state with a REGISTER in flight while none is in
    flight: from a waiting state, or once a final response ended the previous one.
    """
    target = REGISTRATION_TRANSITIONS[(state, event)]
    return target in IN_FLIGHT and (state not in IN_FLIGHT or event in FINAL_RESPONSES)


def refresh_delay(granted: float, margin: float) -> float:
    """Seconds from the 2xx to the refresh of a binding granted ``granted`` seconds (module docstring)."""
    lead = max(granted * margin, min(REFRESH_LEAD, granted / 2))
    return granted - lead


def _default_port(uri: Uri) -> int:
    return uri.port or (5061 if uri.scheme == "sips" else 5060)


def same_binding(ours: Uri, theirs: Uri) -> bool:
    """Whether a Contact URI in a 2xx names our binding: §19.1.4 with the default port filled in.

    §19.1.4 compares user and password case-sensitively and the host without case
    (``uri.py`` lower-cases it); parameters present in both must match without
    case, "A user, ttl, or method uri-parameter appearing in only one URI never
    matches", nor an maddr, and "All other uri-parameters appearing in only one URI
    are ignored" (a ``transport`` or ``ob`` the registrar added). Unlike §19.1.4, a
    port left out equals the scheme's default: registrars write it in or drop it.
    """
    if (ours.scheme, ours.user, ours.password, ours.host) != (theirs.scheme, theirs.user, theirs.password, theirs.host):
        return False
    if _default_port(ours) != _default_port(theirs):
        return False
    mine = {key.lower(): (value or "").lower() for key, value in ours.parameters}
    other = {key.lower(): (value or "").lower() for key, value in theirs.parameters}
    for key in mine.keys() | other.keys():
        if key in mine and key in other:
            if mine[key] != other[key]:
                return False
        elif key in ("user", "ttl", "method", "maddr"):
            return False
    return True


def _delta_seconds(text: str | None, what: str) -> int | None:
    """A delta-seconds value from the network, None when absent or malformed."""
    if text is None:
        return None
    try:
        return parse_delta_seconds(text, what)
    except SipParseError:
        return None


def _retry_after(headers: Headers) -> int | None:
    """§20.33: ``Retry-After: delta-seconds [ comment ] *( SEMI retry-param )``; None when absent or bad."""
    text = headers.get("Retry-After")
    if text is None:
        return None
    return _delta_seconds(text.partition(";")[0].partition("(")[0], "Retry-After")


class RegistrationError(Exception):
    """The registration was driven with an input its state forbids (a bug in the caller)."""


@attrs.frozen(kw_only=True)
class RegistrationStatus:
    """A snapshot for logs, metrics and systemd; times are on the caller's monotonic clock."""

    state: RegistrationState
    registered: bool  # a binding is believed live now
    expires_at: float | None  # when that binding lapses
    next_register_at: float | None  # when the next REGISTER falls due (refresh or retry)
    last_status: int | None  # of the last final response (408 for a timeout)
    failures: int  # consecutive
    interval: int | None  # last granted interval
    requested: int  # the interval the next REGISTER asks for


class Registration:
    """One address of record's registration; see the module docstring."""

    def __init__(self, settings: RegistrationSettings, *, call_id: str, from_tag: str):
        if not _CALL_ID.match(call_id):
            raise ValueError(f"call_id {call_id!r} is not a Call-ID")
        if not TOKEN.match(from_tag):
            raise ValueError(f"from_tag {from_tag!r} is not a token")
        self.settings = settings
        # §10.2: "All registrations from a UAC SHOULD use the same Call-ID header field
        # value for registrations sent to a particular registrar", and the CSeq "MUST
        # be incremented by one for each REGISTER request with the same Call-ID".
        self.call_id = call_id
        self.from_tag = from_tag
        self.cseq = 0  # of the last REGISTER built
        self.registrar = parse_uri(settings.registrar)
        self.aor = parse_uri(settings.aor)
        self.contact = parse_uri(settings.contact)
        self.state = RegistrationState.IDLE
        self.requested = settings.expires  # raised by 423s, kept for later REGISTERs
        self.interval: int | None = None  # last granted
        self.registered_until: float | None = None  # set exactly while a binding is believed live
        self.last_status: int | None = None
        self.failures = 0
        self._interval_raises = 0  # 423s followed in a row
        self._next_register_at: float | None = None  # set exactly in the states _WAITING

    # -- the table ---------------------------------------------------------------

    def allows(self, event: RegistrationInput) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self.state, event) in REGISTRATION_TRANSITIONS

    @property
    def awaiting_response(self) -> bool:
        """True while one of our REGISTERs is in flight: a final response may be passed in."""
        return self.state in IN_FLIGHT

    def _fire(self, event: RegistrationInput) -> bool:
        """Apply ``event``; return whether a REGISTER must be sent now. Illegal: raise, park in ERROR."""
        previous = self.state
        if not self.allows(event):
            self._park()
            raise RegistrationError(f"registration {self.call_id}: {event.value} in state {previous.value}")
        send = sends_register(previous, event)
        self.state = REGISTRATION_TRANSITIONS[(previous, event)]
        if self.state not in _WAITING:
            self._next_register_at = None
        if self.state not in _MAY_BE_BOUND:
            self.registered_until = None
        return send

    def _park(self) -> None:
        self.state = RegistrationState.ERROR
        self._next_register_at = self.registered_until = None

    def _expire_due(self, now: float) -> None:
        """The binding's expiry passed without a successful refresh: it is gone."""
        if self.registered_until is not None and now >= self.registered_until:
            self._fire(RegistrationInput.EXPIRE)
            self.registered_until = None

    # -- driving it --------------------------------------------------------------

    def start(self, now: float) -> bool:
        """Begin registering; True: the first REGISTER must be sent now."""
        return self._fire(RegistrationInput.START)

    def stop(self, now: float) -> bool:
        """Remove our binding (§10.2.2); True when the expires=0 REGISTER must be sent now.

        With nothing registered (idle, retry wait) the machine goes straight to
        ``UNREGISTERED``; with a REGISTER in flight the removal waits for its final
        response (§10.2, see the module docstring). Stopping again changes nothing.
        """
        self._expire_due(now)
        return self._fire(RegistrationInput.STOP)

    def handle_timer(self, now: float) -> bool:
        """Run what is due at ``now``; True when a REGISTER (refresh or retry) must be sent now.

        A timer that finds nothing due does nothing, so a late or spurious call is harmless.
        """
        self._expire_due(now)
        if self._next_register_at is not None and now >= self._next_register_at:
            return self._fire(RegistrationInput.TIMER)
        return False

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work (refresh, retry or expiry), None when nothing runs."""
        deadlines = [d for d in (self._next_register_at, self.registered_until) if d is not None]
        return min(deadlines) if deadlines else None

    def receive_final(self, *, status: int, headers: Headers | None, now: float) -> bool:
        """Take the final response to our REGISTER (a timeout as 408, ``headers`` None).

        Returns True when a REGISTER must be sent now: again after a 423, or the
        removal after the response that ``UNREGISTER_PENDING`` waited for. Check
        :attr:`awaiting_response` first: in another state this raises.
        """
        if not isinstance(status, int) or not 200 <= status <= 699:
            raise ValueError(f"a final response status is 200..699, not {status!r}")
        headers = headers if headers is not None else Headers()
        self._expire_due(now)
        event, min_expires = self._classify(status, headers)
        send = self._fire(event)
        self.last_status = status
        if event is not RegistrationInput.INTERVAL_TOO_BRIEF:
            self._interval_raises = 0
        if event is RegistrationInput.SUCCESS:
            self.failures = 0
            if self.state in (RegistrationState.REGISTERED, RegistrationState.UNREGISTERING):
                # A binding was made or renewed (for UNREGISTERING: just before its removal).
                self.interval = self._granted(headers)
                self.registered_until = now + self.interval
            if self.state is RegistrationState.REGISTERED:
                self._next_register_at = now + refresh_delay(self.interval, self.settings.refresh_margin)
        elif event is RegistrationInput.INTERVAL_TOO_BRIEF:
            if self.state in (RegistrationState.REGISTERING, RegistrationState.REFRESHING):
                self._interval_raises += 1
                self.requested = min_expires
        else:
            self.failures += 1
            if self.state in _WAITING:
                self._next_register_at = now + self._retry_delay(headers)
        return send

    def _classify(self, status: int, headers: Headers) -> tuple[RegistrationInput, int | None]:
        """The input a final response is, and for a 423 we follow, the interval to ask next."""
        if 200 <= status < 300:
            return RegistrationInput.SUCCESS, None
        if status == 423:
            min_expires = _delta_seconds(headers.get("Min-Expires"), "Min-Expires")
            # A Min-Expires at or below what we asked would loop; above our cap we refuse it.
            if (min_expires is not None and self.requested < min_expires <= self.settings.max_expires
                    and self._interval_raises < self.settings.max_interval_raises):
                return RegistrationInput.INTERVAL_TOO_BRIEF, min_expires
        return RegistrationInput.FAILURE, None

    def _granted(self, headers: Headers) -> int:
        """The interval a 2xx grants our binding (§10.2.4; see the module docstring)."""
        for element in split_comma_list(headers.get_all("Contact")):
            try:
                address = parse_name_addr(element, "Contact")
            except SipParseError:
                continue  # someone else's malformed binding does not hide ours
            if same_binding(self.contact, address.uri):
                granted = _delta_seconds(address.parameter("expires"), "Contact expires")
                if granted:
                    return min(granted, self.requested)
                break
        granted = _delta_seconds(headers.get("Expires"), "Expires")
        if granted:
            return min(granted, self.requested)
        return self.requested

    def _retry_delay(self, headers: Headers) -> float:
        """Backoff after ``self.failures`` failures in a row, lengthened by a Retry-After."""
        settings = self.settings
        delay = min(settings.retry_initial * 2.0 ** min(self.failures - 1, 64), settings.retry_max)
        retry_after = _retry_after(headers)
        if retry_after is not None:
            delay = min(max(float(retry_after), delay), settings.retry_max)
        return delay

    # -- the request -------------------------------------------------------------

    def build_request(self, *, via: Via, extra_headers: Iterable[tuple[str, str]] = ()) -> Request:
        """The REGISTER for the request in flight, with the next CSeq and ``via`` on top.

        Called once per transmission the user agent starts: the first, and each
        retry with credentials after a 401/407 (§22.2). In ``UNREGISTERING`` it asks
        for expires 0 (§10.2.2: "A UA can request the immediate removal of a binding
        by specifying an expiration interval of '0' for that contact address"),
        otherwise for :attr:`requested` (§10.2.1.1, as both parameter and header).
        """
        if self.state not in IN_FLIGHT:
            previous = self.state
            self._park()
            raise RegistrationError(f"registration {self.call_id}: no REGISTER is due in state {previous.value}")
        self.cseq += 1
        expires = 0 if self.state is RegistrationState.UNREGISTERING else self.requested
        # §10.2: To and From carry the address of record, the Request-URI the registrar's domain.
        fields = [
            ("Via", str(via)),
            ("Max-Forwards", "70"),
            ("To", f"<{self.aor}>"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.contact}>;expires={expires}"),
            ("Expires", str(expires)),
            ("User-Agent", self.settings.user_agent),
            *extra_headers,
        ]
        return Request(method="REGISTER", uri=str(self.registrar), headers=Headers(fields))

    # -- reporting ---------------------------------------------------------------

    @property
    def status(self) -> RegistrationStatus:
        """Where the registration stands."""
        return RegistrationStatus(
            state=self.state,
            registered=self.registered_until is not None,
            expires_at=self.registered_until,
            next_register_at=self._next_register_at,
            last_status=self.last_status,
            failures=self.failures,
            interval=self.interval,
            requested=self.requested,
        )

    def describe(self, now: float) -> str:
        """One line for systemd's STATUS= and the logs."""
        registrar = str(self.registrar)

        def seconds_until(deadline: float | None) -> int:
            return max(0, math.ceil((deadline or now) - now))

        state = self.state
        if state is RegistrationState.IDLE:
            return f"not registered to {registrar} (not started)"
        if state is RegistrationState.REGISTERING:
            if self.failures:
                return f"registering to {registrar} (after {self.failures} failed, last {self.last_status})"
            return f"registering to {registrar}"
        if state is RegistrationState.REGISTERED:
            expires = f"expires in {seconds_until(self.registered_until)} s"
            if self.failures:
                return (f"registered to {registrar} ({expires}; refresh failing ({self.last_status}), "
                        f"retry in {seconds_until(self._next_register_at)} s)")
            return f"registered to {registrar} ({expires})"
        if state is RegistrationState.REFRESHING:
            return f"registered to {registrar} (expires in {seconds_until(self.registered_until)} s, refreshing)"
        if state is RegistrationState.RETRY_WAIT:
            return (f"registration to {registrar} failing ({self.last_status}, "
                    f"retry in {seconds_until(self._next_register_at)} s)")
        if state in (RegistrationState.UNREGISTER_PENDING, RegistrationState.UNREGISTERING):
            return f"unregistering from {registrar}"
        if state is RegistrationState.UNREGISTERED:
            return f"unregistered from {registrar}"
        return f"registration to {registrar} stopped on an internal error"
