"""The host wake-up probe the bench runs on the server's CPUs before and after a run."""

import os

import pytest

from eko_bench import noise


def test_the_probe_sleeps_to_each_deadline_and_notes_how_late_it_woke():
    lateness = noise.probe(0.1, period=0.005)
    assert len(lateness) == 20
    assert all(isinstance(value, int) and value >= 0 for value in lateness)
    assert sorted(lateness)[10] < 50_000_000  # a median wake-up 50 ms late would be no sleep at all


@pytest.mark.parametrize("seconds", [0, -1, noise.MAX_SECONDS + 1])
def test_the_probe_is_bounded(seconds):
    with pytest.raises(ValueError, match=r"probe seconds must be in \(0, 30\]"):
        noise.probe(seconds)
    with pytest.raises(ValueError, match=r"probe seconds must be in \(0, 30\]"):
        noise.measure({0}, seconds)


def test_measure_runs_a_child_pinned_to_the_cpus_it_was_given():
    cpu = min(os.sched_getaffinity(0))
    summary = noise.measure({cpu}, 0.25)
    assert summary["cpus"] == [cpu]  # what the child itself saw
    assert summary["wakeups"] == 50 and summary["seconds"] == 0.25
    late = summary["lateness_ms"]
    assert 0 <= late["p50"] <= late["p90"] <= late["p99"] <= late["max"]


def test_summary_and_line_for_people():
    summary = noise.summarise([125_000] * 98 + [2_000_000, 5_000_000], cpus={0}, seconds=0.5)
    assert summary == {"cpus": [0], "seconds": 0.5, "wakeups": 100,
                       "lateness_ms": {"p50": 0.125, "p90": 0.125, "p99": 2.0, "max": 5.0}}
    assert noise.describe(summary, "before the run") == (
        "host wake-up lateness on CPU 0 before the run (100 sleeps of 5 ms, no work of ours there):"
        " p50 0.12 ms, p99 2.00 ms, max 5.00 ms")
