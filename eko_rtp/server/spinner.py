"""The keep-awake spinner: a process that runs only when its CPU would otherwise halt.

Run as ``python -m eko_rtp.server.spinner CPU PARENT_PID`` by
:mod:`eko_rtp.server.awake`. In this order, and exiting (status 2, the reason on
stderr) at the first step that fails, so that it never spins at normal priority:

1. check that its parent is ``PARENT_PID`` (it may already have died);
2. pin itself to ``CPU`` (unless it already is, having inherited its parent's one CPU);
3. switch to ``SCHED_IDLE``: the kernel runs it only when nothing else on that CPU
   wants to run, and a waking task of any other policy preempts it at once;
4. write ``ready`` on stdout, close it, and spin.

Its whole work is step 4: as long as it spins, the CPU's idle loop never runs, so
the virtual CPU never halts and the server's wake-ups do not wait for the host to
resume it (see the theory in :mod:`eko_rtp.server.awake`). Every few milliseconds
of spinning it checks that its parent is still there, and exits once it is not (a
server killed with SIGKILL leaves no spinner behind). ``PR_SET_PDEATHSIG`` would not
do: it fires when the parent *thread* ends, and trio starts processes from worker
threads that end after ten idle seconds.
"""

from __future__ import annotations

import os
import sys

EXIT_REFUSED = 2
SPINS_PER_CHECK = 100_000  # empty loop turns between parent checks: a few ms of CPython


def _refuse(message: str) -> int:
    print(f"eko-rtp spinner: {message}", file=sys.stderr, flush=True)
    return EXIT_REFUSED


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit() or not argv[1].isdigit():
        return _refuse(f"usage: python -m eko_rtp.server.spinner CPU PARENT_PID, got {argv!r}")
    cpu, parent = int(argv[0]), int(argv[1])
    if os.getppid() != parent:
        return _refuse(f"parent {parent} is gone")
    try:
        if os.sched_getaffinity(0) != {cpu}:  # a server pinned to one CPU (CPUAffinity=) needs no call
            os.sched_setaffinity(0, {cpu})
    except OSError as error:
        return _refuse(f"cannot pin to CPU {cpu}: {error.strerror}")
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as error:
        return _refuse(f"cannot switch to SCHED_IDLE: {error.strerror}")
    sys.stdout.write("ready\n")
    sys.stdout.close()  # flushed and closed: nothing left for Python to flush at exit
    spins = range(SPINS_PER_CHECK)
    while os.getppid() == parent:
        for _ in spins:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
