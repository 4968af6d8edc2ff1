"""Outbound registration (RFC 3261 §10): the lifecycle table, the REGISTERs built, the schedule."""

from __future__ import annotations

import attrs
import pytest

from eko_rtp.sip.headers import Via
from eko_rtp.sip.message import Headers, parse_message_untrusted
from eko_rtp.sip.registration import (
    IN_FLIGHT,
    REGISTRATION_TRANSITIONS,
    Registration,
    RegistrationError,
    RegistrationInput,
    RegistrationSettings,
    RegistrationState,
    RegistrationStatus,
    refresh_delay,
    same_binding,
    sends_register,
)
from eko_rtp.sip.uri import parse_uri

S = RegistrationState
I = RegistrationInput  # noqa: E741 (the table's column names read better short)

SETTINGS = RegistrationSettings(
    registrar="sip:trunk.example.net",
    aor="sip:0123456789@trunk.example.net",
    contact="sip:eko@198.51.100.7:5060",
)
VIA = Via(transport="UDP", host="198.51.100.7", port=5060, parameters=(("branch", "z9hG4bK-reg-1"), ("rport", None)))
CONTACT = "<sip:eko@198.51.100.7:5060>"


def registration(**changes) -> Registration:
    return Registration(attrs.evolve(SETTINGS, **changes), call_id="reg-7@198.51.100.7", from_tag="f00d")


def ok(*fields: tuple[str, str]) -> Headers:
    return Headers(fields)


def expires_of(request) -> tuple[str, str]:
    return request.headers.get("Contact"), request.headers.get("Expires")


# -- the table -------------------------------------------------------------------

# Read a row as "in this state, this input leads to"; '!' marks a transition that
# sends a REGISTER now; '.' is illegal (-> ERROR).
#   §10.2: one REGISTER in flight at a time, so a stop waits for the final response;
#   §10.2.8: a 423 is answered at once with the raised interval;
#   §10.3: a refused refresh leaves the old binding until it expires;
#   §10.2.2: the removal (expires 0) ends in UNREGISTERED whatever the answer.
MATRIX = """
state               START         SUCCESS         INTERVAL_TOO_BRIEF  FAILURE       TIMER         EXPIRE              STOP
IDLE                REGISTERING!  .               .                   .             .             .                   UNREGISTERED
REGISTERING         .             REGISTERED      REGISTERING!        RETRY_WAIT    .             .                   UNREGISTER_PENDING
REGISTERED          .             .               .                   .             REFRESHING!   RETRY_WAIT          UNREGISTERING!
REFRESHING          .             REGISTERED      REFRESHING!         REGISTERED    .             REGISTERING         UNREGISTER_PENDING
RETRY_WAIT          .             .               .                   .             REGISTERING!  .                   UNREGISTERED
UNREGISTER_PENDING  .             UNREGISTERING!  UNREGISTERED        UNREGISTERED  .             UNREGISTER_PENDING  UNREGISTER_PENDING
UNREGISTERING       .             UNREGISTERED    UNREGISTERED        UNREGISTERED  .             UNREGISTERING       UNREGISTERING
UNREGISTERED        .             .               .                   .             .             .                   UNREGISTERED
ERROR               .             .               .                   .             .             .                   .
"""


def expected_table() -> dict[tuple[S, I], tuple[S, bool] | None]:
    header, *rows = MATRIX.strip().splitlines()
    inputs = [I[name] for name in header.split()[1:]]
    table = {}
    for row in rows:
        state, *cells = row.split()
        assert len(cells) == len(inputs), row
        for event, cell in zip(inputs, cells):
            table[(S[state], event)] = None if cell == "." else (S[cell.rstrip("!")], cell.endswith("!"))
    return table


EXPECTED = expected_table()


