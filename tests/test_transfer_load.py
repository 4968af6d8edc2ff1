"""Technician load: (limit, window, operations at monotonic times) -> exact answers."""

from __future__ import annotations

import pytest

from eko_rtp.transfer.load import LoadWindow

# Each case: limit, window, then steps (operation, now, expected answer).
#   "take": try_take(now); "allows": allows(now); "count": in_window(now);
#   "free": next_free(now); "record": record(now), which answers None.
CASES = [
    ("five in 600 s, the sixth refused, free again at first + 600", 5, 600.0, [
        ("take", 100.0, True), ("take", 160.0, True), ("take", 220.0, True), ("take", 280.0, True),
        ("count", 280.0, 4), ("free", 280.0, 280.0),
        ("take", 340.0, True),
        ("take", 341.0, False), ("count", 341.0, 5), ("free", 341.0, 700.0),
        ("allows", 699.999, False), ("take", 699.999, False),
        ("allows", 700.0, True), ("count", 700.0, 4), ("take", 700.0, True),
        ("take", 700.0, False), ("free", 700.0, 760.0),
        ("take", 760.0, True), ("count", 760.0, 5), ("free", 760.0, 820.0),
    ]),
    ("a refused try takes no slot", 2, 10.0, [
        ("take", 0.0, True), ("take", 1.0, True),
        ("take", 2.0, False), ("take", 3.0, False), ("take", 9.0, False),
        ("take", 10.0, True), ("free", 10.0, 11.0), ("take", 11.0, True), ("count", 11.0, 2),
    ]),
    ("the window slides: all gone after one window", 3, 60.0, [
        ("take", 0.0, True), ("take", 0.0, True), ("take", 0.0, True), ("take", 30.0, False),
        ("count", 59.5, 3), ("count", 60.0, 0), ("free", 60.0, 60.0),
    ]),
    ("limit 0 never transfers", 0, 600.0, [
        ("allows", 0.0, False), ("take", 0.0, False), ("count", 0.0, 0), ("free", 0.0, None),
        ("take", 1e9, False), ("free", 1e9, None),
    ]),
    ("limit 1", 1, 5.0, [
        ("take", 0.0, True), ("take", 4.9, False), ("free", 4.9, 5.0), ("take", 5.0, True),
    ]),
    ("a forced record counts, and past the limit forgets the oldest", 2, 10.0, [
        ("record", 0.0, None), ("record", 1.0, None), ("record", 2.0, None), ("count", 2.0, 2),
        ("allows", 10.0, False), ("free", 10.0, 11.0), ("allows", 11.0, True), ("count", 11.0, 1),
    ]),
    ("fractional window", 1, 0.25, [
        ("take", 1.0, True), ("take", 1.2, False), ("free", 1.2, 1.25), ("take", 1.25, True),
    ]),
]


@pytest.mark.parametrize("name, limit, window, steps", CASES, ids=[case[0] for case in CASES])
def test_sliding_window(name, limit, window, steps):
    load = LoadWindow(limit, window)
    answers = []
    for operation, now, _ in steps:
        if operation == "take":
            answers.append(load.try_take(now))
        elif operation == "allows":
            answers.append(load.allows(now))
        elif operation == "count":
            answers.append(load.in_window(now))
        elif operation == "free":
            answers.append(load.next_free(now))
        else:
            answers.append(load.record(now))
    assert answers == [expected for _, _, expected in steps]


def test_defaults_are_five_in_ten_minutes():
    load = LoadWindow()
    assert (load.limit, load.window) == (5, 600.0)


def test_memory_is_bounded_by_the_limit():
    load = LoadWindow(limit=5, window=1e9)
    for second in range(10_000):
        load.record(float(second))
        assert len(load._recent) <= 5
    assert list(load._recent) == [9995.0, 9996.0, 9997.0, 9998.0, 9999.0]
    assert load.in_window(10_000.0) == 5
    assert load.next_free(10_000.0) == 9995.0 + 1e9


def test_a_clock_going_backwards_is_refused():
    load = LoadWindow(limit=5, window=600.0)
    load.record(100.0)
    with pytest.raises(ValueError) as raised:
        load.record(99.0)
    assert str(raised.value) == "transfer recorded at 99.0, before the last one at 100.0: " \
                                "now must come from one monotonic clock"
    assert load.in_window(100.0) == 1


@pytest.mark.parametrize("limit, window, message", [
    (-1, 600.0, "transfer limit must be a whole number >= 0 (0 turns transfers off), not -1"),
    (2.5, 600.0, "transfer limit must be a whole number >= 0 (0 turns transfers off), not 2.5"),
    (True, 600.0, "transfer limit must be a whole number >= 0 (0 turns transfers off), not True"),
    (5, 0.0, "transfer window must be a number of seconds > 0, not 0.0"),
    (5, -600, "transfer window must be a number of seconds > 0, not -600"),
    (5, float("inf"), "transfer window must be a number of seconds > 0, not inf"),
    (5, float("nan"), "transfer window must be a number of seconds > 0, not nan"),
    (5, "600", "transfer window must be a number of seconds > 0, not '600'"),
])
def test_invalid_settings(limit, window, message):
    with pytest.raises(ValueError) as raised:
        LoadWindow(limit, window)
    assert str(raised.value) == message


def test_integer_window_is_taken():
    assert LoadWindow(limit=3, window=60).window == 60.0
