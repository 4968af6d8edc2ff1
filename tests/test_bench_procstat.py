"""The bench's look at the server's child processes in /proc (the recognizer relay)."""

import os
import subprocess
import sys

import pytest

from eko_bench import procstat


@pytest.mark.parametrize("argv, label", [
    ([sys.executable, "-m", "eko_rtp.asr.relay_process", "--fd", "5", "--cpus", "1"], "eko_rtp.asr.relay_process"),
    ([sys.executable, "-m", "eko_rtp.server.spinner", "0", "123"], None),  # idle time by design: left out
    (["/usr/bin/sox", "in.wav", "out.raw"], "sox"),
    ([], None),
])
def test_a_child_is_named_by_its_module_or_program(argv, label):
    raw = b"".join(part.encode() + b"\0" for part in argv)
    assert procstat.label_from_cmdline(raw) == label


def test_the_parent_pid_is_read_past_a_command_name_with_parentheses():
    assert procstat.parent_from_stat("4242 (a (b) c) S 77 4242 4242 0 -1") == 77
    with pytest.raises(ValueError):
        procstat.parent_from_stat("garbage")


def test_children_finds_our_own_child_processes_and_leaves_out_a_spinner():
    module_child = subprocess.Popen([sys.executable, "-m", "json.tool"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL)
    # A real spinner: SCHED_IDLE on one CPU, exits once its parent (we) is gone or when killed.
    spinner = subprocess.Popen([sys.executable, "-m", "eko_rtp.server.spinner", str(min(os.sched_getaffinity(0))),
                                str(os.getpid())], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert spinner.stdout.readline() == b"ready\n"
        found = procstat.children(os.getpid())
        assert found.get(module_child.pid) == "json.tool"
        assert spinner.pid not in found
        assert procstat.children(module_child.pid) == {}  # it has none
    finally:
        for process in (module_child, spinner):
            process.kill()
            process.wait(timeout=10)
