"""The server's own CPUs: pinned to them (``media.cpus``) and kept awake (``media.keep_cpu_awake``).

Theory of operation: between two 1 ms ticks the server has nothing to do, so the
kernel's idle loop halts its CPU. On bare metal waking from a halt costs
microseconds; on a virtual machine a halted virtual CPU is a host thread that has
gone to sleep, and it runs again when the host scheduler gets round to it. On the
machine in ``docs/BENCHMARKS.md`` (a nested guest) a loop that works part of every
millisecond and sleeps to the next deadline woke milliseconds late with nothing else
on its CPU, and a tenth of that with a spinning process beside it (the figures are
in that document). Those late wake-ups are what the caller hears as jitter, and no
server code runs during them.

So, when asked, the server starts one spinner per CPU it is pinned to
(:mod:`eko_rtp.server.spinner`): a process with scheduling policy ``SCHED_IDLE``,
which the kernel runs only when nothing else on that CPU wants to, and which any
waking task of another policy preempts at once. The CPU then never idles, and so
never halts. The price: those CPUs show 100 % busy and draw power, and the host
cannot give their time to anyone else, so this is for CPUs dedicated to the server
(``media.cpus``, which install-service turns into the unit's ``CPUAffinity=``;
``taskset``; ``eko-bench --server-cpus``). A server allowed on every CPU of a
machine with more than one refuses to start with it, and says how to pin it. The server's own CPU figures are unchanged by the spinners:
they are separate processes.

The spinners die with the server: they are killed when this task ends, and each
exits by itself within milliseconds of its parent's death (a server killed with
SIGKILL leaves none behind).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Callable, Iterable

import trio

from eko_rtp.errors import UserError

log = logging.getLogger("eko_rtp.awake")

CONFIG_KEY = "media.keep_cpu_awake"
READY_TIMEOUT = 10.0  # s for a spinner to start Python, pin itself and say ready


def pin_to(cpus: frozenset[int]) -> None:
    """Run this process, and every thread it starts from now on, on ``cpus`` only.

    Called before the event loop starts, so no thread keeps the old mask. A server
    already there (``CPUAffinity=`` in the unit, ``taskset``) makes no system call:
    the unit's filter denies ``sched_setaffinity``.
    """
    if os.sched_getaffinity(0) == cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as error:
        raise UserError(
            f"cannot run on CPU(s) {cpu_list(sorted(cpus))}: {error.strerror} (under systemd the unit pins the server:"
            " run install-service again after changing media.cpus)",
            key="media.cpus",
        ) from None


def spinner_cpus(affinity: Iterable[int], machine_cpus: int) -> list[int]:
    """The CPUs to keep awake: the server's own, which must not be all of the machine's."""
    cpus = sorted(affinity)
    if not cpus:
        raise UserError("the server may run on no CPU at all", key=CONFIG_KEY)
    if machine_cpus > 1 and len(cpus) >= machine_cpus:
        raise UserError(
            f"the server may run on every CPU of this machine ({cpu_list(cpus)}), and keeping them all awake would"
            " spin all of them; give it CPUs of its own first (media.cpus, taskset -c, or eko-bench --server-cpus)",
            key=CONFIG_KEY,
        )
    return cpus


def cpu_list(cpus: list[int]) -> str:
    """``[2, 3]`` -> ``"2,3"``, as taskset and the log lines write them."""
    return ",".join(str(cpu) for cpu in cpus)


async def _start_spinner(cpu: int) -> trio.Process:
    command = [sys.executable, "-m", "eko_rtp.server.spinner", str(cpu), str(os.getpid())]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        said = b""
        with trio.move_on_after(READY_TIMEOUT):
            while not said.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                if not chunk:
                    break
                said += chunk
        if said != b"ready\n":
            process.kill()
            await process.wait()
            reason = (await process.stderr.receive_some(4096)).decode(errors="replace").strip()
            if not reason:
                reason = f"no 'ready' within {READY_TIMEOUT:g} s" if process.returncode == -9 else f"exit status {process.returncode}"
            raise UserError(f"cannot keep CPU {cpu} awake: {reason}", key=CONFIG_KEY)
        if os.sched_getscheduler(process.pid) != os.SCHED_IDLE:  # never leave a spinner at normal priority
            raise UserError(f"the spinner for CPU {cpu} is not SCHED_IDLE; stopped it", key=CONFIG_KEY)
    except BaseException:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await _close_pipes(process)
        raise
    await _close_pipes(process)
    return process


async def _close_pipes(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        await process.stdout.aclose()
        await process.stderr.aclose()


async def keep_cpus_awake(
    cpus: Iterable[int], *, on_count: Callable[[int], None] = lambda count: None, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Run one spinner per CPU in ``cpus`` until cancelled; ``started`` with their pids.

    A spinner that cannot start (the sandbox forbids ``SCHED_IDLE``, say) is a
    :class:`UserError` before ``started``. One that exits later is logged, and its
    CPU goes back to halting: the server's work does not depend on it.
    ``on_count`` hears how many spinners run, whenever that changes (a metric).
    """
    processes: list[tuple[int, trio.Process]] = []
    running = 0

    async def watch(cpu: int, process: trio.Process) -> None:
        nonlocal running
        status = await process.wait()
        running -= 1
        on_count(running)
        log.warning("the spinner keeping CPU %d awake exited (status %s); that CPU halts between frames again",
                    cpu, status)

    try:
        for cpu in cpus:
            processes.append((cpu, await _start_spinner(cpu)))
        running = len(processes)
        on_count(running)
        task_status.started([process.pid for _, process in processes])
        async with trio.open_nursery() as nursery:
            for cpu, process in processes:
                nursery.start_soon(watch, cpu, process)
    finally:
        with trio.CancelScope(shield=True):
            for _, process in processes:
                if process.returncode is None:
                    process.kill()
            for _, process in processes:
                await process.wait()
        if running:
            on_count(0)