def test_the_matrix_covers_every_pair_and_matches_the_table():
    assert set(EXPECTED) == {(state, event) for state in S for event in I}
    assert {pair: cell[0] for pair, cell in EXPECTED.items() if cell is not None} == REGISTRATION_TRANSITIONS
    assert {pair: cell[1] for pair, cell in EXPECTED.items() if cell is not None} == {
        pair: sends_register(*pair) for pair in REGISTRATION_TRANSITIONS}


def test_a_final_response_is_expected_exactly_where_a_register_is_in_flight():
    finals = {I.SUCCESS, I.INTERVAL_TOO_BRIEF, I.FAILURE}
    for event in finals:
        assert {state for (state, e) in REGISTRATION_TRANSITIONS if e is event} == IN_FLIGHT


def registration_in(state: S) -> Registration:
    """A registration (expires 600) driven into ``state`` through its public methods only."""
    reg = registration(expires=600)
    if state is S.IDLE:
        return reg
    if state is S.UNREGISTERED:
        reg.stop(0.0)
        return reg
    reg.start(0.0)
    if state is S.ERROR:
        with pytest.raises(RegistrationError):
            reg.start(0.0)
    elif state is S.REGISTERED:
        reg.receive_final(status=200, headers=ok(), now=1.0)
    elif state is S.REFRESHING:
        reg.receive_final(status=200, headers=ok(), now=1.0)
        assert reg.handle_timer(301.0)
    elif state is S.RETRY_WAIT:
        reg.receive_final(status=503, headers=ok(), now=1.0)
    elif state is S.UNREGISTER_PENDING:
        reg.stop(1.0)
    elif state is S.UNREGISTERING:
        reg.receive_final(status=200, headers=ok(), now=1.0)
        reg.stop(2.0)
    assert reg.state is state
    return reg


# The inputs a caller's method call makes (TIMER and EXPIRE come only from handle_timer,
# which fires them when due and legal: tested with the schedules below).
DRIVE = {
    I.START: lambda reg: reg.start(10.0),
    I.SUCCESS: lambda reg: reg.receive_final(status=200, headers=ok(), now=10.0),
    I.INTERVAL_TOO_BRIEF: lambda reg: reg.receive_final(status=423, headers=ok(("Min-Expires", "1800")), now=10.0),
    I.FAILURE: lambda reg: reg.receive_final(status=403, headers=ok(), now=10.0),
    I.STOP: lambda reg: reg.stop(10.0),
}


@pytest.mark.parametrize("state, event", [(state, event) for state in S for event in DRIVE],
                         ids=lambda item: item.name)
def test_every_driven_pair_lands_where_the_table_says_or_parks_in_error(state, event):
    reg = registration_in(state)
    cell = EXPECTED[(state, event)]
    assert reg.allows(event) is (cell is not None)
    assert reg.awaiting_response is (state in IN_FLIGHT)
    if cell is not None:
        assert (DRIVE[event](reg), reg.state) == (cell[1], cell[0])
        return
    with pytest.raises(RegistrationError) as caught:
        DRIVE[event](reg)
    assert str(caught.value) == f"registration reg-7@198.51.100.7: {event.value} in state {state.value}"
    assert reg.state is S.ERROR
    assert reg.next_deadline() is None and reg.status.registered is False


@pytest.mark.parametrize("state", [S.IDLE, S.REGISTERED, S.RETRY_WAIT, S.UNREGISTERED, S.ERROR])
def test_building_a_register_when_none_is_due_is_misuse(state):
    reg = registration_in(state)
    with pytest.raises(RegistrationError) as caught:
        reg.build_request(via=VIA)
    assert str(caught.value) == f"registration reg-7@198.51.100.7: no REGISTER is due in state {state.value}"
    assert reg.state is S.ERROR


def test_a_provisional_status_is_refused_without_changing_state():
    reg = registration_in(S.REGISTERING)
    with pytest.raises(ValueError, match="200..699, not 180"):
        reg.receive_final(status=180, headers=ok(), now=1.0)
    assert reg.state is S.REGISTERING


# -- the request -----------------------------------------------------------------


