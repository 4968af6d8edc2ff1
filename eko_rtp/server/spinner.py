"""The keep-awake spinner: a process that runs only when its CPU would otherwise halt.

Run as ``python -m eko_rtp.server.spinner CPU PARENT_PID`` by
:mod:`eko_rtp.server.awake`. In this order, and exiting (status 2, the reason on
stderr) at the first step that fails, so that it never spins at normal priority:

1. check that its parent is ``PARENT_PID`` (it may already have died);
2. pin itself to ``CPU`` (unless it already is, having inherited its parent's one CPU);
3. switch to ``SCHED_IDLE``: the kernel runs it only when nothing else on that CPU
   wants to run, and a waking task of any other policy preempts it at once;
4. open its parent's ``/proc/<pid>/stat`` (see below);
5. write ``ready`` on stdout, close it, and spin.

Its whole work is step 5: as long as it spins, the CPU's idle loop never runs, so
the virtual CPU never halts and the server's wake-ups do not wait for the host to
resume it (see the theory in :mod:`eko_rtp.server.awake`). Every few milliseconds
of spinning it checks that its parent is still there, and exits once it is not (a
server killed with SIGKILL leaves no spinner behind). ``PR_SET_PDEATHSIG`` would not
do: it fires when the parent *thread* ends, and trio starts processes from worker
threads that end after ten idle seconds.

``SCHED_IDLE`` is not quite "only when nothing else wants to run": the fair
scheduler still owes an idle-policy task a tiny share, and pays it by taking the
CPU from a *busy* server for a whole slice (a few milliseconds in the middle of a
tick, seen as late frames on every call at a few hundred calls; docs/BENCHMARKS.md).
So every few tens of microseconds of spinning the spinner also reads its parent's
``/proc/<pid>/stat``: parent runnable (state R) and queued on this CPU means the
spinner was handed the CPU the server wants, and it sleeps ``YIELD_SECONDS`` instead
of spinning; the server runs again at once, and a sleeping idle-policy task that
wakes never preempts it.
"""

from __future__ import annotations

import os
import sys
import time

EXIT_REFUSED = 2
SPINS_PER_CHECK = 100_000  # empty loop turns between parent checks: a few ms of CPython
SPINS_PER_LOOK = 1_000  # empty loop turns between looks at the parent's state: tens of µs
YIELD_SECONDS = 0.001  # asleep while the parent waits for this CPU


def parent_waits_here(stat: bytes, cpu: int) -> bool:
    """Whether ``/proc/<pid>/stat`` says the process is runnable (R) and queued on ``cpu``.

    The state is field 3 and the CPU it last ran on field 39 (proc(5)); the command
    name in field 2 may hold spaces and parentheses, so fields count from the last ``)``.
    """
    _, paren, rest = stat.rpartition(b")")
    fields = rest.split()
    if not paren or len(fields) < 37:
        return False
    return fields[0] == b"R" and fields[36] == str(cpu).encode()


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
    try:
        stat = os.open(f"/proc/{parent}/stat", os.O_RDONLY)
    except OSError as error:
        return _refuse(f"cannot read the parent's state: {error.strerror}")
    sys.stdout.write("ready\n")
    sys.stdout.close()  # flushed and closed: nothing left for Python to flush at exit
    looks = range(SPINS_PER_CHECK // SPINS_PER_LOOK)
    spins = range(SPINS_PER_LOOK)
    try:
        while os.getppid() == parent:
            for _ in looks:
                for _ in spins:
                    pass
                try:
                    if parent_waits_here(os.pread(stat, 1024, 0), cpu):
                        time.sleep(YIELD_SECONDS)
                except OSError:
                    break  # the parent is gone: the outer check ends the spinner
    finally:
        os.close(stat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
