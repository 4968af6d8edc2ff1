"""The user agent's one deadline structure: (operations) -> exact next deadline and due keys."""

from __future__ import annotations

import pytest

from eko_rtp.sip.deadlines import Deadlines

# Each case: operations in order, then what next_deadline() says and what pop_due(now) hands back.
#   ("at", key, t): schedule key at t; ("at", key, None): the same as cancel; ("cancel", key).
CASES = [
    ("nothing armed", [], None, 100.0, []),
    ("one key", [("at", "a", 5.0)], 5.0, 5.0, ["a"]),
    ("not yet due", [("at", "a", 5.0)], 5.0, 4.999, []),
    ("earliest first", [("at", "b", 7.0), ("at", "a", 5.0), ("at", "c", 6.0)], 5.0, 10.0, ["a", "c", "b"]),
    ("ties in arming order", [("at", "b", 5.0), ("at", "a", 5.0), ("at", "c", 5.0)], 5.0, 5.0, ["b", "a", "c"]),
    ("only what is due", [("at", "a", 1.0), ("at", "b", 2.0), ("at", "c", 3.0)], 1.0, 2.0, ["a", "b"]),
    ("moved later", [("at", "a", 1.0), ("at", "b", 2.0), ("at", "a", 3.0)], 2.0, 10.0, ["b", "a"]),
    ("moved earlier", [("at", "a", 5.0), ("at", "b", 2.0), ("at", "a", 1.0)], 1.0, 10.0, ["a", "b"]),
    ("moved to the same time re-arms it last", [("at", "a", 1.0), ("at", "b", 1.0), ("at", "a", 1.0)], 1.0, 1.0,
     ["b", "a"]),
    ("cancelled", [("at", "a", 1.0), ("at", "b", 2.0), ("cancel", "a")], 2.0, 10.0, ["b"]),
    ("cancel of nothing", [("cancel", "a"), ("at", "b", 2.0)], 2.0, 10.0, ["b"]),
    ("None cancels", [("at", "a", 1.0), ("at", "a", None)], None, 10.0, []),
    ("cancelled then re-armed", [("at", "a", 1.0), ("cancel", "a"), ("at", "a", 4.0)], 4.0, 10.0, ["a"]),
    ("tuple keys", [("at", ("call", "no ACK"), 32.0), ("at", ("call", "2xx"), 0.5)], 0.5, 32.0,
     [("call", "2xx"), ("call", "no ACK")]),
]


def apply(deadlines: Deadlines, operations: list[tuple]) -> None:
    for operation, key, *at in operations:
        if operation == "at":
            deadlines.schedule(key, at[0])
        else:
            deadlines.cancel(key)


@pytest.mark.parametrize("name, operations, next_deadline, now, due", CASES, ids=[case[0] for case in CASES])
def test_operations(name, operations, next_deadline, now, due):
    deadlines = Deadlines()
    apply(deadlines, operations)
    assert deadlines.next_deadline() == next_deadline
    assert deadlines.pop_due(now) == due
    assert not any(key in deadlines for key in due)  # popped keys are disarmed
    assert deadlines.pop_due(now) == []


def test_deadline_of_a_key_len_and_contains():
    deadlines = Deadlines()
    apply(deadlines, [("at", "a", 3.0), ("at", "b", 1.0), ("at", "a", 2.0), ("cancel", "b")])
    assert (deadlines.deadline("a"), deadlines.deadline("b"), len(deadlines)) == (2.0, None, 1)
    assert "a" in deadlines and "b" not in deadlines


def test_popped_keys_can_be_rearmed_by_their_handler():
    deadlines = Deadlines()
    deadlines.schedule("retransmit", 0.5)
    fired = []
    for _ in range(4):
        now = deadlines.next_deadline()
        for key in deadlines.pop_due(now):
            fired.append((now, key))
            deadlines.schedule(key, now * 2 + 0.5)  # a handler arms the next one
    assert fired == [(0.5, "retransmit"), (1.5, "retransmit"), (3.5, "retransmit"), (7.5, "retransmit")]


def test_moving_a_deadline_again_and_again_keeps_the_heap_bounded():
    # A peer can make us move a session expiry on every message: stale entries must not pile up.
    deadlines = Deadlines()
    deadlines.schedule("other", 1e9)
    for step in range(10_000):
        deadlines.schedule("expiry", 1000.0 + step)
    assert len(deadlines._heap) <= 2 * len(deadlines) + 64 + 1
    assert deadlines.next_deadline() == 1000.0 + 9_999
    assert deadlines.pop_due(2e9) == ["expiry", "other"]