def test_first_register_bytes():
    reg = registration()
    assert reg.start(0.0) is True
    request = reg.build_request(via=VIA)
    assert bytes(request) == (
        b"REGISTER sip:trunk.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-reg-1;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: <sip:0123456789@trunk.example.net>\r\n"
        b"From: <sip:0123456789@trunk.example.net>;tag=f00d\r\n"
        b"Call-ID: reg-7@198.51.100.7\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:eko@198.51.100.7:5060>;expires=3600\r\n"
        b"Expires: 3600\r\n"
        b"User-Agent: Eko RTP\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    # It is a well-formed request by our own parser's rules.
    parsed = parse_message_untrusted(bytes(request), transport="udp")
    assert (parsed.method, parsed.uri, parsed.cseq.number, parsed.from_.tag, parsed.to.tag) == (
        "REGISTER", "sip:trunk.example.net", 1, "f00d", None)


def test_auth_retry_takes_the_next_cseq_and_carries_the_extra_headers():
    reg = registration()
    reg.start(0.0)
    reg.build_request(via=VIA)
    retry = reg.build_request(via=VIA, extra_headers=[("Authorization", 'Digest username="eko"')])
    assert retry.headers.get("CSeq") == "2 REGISTER"
    assert list(retry.headers)[-2:] == [("User-Agent", "Eko RTP"), ("Authorization", 'Digest username="eko"')]


def test_refreshes_keep_the_call_id_and_count_the_cseq_up():
    reg = registration()
    reg.start(0.0)
    first = reg.build_request(via=VIA)
    reg.receive_final(status=200, headers=ok(("Contact", f"{CONTACT};expires=120")), now=1.0)
    assert reg.handle_timer(61.0) is True
    second = reg.build_request(via=VIA)
    reg.receive_final(status=200, headers=ok(("Contact", f"{CONTACT};expires=120")), now=62.0)
    assert reg.handle_timer(122.0) is True
    third = reg.build_request(via=VIA)
    assert [r.headers.get("Call-ID") for r in (first, second, third)] == ["reg-7@198.51.100.7"] * 3
    assert [r.headers.get("CSeq") for r in (first, second, third)] == ["1 REGISTER", "2 REGISTER", "3 REGISTER"]
    assert [r.headers.get("From") for r in (first, third)] == ["<sip:0123456789@trunk.example.net>;tag=f00d"] * 2


# -- granted interval and refresh --------------------------------------------------


@pytest.mark.parametrize("granted, margin, delay", [
    (3600, 0.5, 1800.0),   # the default: at half the grant
    (120, 0.5, 60.0),
    (120, 0.1, 108.0),     # 12 s left
    (120, 0.01, 115.0),    # 1.2 s would be too tight: 5 s before expiry
    (120, 0.0, 115.0),
    (8, 0.01, 4.0),        # under 10 s: at half
    (1, 0.0, 0.5),
])
def test_refresh_rule(granted, margin, delay):
    assert refresh_delay(granted, margin) == delay


@pytest.mark.parametrize("headers, granted", [
    # §10.2.4: the expires of our Contact among the bindings listed.
    ([("Contact", f"<sip:other@192.0.2.9>;expires=30, {CONTACT};expires=120")], 120),
    # The registrar wrote the default port out, added transport: still ours.
    ([("Contact", "<sip:eko@198.51.100.7;transport=udp>;expires=90")], 90),
    # Only another binding listed: the Expires header.
    ([("Contact", "<sip:other@192.0.2.9>;expires=30"), ("Expires", "200")], 200),
    # Our Contact without expires: the Expires header.
    ([("Contact", CONTACT), ("Expires", "300")], 300),
    # Neither: what we asked.
    ([], 3600),
    # A malformed neighbour does not hide ours; a bad value is skipped.
    ([("Contact", f"<sip:bad@>;expires=5, {CONTACT};expires=600")], 600),
    ([("Contact", f"{CONTACT};expires=soon"), ("Expires", "240")], 240),
    ([("Contact", f"{CONTACT};expires=0"), ("Expires", "bad")], 3600),
    # Never more than we asked.
    ([("Contact", f"{CONTACT};expires=7200")], 3600),
])
def test_granted_interval(headers, granted):
    reg = registration()
    reg.start(0.0)
    assert reg.receive_final(status=200, headers=Headers(headers), now=10.0) is False
    assert reg.status == RegistrationStatus(
        state=S.REGISTERED, registered=True, expires_at=10.0 + granted,
        next_register_at=10.0 + refresh_delay(granted, 0.5), last_status=200, failures=0, interval=granted,
        requested=3600)


@pytest.mark.parametrize("theirs, same", [
    ("sip:eko@198.51.100.7:5060", True),
    ("sip:eko@198.51.100.7", True),
    ("sip:eko@198.51.100.7:5060;ob;transport=UDP", True),
    ("sip:EKO@198.51.100.7:5060", False),           # the user is case-sensitive
    ("sip:eko@198.51.100.7:5070", False),
    ("sips:eko@198.51.100.7:5060", False),
    ("sip:eko@198.51.100.8:5060", False),
    ("sip:eko@198.51.100.7:5060;maddr=192.0.2.1", False),  # §19.1.4: maddr in one only
    ("sip:eko@198.51.100.7:5060;user=phone", False),       # §19.1.4: user in one only
])
def test_contact_comparison(theirs, same):
    assert same_binding(parse_uri("sip:eko@198.51.100.7:5060;transport=udp"), parse_uri(theirs)) is same


def test_refresh_schedule_with_a_short_grant():
    reg = registration()
    reg.start(0.0)
    reg.build_request(via=VIA)
    reg.receive_final(status=200, headers=ok(("Contact", f"{CONTACT};expires=120")), now=10.0)
    assert (reg.next_deadline(), reg.status.expires_at) == (70.0, 130.0)
    assert reg.handle_timer(69.9) is False and reg.state is S.REGISTERED
    assert reg.handle_timer(70.0) is True and reg.state is S.REFRESHING
    assert reg.next_deadline() == 130.0  # the binding's expiry, while the refresh is in flight
    assert reg.describe(71.0) == "registered to sip:trunk.example.net (expires in 59 s, refreshing)"
    assert expires_of(reg.build_request(via=VIA)) == (f"{CONTACT};expires=3600", "3600")
    reg.receive_final(status=200, headers=ok(("Expires", "100")), now=72.0)
    assert (reg.next_deadline(), reg.status.expires_at, reg.status.interval) == (122.0, 172.0, 100)


def test_a_refresh_in_flight_past_the_expiry_registers_anew():
    reg = registration()
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "120")), now=0.0)
    assert reg.handle_timer(60.0) is True
    # The UA's transaction is still retransmitting (timer F is 32 s) when the binding lapses.
    assert reg.handle_timer(120.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.REGISTERING, False, None)
    assert reg.describe(120.0) == "registering to sip:trunk.example.net"
    assert reg.receive_final(status=408, headers=None, now=92.0 + 32.0) is False
    assert (reg.state, reg.next_deadline()) == (S.RETRY_WAIT, 129.0)


