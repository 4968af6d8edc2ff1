"""The host's wake-up lateness on the server's CPU: the floor under every deviation figure.

Why: a frame can leave no earlier than the moment the kernel runs the server again
after its sleep. In a virtual machine that moment depends on the host too: when
the host is busy, a timer due at ``t`` wakes the guest process milliseconds later,
and no server code can do anything about it. The same 500-call command gave p99
deviations from 0.7 to 2.8 ms within an hour on this project's machine. So the
bench measures that floor on the server's CPUs, with nothing of ours running
there, right before and right after the target runs, and prints it next to the
results: a server max close to the probe's says host; one far above it says server.

The probe is a child process that pins itself to those CPUs. It sets its timer
slack to 1 ns (the server's frame clock sleeps on a timerfd, which has no slack, so
the default 50 µs slack would make the probe look worse than the server's clock)
and sleeps to absolute deadlines ``PERIOD`` apart, noting how late each wake-up
was. Bounded: at most ``MAX_SECONDS``.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

from eko_bench import stats

PERIOD = 0.005  # s between deadlines: 200 wake-ups a second
MAX_SECONDS = 30.0
_PR_SET_TIMERSLACK = 29
_NS_TO_MS = 1e-6


def probe(seconds: float, *, period: float = PERIOD) -> list[int]:
    """Sleep to deadlines ``period`` apart for ``seconds``; each wake-up's lateness in ns."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"probe seconds must be in (0, {MAX_SECONDS:g}], not {seconds!r}")
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the default slack stays, and the figures say a little more than the truth
    clock = time.perf_counter_ns
    period_ns = int(period * 1e9)
    count = max(1, int(seconds / period))
    lateness = []
    deadline = clock()
    for _ in range(count):
        deadline += period_ns
        remaining = deadline - clock()
        if remaining > 0:
            time.sleep(remaining / 1e9)
        lateness.append(max(0, clock() - deadline))
    return lateness


def summarise(lateness_ns: list[int], *, cpus, seconds: float) -> dict:
    """Nearest-rank lateness figures in ms, with the CPUs the probe ran on."""
    found = stats.distribution(lateness_ns).scaled(_NS_TO_MS)
    return {"cpus": sorted(cpus), "seconds": seconds, "wakeups": found.count,
            "lateness_ms": {"p50": found.p50, "p90": found.p90, "p99": found.p99, "max": found.max}}


def measure(cpus: set[int], seconds: float) -> dict:
    """Run the probe in a child pinned to ``cpus``; its summary (see :func:`summarise`)."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"probe seconds must be in (0, {MAX_SECONDS:g}], not {seconds!r}")
    # The child pins itself (no preexec_fn: the bench calls this from a worker thread).
    done = subprocess.run(
        [sys.executable, "-m", "eko_bench.noise", str(seconds), ",".join(map(str, sorted(cpus)))],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=seconds + 20, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the wake-up probe failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    found = json.loads(done.stdout)
    return summarise(found["lateness_ns"], cpus=found["cpus"], seconds=seconds)


def describe(summary: dict, when: str) -> str:
    """One line for people."""
    late = summary["lateness_ms"]
    cpus = ",".join(map(str, summary["cpus"]))
    return (f"host wake-up lateness on CPU {cpus} {when} ({summary['wakeups']} sleeps of {PERIOD * 1000:g} ms, no"
            f" work of ours there): p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms, max {late['max']:.2f} ms")


if __name__ == "__main__":
    os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[2].split(",")})
    print(json.dumps({"cpus": sorted(os.sched_getaffinity(0)), "lateness_ns": probe(float(sys.argv[1]))}))
