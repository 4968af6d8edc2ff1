"""The transfer decision and targets: (hours, load, clocks) -> Decision; config -> targets or an exact error."""

from __future__ import annotations

import datetime

import pytest

from eko_rtp.transfer.hours import BusinessHours
from eko_rtp.transfer.load import LoadWindow
from eko_rtp.transfer.policy import Decision, TransferTargets, decide

HOURS = BusinessHours.default()


def unix(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


OPEN = unix("2026-01-05T10:00:00Z")  # Monday 11:00 CET
CLOSED = unix("2026-01-05T19:00:00Z")  # Monday 20:00 CET
HOLIDAY = unix("2026-12-25T10:00:00Z")  # Christmas, a Friday

# Each case: transfers already taken (monotonic times) in a 2-in-600 s window, the
# wall time and monotonic time of the decision, the decision and the load after it.
CASES = [
    ("open and free", [], OPEN, 1000.0, Decision.TRANSFER, 1),
    ("open, one slot left", [900.0], OPEN, 1000.0, Decision.TRANSFER, 2),
    ("open and full", [900.0, 950.0], OPEN, 1000.0, Decision.BUSY, 2),
    ("open, full until a slot frees", [900.0, 950.0], OPEN, 1500.0, Decision.TRANSFER, 2),
    ("closed and free: no slot taken", [], CLOSED, 1000.0, Decision.CLOSED, 0),
    ("closed and full: closed wins", [900.0, 950.0], CLOSED, 1000.0, Decision.CLOSED, 2),
    ("a holiday", [], HOLIDAY, 1000.0, Decision.CLOSED, 0),
]


@pytest.mark.parametrize("name, taken, wall_time, now, decision, load_after", CASES, ids=[case[0] for case in CASES])
def test_decide(name, taken, wall_time, now, decision, load_after):
    load = LoadWindow(limit=2, window=600.0)
    for moment in taken:
        load.record(moment)
    assert decide(hours=HOURS, load=load, wall_time=wall_time, now=now) is decision
    assert load.in_window(now) == load_after


def test_decide_with_limit_zero_is_busy_when_open():
    load = LoadWindow(limit=0)
    assert decide(hours=HOURS, load=load, wall_time=OPEN, now=0.0) is Decision.BUSY
    assert decide(hours=HOURS, load=load, wall_time=CLOSED, now=0.0) is Decision.CLOSED


def test_decision_values_are_log_labels():
    assert [decision.value for decision in Decision] == ["transfer", "closed", "busy"]


TARGETS = TransferTargets.from_settings({
    "internet": "sip:internet@pbx.example.fr",
    "default": "sips:support@pbx.example.fr:5061;transport=tls",
}, "transfer.targets")


@pytest.mark.parametrize("queue, target", [
    ("internet", "sip:internet@pbx.example.fr"),
    ("mobile", "sips:support@pbx.example.fr:5061;transport=tls"),  # not set: default
    (None, "sips:support@pbx.example.fr:5061;transport=tls"),
    ("television", "sips:support@pbx.example.fr:5061;transport=tls"),  # unknown: default
    ("default", "sips:support@pbx.example.fr:5061;transport=tls"),
])
def test_target_for(queue, target):
    assert TARGETS.target_for(queue) == target


def test_every_queue_set():
    targets = TransferTargets.from_settings({
        "internet": "sip:6001@10.0.0.5", "mobile": "sip:6002@10.0.0.5", "default": "sip:6000@10.0.0.5",
    }, "transfer.targets")
    assert targets == TransferTargets(internet="sip:6001@10.0.0.5", mobile="sip:6002@10.0.0.5",
                                      default="sip:6000@10.0.0.5")
    assert [targets.target_for(queue) for queue in ("internet", "mobile", None)] == [
        "sip:6001@10.0.0.5", "sip:6002@10.0.0.5", "sip:6000@10.0.0.5"]
    assert targets.configured


@pytest.mark.parametrize("mapping", [{}, {"default": ""}, {"internet": "", "mobile": "", "default": ""}])
def test_not_configured(mapping):
    targets = TransferTargets.from_settings(mapping, "transfer.targets")
    assert not targets.configured
    with pytest.raises(LookupError) as raised:
        targets.target_for("internet")
    assert str(raised.value) == "no transfer target is configured"


@pytest.mark.parametrize("mapping, message", [
    ({"default": "http://pbx.example.fr/support"},
     "transfer.targets.default: 'http://pbx.example.fr/support' is not a sip: or sips: URI "
     "(unsupported URI scheme 'http' in transfer target)"),
    ({"default": "tel:+33123456789"},
     "transfer.targets.default: 'tel:+33123456789' is not a sip: or sips: URI (a tel: URI has no host)"),
    ({"default": "support@pbx.example.fr"},
     "transfer.targets.default: 'support@pbx.example.fr' is not a sip: or sips: URI "
     "(transfer target 'support@pbx.example.fr' has no scheme)"),
    ({"default": "sip:"},
     "transfer.targets.default: 'sip:' is not a sip: or sips: URI (bad transfer target 'sip:')"),
    ({"internet": "sip:support@pbx example.fr", "default": "sip:6000@10.0.0.5"},
     "transfer.targets.internet: 'sip:support@pbx example.fr' is not a sip: or sips: URI "
     "(bad transfer target 'sip:support@pbx example.fr')"),
    ({"mobile": "sip:6002@10.0.0.5:70000", "default": "sip:6000@10.0.0.5"},
     "transfer.targets.mobile: 'sip:6002@10.0.0.5:70000' is not a sip: or sips: URI "
     "(bad port in transfer target '10.0.0.5:70000')"),
    ({"default": 6000},
     "transfer.targets.default: expected a sip: or sips: URI, got int 6000"),
    ({"fixe": "sip:6003@10.0.0.5", "default": "sip:6000@10.0.0.5"},
     "transfer.targets.fixe: unknown queue 'fixe' (expected internet, mobile, default)"),
    ({"internet": "sip:6001@10.0.0.5"},
     "transfer.targets.default: needed when transfer.targets.internet is set "
     "(callers whose queue is not known are sent there)"),
    ({"mobile": "sip:6002@10.0.0.5", "default": ""},
     "transfer.targets.default: needed when transfer.targets.mobile is set "
     "(callers whose queue is not known are sent there)"),
])
def test_from_settings_errors(mapping, message):
    with pytest.raises(ValueError) as raised:
        TransferTargets.from_settings(mapping, "transfer.targets")
    assert str(raised.value) == message


def test_from_settings_needs_a_table():
    with pytest.raises(ValueError) as raised:
        TransferTargets.from_settings("sip:6000@10.0.0.5", "transfer.targets")  # type: ignore[arg-type]
    assert str(raised.value) == "transfer.targets: expected a table of queue = 'sip:...', got str"


@pytest.mark.parametrize("arguments, message", [
    ({"default": "mailto:support@example.fr"},
     "default: 'mailto:support@example.fr' is not a sip: or sips: URI "
     "(unsupported URI scheme 'mailto' in transfer target)"),
    ({"internet": "sip:6001@10.0.0.5"},
     "default: needed when internet is set (callers whose queue is not known are sent there)"),
])
def test_constructor_validates(arguments, message):
    with pytest.raises(ValueError) as raised:
        TransferTargets(**arguments)
    assert str(raised.value) == message