def test_a_response_passed_in_after_the_expiry_sees_it_first():
    reg = registration()
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "120")), now=0.0)
    reg.handle_timer(60.0)
    # handle_timer(120) was not called before the 408 came.
    reg.receive_final(status=408, headers=None, now=125.0)
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.RETRY_WAIT, False, 130.0)


def test_a_failed_refresh_keeps_the_binding_and_retries_until_it_lapses():
    reg = registration(retry_initial=5.0, retry_max=40.0)
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "100")), now=0.0)
    assert reg.handle_timer(50.0) is True
    assert reg.receive_final(status=503, headers=ok(), now=51.0) is False
    # §10.3: a refused request changes no binding; ours lives until 100.
    assert reg.status == RegistrationStatus(
        state=S.REGISTERED, registered=True, expires_at=100.0, next_register_at=56.0, last_status=503,
        failures=1, interval=100, requested=3600)
    assert reg.describe(51.0) == (
        "registered to sip:trunk.example.net (expires in 49 s; refresh failing (503), retry in 5 s)")
    assert reg.handle_timer(56.0) is True and reg.state is S.REFRESHING
    reg.receive_final(status=500, headers=ok(("Retry-After", "60")), now=57.0)
    assert (reg.state, reg.next_deadline()) == (S.REGISTERED, 97.0)  # Retry-After 60 capped at retry_max 40
    assert reg.handle_timer(97.0) is True
    reg.receive_final(status=503, headers=ok(), now=98.0)
    assert (reg.state, reg.next_deadline()) == (S.REGISTERED, 100.0)  # the expiry, before the retry at 118
    # The binding lapses before the retry: nothing is live, the retry stands.
    assert reg.handle_timer(100.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.RETRY_WAIT, False, 118.0)
    assert reg.describe(100.0) == "registration to sip:trunk.example.net failing (503, retry in 18 s)"
    assert reg.handle_timer(118.0) is True and reg.state is S.REGISTERING


