"""Does the keep-awake spinner take the CPU from a busy server? (eko_rtp/server/spinner.py)

    PYTHONPATH=. .venv/bin/python bench/spinner_probe.py [SECONDS] [SPINNER_SCRIPT]

This process plays a server that never sleeps: pinned to the first CPU it may use,
it starts the spinner for that CPU as its child (``python -m eko_rtp.server.spinner``,
or SPINNER_SCRIPT, e.g. an older spinner.py) and busy-loops for SECONDS (default 4),
noting every gap of more than 0.5 ms between two looks at the clock: time it did not
have the CPU. Prints the gaps and how long the spinner ran meanwhile
(``/proc/<pid>/schedstat``). Figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main(seconds: float, script: str | None) -> None:
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    command = [sys.executable, script] if script else [sys.executable, "-m", "eko_rtp.server.spinner"]
    spinner = subprocess.Popen(command + [str(cpu), str(os.getpid())], stdout=subprocess.PIPE)
    try:
        if spinner.stdout.readline() != b"ready\n":
            raise SystemExit("the spinner did not start")

        def ran_ns() -> int:
            with open(f"/proc/{spinner.pid}/schedstat") as handle:
                return int(handle.read().split()[0])

        before = ran_ns()
        started = last = time.perf_counter()
        gaps = []
        while last - started < seconds:
            now = time.perf_counter()
            if now - last > 0.0005:
                gaps.append(round((now - last) * 1e3, 2))
            last = now
        spinner_ms = (ran_ns() - before) / 1e6
    finally:
        spinner.kill()
        spinner.wait()
    print(f"CPU {cpu}, busy {seconds:g} s: the spinner ran {spinner_ms:.2f} ms; gaps over 0.5 ms: {len(gaps)}"
          f" {sorted(gaps, reverse=True)[:8]}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 4.0, sys.argv[2] if len(sys.argv) > 2 else None)
