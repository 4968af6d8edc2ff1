"""Keeping the server's CPUs awake: real spinner processes, their policy, pinning and death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from functools import partial

import pytest
import trio

from eko_rtp.errors import UserError
from eko_rtp.server.awake import keep_cpus_awake, pin_to, spinner_cpus
from eko_rtp.server.spinner import parent_waits_here
from server_helpers import REPO, ServerProcess, free_port

CPU = min(os.sched_getaffinity(0))


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone_or_zombie(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    "affinity, machine, expected",
    [
        ({0}, 2, [0]),
        ({3, 1}, 8, [1, 3]),
        ({0}, 1, [0]),  # a one-CPU machine: that CPU is the server's anyway
    ],
)
def test_spinner_cpus_are_the_servers_own(affinity, machine, expected):
    assert spinner_cpus(affinity, machine) == expected


def test_a_server_free_to_run_anywhere_is_refused():
    with pytest.raises(UserError) as caught:
        spinner_cpus({0, 1}, 2)
    assert str(caught.value) == (
        "key 'media.keep_cpu_awake': the server may run on every CPU of this machine (0,1), and keeping them all"
        " awake would spin all of them; give it CPUs of its own first (media.cpus, taskset -c, or"
        " eko-bench --server-cpus)")


def test_no_cpu_at_all_is_refused():
    with pytest.raises(UserError, match="may run on no CPU at all"):
        spinner_cpus(set(), 4)


def test_spinners_are_sched_idle_pinned_and_stopped_with_their_task():
    seen = {}

    async def main():
        async with trio.open_nursery() as nursery:
            pids = await nursery.start(keep_cpus_awake, [CPU])
            (pid,) = pids
            seen["pid"] = pid
            seen["policy"] = os.sched_getscheduler(pid)
            seen["affinity"] = os.sched_getaffinity(pid)
            await trio.sleep(0.3)
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            seen["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime: it does spin
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen["policy"] == os.SCHED_IDLE
    assert seen["affinity"] == {CPU}
    assert seen["cpu_ticks"] > 0
    assert gone_or_zombie(seen["pid"])


def test_a_cpu_that_cannot_be_pinned_is_a_user_error_naming_it():
    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(keep_cpus_awake, [4095])

    with pytest.raises(BaseExceptionGroup) as caught:
        trio.run(main)
    (error,) = caught.value.exceptions
    assert isinstance(error, UserError)
    assert str(error) == ("key 'media.keep_cpu_awake': cannot keep CPU 4095 awake:"
                          " eko-rtp spinner: cannot pin to CPU 4095: Invalid argument")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["0", "1"], "eko-rtp spinner: parent 1 is gone"),
        (["zero"], "eko-rtp spinner: usage: python -m eko_rtp.server.spinner CPU PARENT_PID, got ['zero']"),
    ],
)
def test_the_spinner_refuses_to_spin_for_nobody(arguments, message):
    done = subprocess.run([sys.executable, "-m", "eko_rtp.server.spinner", *arguments],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert (done.returncode, done.stdout, done.stderr.strip()) == (2, "", message)


PARENT = """
import os, sys, trio
from eko_rtp.server.awake import keep_cpus_awake
async def main():
    async with trio.open_nursery() as nursery:
        pids = await nursery.start(keep_cpus_awake, [int(sys.argv[1])])
        print(pids[0], flush=True)
        await trio.sleep(60)