def test_a_late_timer_past_the_expiry_registers_anew_at_once():
    reg = registration()
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "120")), now=0.0)
    assert reg.handle_timer(500.0) is True  # the expiry first (-> RETRY_WAIT), then the due REGISTER
    assert (reg.state, reg.status.registered) == (S.REGISTERING, False)


def test_a_spurious_timer_does_nothing():
    reg = registration_in(S.RETRY_WAIT)
    assert (reg.handle_timer(2.0), reg.state) == (False, S.RETRY_WAIT)
    reg = registration_in(S.IDLE)
    assert (reg.handle_timer(2.0), reg.state, reg.next_deadline()) == (False, S.IDLE, None)


# -- 423 Interval Too Brief ---------------------------------------------------------


def test_423_raises_the_interval_and_sends_again_at_once():
    reg = registration(expires=600)
    reg.start(0.0)
    assert expires_of(reg.build_request(via=VIA)) == (f"{CONTACT};expires=600", "600")
    assert reg.receive_final(status=423, headers=ok(("Min-Expires", "1800")), now=1.0) is True
    assert (reg.state, reg.status.requested, reg.status.failures, reg.status.last_status) == (
        S.REGISTERING, 1800, 0, 423)
    request = reg.build_request(via=VIA)
    assert (request.headers.get("CSeq"), *expires_of(request)) == ("2 REGISTER", f"{CONTACT};expires=1800", "1800")
    reg.receive_final(status=200, headers=ok(("Contact", f"{CONTACT};expires=1800")), now=2.0)
    assert (reg.status.interval, reg.next_deadline()) == (1800, 902.0)
    # The raised interval stays for the refreshes.
    assert reg.handle_timer(902.0) is True
    assert expires_of(reg.build_request(via=VIA)) == (f"{CONTACT};expires=1800", "1800")
    # ... and a refresh may be raised again.
    assert reg.receive_final(status=423, headers=ok(("Min-Expires", "3600")), now=903.0) is True
    assert (reg.state, reg.status.requested) == (S.REFRESHING, 3600)


def test_423_is_followed_at_most_max_interval_raises_times_in_a_row():
    reg = registration(expires=600, max_interval_raises=3)
    reg.start(0.0)
    sent = [reg.receive_final(status=423, headers=ok(("Min-Expires", str(value))), now=1.0)
            for value in (1200, 2400, 4800, 9600)]
    assert sent == [True, True, True, False]
    assert (reg.state, reg.status.requested, reg.status.failures, reg.status.last_status) == (
        S.RETRY_WAIT, 4800, 1, 423)
    # Another answer in between starts the count again.
    reg.handle_timer(6.0)
    reg.receive_final(status=503, headers=ok(), now=7.0)
    reg.handle_timer(17.0)
    assert reg.receive_final(status=423, headers=ok(("Min-Expires", "9600")), now=18.0) is True


