"""CPU time and resident memory of the process under test, from /proc (proc(5)).

CPU: fields 14 and 15 of ``/proc/<pid>/stat`` (utime, stime, in clock ticks,
all threads of the process). The line is split after the last ``)`` because the
command name in field 2 may itself contain spaces and parentheses. Memory:
``VmRSS`` from ``/proc/<pid>/status`` (kB).

The server's own child processes (the recognizer relay) do part of its work on
other CPUs: :func:`children` finds them (field 4 of their stat line, the parent's
pid) and names each by the module it runs, leaving out the keep-awake spinners,
whose CPU is idle time by design (eko_rtp/server/spinner.py).
"""

from __future__ import annotations

import os

import attrs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _fields_after_name(text: str, needed: int) -> list[str]:
    """The fields of a /proc/<pid>/stat line from field 3 (state) on, at least ``needed`` of them."""
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < needed:
        raise ValueError(f"unrecognised /proc stat line: {text[:80]!r}")
    return fields


def cpu_ticks_from_stat(text: str) -> int:
    """utime + stime from the text of /proc/<pid>/stat."""
    fields = _fields_after_name(text, 13)
    # fields start at field 3 (state): utime is field 14 -> index 11, stime index 12.
    return int(fields[11]) + int(fields[12])


def parent_from_stat(text: str) -> int:
    """The parent's pid (field 4) from the text of /proc/<pid>/stat."""
    return int(_fields_after_name(text, 2)[1])


SPINNER_MODULE = "eko_rtp.server.spinner"


def label_from_cmdline(raw: bytes) -> str | None:
    """A child's name from its NUL-separated command line: the module after ``-m``, else the
    program's base name; None for a keep-awake spinner."""
    argv = [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
    if not argv:
        return None
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return None if module == SPINNER_MODULE else module
    return os.path.basename(argv[0])


def children(pid: int, proc: str = "/proc") -> dict[int, str]:
    """The processes whose parent is ``pid`` (pid -> label), spinners left out."""
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat") as stat_file:
                if parent_from_stat(stat_file.read()) != pid:
                    continue
            with open(f"{proc}/{entry}/cmdline", "rb") as cmdline_file:
                label = label_from_cmdline(cmdline_file.read())
        except (OSError, ValueError):
            continue  # gone meanwhile, or not readable
        if label is not None:
            found[int(entry)] = label
    return found


def rss_kib_from_status(text: str) -> int:
    """VmRSS in KiB from the text of /proc/<pid>/status."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                return int(parts[1])
    raise ValueError("no 'VmRSS: N kB' line in /proc status")


@attrs.frozen(kw_only=True)
class Sample:
    """One look at the process: monotonic time (s), CPU ticks, RSS (KiB)."""

    at: float
    cpu_ticks: int
    rss_kib: int


def sample(pid: int, at: float) -> Sample | None:
    """Read the process now; None if it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            ticks = cpu_ticks_from_stat(stat_file.read())
        with open(f"/proc/{pid}/status") as status_file:
            rss = rss_kib_from_status(status_file.read())
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Sample(at=at, cpu_ticks=ticks, rss_kib=rss)


def cpu_percent(first: Sample, last: Sample) -> float | None:
    """CPU used between two samples as % of one core."""
    wall = last.at - first.at
    if wall <= 0:
        return None
    return 100.0 * (last.cpu_ticks - first.cpu_ticks) / CLOCK_TICKS / wall