trio.run(main)
"""


def test_a_spinner_outlives_trios_worker_thread_and_dies_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(CPU)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        pid = int(parent.stdout.readline())
        # trio starts processes from a worker thread that ends after 10 idle seconds; the
        # spinner must not go with it (as it would with PR_SET_PDEATHSIG).
        time.sleep(11)
        assert not gone_or_zombie(pid)
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_gone(pid), f"spinner {pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_the_server_refuses_to_spin_every_cpu(built_cache):
    if len(os.sched_getaffinity(0)) < 2 or len(os.sched_getaffinity(0)) != os.cpu_count():
        pytest.skip("needs a process free to run on every CPU of a machine with several")
    server = ServerProcess(built_cache, "--keep-cpu-awake")
    assert server.process.wait(60) == 2
    server.stop()
    assert "key 'media.keep_cpu_awake': the server may run on every CPU of this machine" in server.log()


def test_a_pinned_server_keeps_its_cpu_awake_and_stops_its_spinner(built_cache, tmp_path):
    metrics_port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[media]\nkeep_cpu_awake = true\n[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n')
    server = ServerProcess(built_cache, "--config", str(config), cpus={CPU})
    with server:
        match = server.wait_for_log(rf"keeping CPU\(s\) {CPU} awake with SCHED_IDLE spinners \(pids (\d+)\)")
        pid = int(match.group(1))
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == {CPU}
        with open(f"/proc/{pid}/stat") as handle:
            assert int(handle.read().rsplit(")", 1)[1].split()[1]) == server.process.pid  # its child
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            exported = response.read().decode()
        assert "\neko_cpus_kept_awake 1.0\n" in exported
    assert server.process.returncode == 0
    assert wait_gone(pid)


def test_a_spinner_that_dies_is_logged_counted_and_the_rest_carries_on(caplog):
    counts = []

    async def main():
        async with trio.open_nursery() as nursery:
            (pid,) = await nursery.start(partial(keep_cpus_awake, [CPU], on_count=counts.append))
            assert counts == [1]
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(5):
                while "exited" not in caplog.text:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    with caplog.at_level("WARNING", logger="eko_rtp.awake"):
        trio.run(main)
    assert [record.getMessage() for record in caplog.records] == [
        f"the spinner keeping CPU {CPU} awake exited (status -9); that CPU halts between frames again"]
    assert counts == [1, 0]


def test_spinners_are_counted_down_when_their_task_ends():
    counts = []

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(keep_cpus_awake, [CPU], on_count=counts.append))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert counts == [1, 0]


def test_media_cpus_pins_the_server_itself(built_cache, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a process that may run on more than one CPU")
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[media]\ncpus = "{CPU}"\nkeep_cpu_awake = true\n')
    server = ServerProcess(built_cache, "--config", str(config))  # no taskset: the config pins it
    with server:
        pid = int(server.wait_for_log(rf"keeping CPU\(s\) {CPU} awake with SCHED_IDLE spinners \(pids (\d+)\)").group(1))
        assert os.sched_getaffinity(server.process.pid) == {CPU}
        assert os.sched_getaffinity(pid) == {CPU}
    assert server.process.returncode == 0


def test_cpus_the_kernel_refuses_are_a_user_error_naming_the_key():
    before = os.sched_getaffinity(0)
    with pytest.raises(UserError) as caught:
        pin_to(frozenset({4095}))
    assert str(caught.value) == (
        "key 'media.cpus': cannot run on CPU(s) 4095: Invalid argument (under systemd the unit pins the server:"
        " run install-service again after changing media.cpus)")
    assert os.sched_getaffinity(0) == before


STAT = b"4242 (a (b) R c) %s 1 1 1 0 -1 4194560" + b" 0" * 29 + b" %d 0 0"  # field 39: the CPU last run on


@pytest.mark.parametrize("state, cpu_field, cpu, waits", [
    (b"R", 0, 0, True),  # runnable, queued here: the spinner has the CPU the parent wants
    (b"S", 0, 0, False),  # asleep: the CPU is the spinner's to keep awake
    (b"R", 1, 0, False),  # runnable elsewhere
    (b"D", 0, 0, False),
])
def test_the_spinner_reads_whether_its_parent_waits_for_its_cpu(state, cpu_field, cpu, waits):
    assert parent_waits_here(STAT % (state, cpu_field), cpu) is waits


def test_a_stat_line_it_cannot_read_never_makes_the_spinner_yield():
    assert parent_waits_here(b"", 0) is False
    assert parent_waits_here(b"4242 (truncated) R 1 1", 0) is False


def test_a_busy_process_queued_on_our_cpu_reads_as_waiting_and_a_sleeping_one_does_not():
    cpu = min(os.sched_getaffinity(0))
    ours = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    asleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)  # both started; the busy one now competes with us for the CPU
        with open(f"/proc/{busy.pid}/stat", "rb") as handle:
            # We are on the CPU as we read, so the busy process waits in the run queue.
            assert parent_waits_here(handle.read(), cpu) is True
        with open(f"/proc/{asleep.pid}/stat", "rb") as handle:
            assert parent_waits_here(handle.read(), cpu) is False
    finally:
        os.sched_setaffinity(0, ours)
        for process in (busy, asleep):
            process.kill()
            process.wait(timeout=10)