@pytest.mark.parametrize("fields", [
    [],                            # no Min-Expires: nothing to follow
    [("Min-Expires", "later")],
    [("Min-Expires", "600")],      # not above what we asked: it would loop
    [("Min-Expires", "300")],
    [("Min-Expires", "86401")],    # above max_expires
], ids=["absent", "malformed", "same", "lower", "above-cap"])
def test_a_423_we_cannot_follow_is_a_failure(fields):
    reg = registration(expires=600)
    reg.start(0.0)
    assert reg.receive_final(status=423, headers=Headers(fields), now=1.0) is False
    assert (reg.state, reg.status.requested, reg.status.failures, reg.next_deadline()) == (
        S.RETRY_WAIT, 600, 1, 6.0)


# -- failures and backoff ------------------------------------------------------------


def test_backoff_schedule():
    reg = registration(retry_initial=5.0, retry_max=40.0)
    reg.start(0.0)
    now = 0.0
    schedule = []
    for status, fields in [
        (403, []),
        (408, None),                                        # a transaction timeout
        (503, [("Retry-After", "30")]),                     # max(30, backoff 20)
        (500, []),                                          # 40: the backoff reaches retry_max
        (503, [("Retry-After", "600")]),                    # bounded by retry_max
        (480, [("Retry-After", "5")]),                      # never below the backoff
        (401, []),                                          # credentials refused in the end
        (302, [("Contact", "<sip:elsewhere.example.net>")]),  # redirections are not followed
        (503, [("Retry-After", "7 (maintenance);duration=60")]),
    ]:
        assert reg.receive_final(status=status, headers=None if fields is None else Headers(fields), now=now) is False
        assert reg.state is S.RETRY_WAIT
        delay = reg.next_deadline() - now
        schedule.append((status, reg.status.failures, delay))
        now = reg.next_deadline()
        assert reg.handle_timer(now) is True and reg.state is S.REGISTERING
        now += 1.0  # the answer comes a second later
    assert schedule == [
        (403, 1, 5.0), (408, 2, 10.0), (503, 3, 30.0), (500, 4, 40.0), (503, 5, 40.0),
        (480, 6, 40.0), (401, 7, 40.0), (302, 8, 40.0), (503, 9, 40.0)]
    # A success resets the count and the backoff.
    reg.receive_final(status=200, headers=ok(("Expires", "60")), now=now)
    assert (reg.status.failures, reg.status.last_status) == (0, 200)
    reg.handle_timer(now + 30.0)
    reg.receive_final(status=503, headers=ok(), now=now + 31.0)
    assert reg.next_deadline() == now + 36.0


def test_the_first_retry_after_uses_it_when_longer_than_the_backoff():
    reg = registration(retry_initial=5.0, retry_max=300.0)
    reg.start(0.0)
    reg.receive_final(status=503, headers=ok(("Retry-After", "120")), now=2.0)
    assert reg.next_deadline() == 122.0
    assert reg.describe(2.0) == "registration to sip:trunk.example.net failing (503, retry in 120 s)"


# -- stopping --------------------------------------------------------------------------


def test_stop_when_registered_removes_the_binding():
    reg = registration()
    reg.start(0.0)
    reg.build_request(via=VIA)
    reg.receive_final(status=200, headers=ok(), now=1.0)
    assert reg.stop(100.0) is True and reg.state is S.UNREGISTERING
    request = reg.build_request(via=VIA)
    assert (request.headers.get("CSeq"), *expires_of(request)) == ("2 REGISTER", f"{CONTACT};expires=0", "0")
    assert reg.describe(100.0) == "unregistering from sip:trunk.example.net"
    assert reg.stop(100.5) is False and reg.state is S.UNREGISTERING  # stopping again changes nothing
    assert reg.receive_final(status=200, headers=ok(), now=101.0) is False
    assert reg.status == RegistrationStatus(
        state=S.UNREGISTERED, registered=False, expires_at=None, next_register_at=None, last_status=200,
        failures=0, interval=3600, requested=3600)
    assert reg.next_deadline() is None
    assert reg.describe(101.0) == "unregistered from sip:trunk.example.net"
    assert reg.awaiting_response is False  # a late response is dropped by the caller


@pytest.mark.parametrize("status", [403, 408, 423, 500])
def test_any_final_response_ends_the_removal(status):
    reg = registration_in(S.UNREGISTERING)
    assert reg.receive_final(status=status, headers=ok(("Min-Expires", "7200")), now=3.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.UNREGISTERED, False, None)


def test_the_binding_lapsing_during_the_removal_only_changes_the_status():
    reg = registration()
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "120")), now=0.0)
    reg.handle_timer(60.0)
    assert reg.stop(100.0) is False and reg.state is S.UNREGISTER_PENDING
    assert reg.next_deadline() == 120.0
    assert reg.handle_timer(120.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.UNREGISTER_PENDING, False, None)
    assert reg.receive_final(status=200, headers=ok(("Expires", "120")), now=121.0) is True
    assert (reg.state, reg.status.expires_at, reg.next_deadline()) == (S.UNREGISTERING, 241.0, 241.0)
    assert reg.handle_timer(241.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.UNREGISTERING, False, None)
    assert reg.receive_final(status=408, headers=None, now=250.0) is False and reg.state is S.UNREGISTERED


@pytest.mark.parametrize("state", [S.IDLE, S.RETRY_WAIT])
def test_stop_with_nothing_registered_sends_nothing(state):
    reg = registration_in(state)
    assert reg.stop(5.0) is False
    assert (reg.state, reg.next_deadline()) == (S.UNREGISTERED, None)


def test_stop_during_the_first_register_waits_for_its_answer():
    reg = registration(expires=600)
    reg.start(0.0)
    reg.build_request(via=VIA)
    assert reg.stop(0.5) is False and reg.state is S.UNREGISTER_PENDING
    assert reg.awaiting_response
    # The UA's digest retry of the request in flight is still that registration.
    assert expires_of(reg.build_request(via=VIA)) == (f"{CONTACT};expires=600", "600")
    assert reg.receive_final(status=200, headers=ok(), now=1.0) is True
    assert (reg.state, reg.status.registered) == (S.UNREGISTERING, True)
    request = reg.build_request(via=VIA)
    assert (request.headers.get("CSeq"), *expires_of(request)) == ("3 REGISTER", f"{CONTACT};expires=0", "0")
    assert reg.receive_final(status=200, headers=ok(), now=2.0) is False and reg.state is S.UNREGISTERED


def test_stop_during_a_refresh_that_fails_sends_nothing_more():
    reg = registration_in(S.REFRESHING)
    assert reg.stop(302.0) is False and reg.state is S.UNREGISTER_PENDING
    assert reg.receive_final(status=503, headers=ok(), now=303.0) is False
    assert (reg.state, reg.status.registered, reg.next_deadline()) == (S.UNREGISTERED, False, None)


def test_stop_after_the_binding_lapsed_sends_nothing():
    reg = registration(retry_initial=200.0, retry_max=300.0)
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(("Expires", "120")), now=0.0)
    reg.handle_timer(60.0)
    reg.receive_final(status=503, headers=ok(), now=61.0)  # retry at 261, binding lapses at 120
    assert reg.stop(130.0) is False and reg.state is S.UNREGISTERED


# -- reporting ---------------------------------------------------------------------------


@pytest.mark.parametrize("state, now, text", [
    (S.IDLE, 0.0, "not registered to sip:trunk.example.net (not started)"),
    (S.REGISTERING, 0.0, "registering to sip:trunk.example.net"),
    (S.REGISTERED, 15.5, "registered to sip:trunk.example.net (expires in 586 s)"),
    (S.REFRESHING, 301.0, "registered to sip:trunk.example.net (expires in 300 s, refreshing)"),
    (S.RETRY_WAIT, 2.0, "registration to sip:trunk.example.net failing (503, retry in 4 s)"),
    (S.UNREGISTER_PENDING, 1.0, "unregistering from sip:trunk.example.net"),
    (S.UNREGISTERING, 2.0, "unregistering from sip:trunk.example.net"),
    (S.UNREGISTERED, 0.0, "unregistered from sip:trunk.example.net"),
    (S.ERROR, 0.0, "registration to sip:trunk.example.net stopped on an internal error"),
])
def test_describe(state, now, text):
    assert registration_in(state).describe(now) == text


def test_describe_a_registration_retrying_after_failures():
    reg = registration_in(S.RETRY_WAIT)
    reg.handle_timer(6.0)
    assert reg.describe(6.0) == "registering to sip:trunk.example.net (after 1 failed, last 503)"


def test_describe_the_documented_example():
    reg = registration()
    reg.start(0.0)
    reg.receive_final(status=200, headers=ok(), now=0.0)
    assert reg.describe(15.0) == "registered to sip:trunk.example.net (expires in 3585 s)"


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"registrar": "tel:+33123456789"}, "registrar 'tel:+33123456789': registrar must be a sip: or sips: URI"),
    ({"registrar": "http://trunk.example.net"},
     "registrar 'http://trunk.example.net': unsupported URI scheme 'http' in registrar"),
    ({"registrar": "sip:0123@trunk.example.net"},
     "registrar 'sip:0123@trunk.example.net': a registrar URI has no user part (RFC 3261 §10.2)"),
    ({"aor": "trunk.example.net"}, "aor 'trunk.example.net': address of record 'trunk.example.net' has no scheme"),
    ({"contact": "sip:eko@"}, "contact 'sip:eko@': bad host in contact ''"),
    ({"expires": 0}, "expires must be a whole number at least 1, not 0"),
    ({"expires": 60.5}, "expires must be a whole number at least 1, not 60.5"),
    ({"max_expires": 2**32}, "max_expires must be a whole number within 1..4294967295, not 4294967296"),
    ({"expires": 90000}, "expires (90000) is above max_expires (86400)"),
    ({"refresh_margin": 1.0}, "'refresh_margin' must be < 1.0: 1.0"),
    ({"retry_initial": 0.0}, "'retry_initial' must be > 0.0: 0.0"),
    ({"retry_max": 1.0}, "retry_max (1.0) is below retry_initial (5.0)"),
    ({"max_interval_raises": -1}, "max_interval_raises must be a whole number at least 0, not -1"),
    ({"user_agent": "Eko\r\nX: y"}, "user_agent must be printable text on one line, not 'Eko\\r\\nX: y'"),
])
def test_settings_are_checked(changes, message):
    with pytest.raises(ValueError) as caught:
        attrs.evolve(SETTINGS, **changes)
    assert str(caught.value) == message


def test_registrar_with_port_and_sips_addresses():
    reg = Registration(RegistrationSettings(registrar="sip:192.0.2.1:5060", aor="sips:eko@Trunk.Example.NET",
                                            contact="sips:eko@198.51.100.7:5061", expires=300),
                       call_id="c", from_tag="t")
    reg.start(0.0)
    request = reg.build_request(via=VIA)
    assert (request.uri, request.headers.get("To"), request.headers.get("Contact")) == (
        "sip:192.0.2.1:5060", "<sips:eko@trunk.example.net>", "<sips:eko@198.51.100.7:5061>;expires=300")


@pytest.mark.parametrize("call_id, from_tag, message", [
    ("two words", "t", "call_id 'two words' is not a Call-ID"),
    ("", "t", "call_id '' is not a Call-ID"),
    ("c", "a;b", "from_tag 'a;b' is not a token"),
])
def test_identifiers_are_checked(call_id, from_tag, message):
    with pytest.raises(ValueError) as caught:
        Registration(SETTINGS, call_id=call_id, from_tag=from_tag)
    assert str(caught.value) == message
