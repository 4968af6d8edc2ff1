"""CPU time and resident memory of the process under test, from /proc (proc(5)).

CPU: fields 14 and 15 of ``/proc/<pid>/stat`` (utime, stime, in clock ticks,
all threads of the process). The line is split after the last ``)`` because the
command name in field 2 may itself contain spaces and parentheses. Memory:
``VmRSS`` from ``/proc/<pid>/status`` (kB).
"""

from __future__ import annotations

import os

import attrs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks_from_stat(text: str) -> int:
    """utime + stime from the text of /proc/<pid>/stat."""
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 13:
        raise ValueError(f"unrecognised /proc stat line: {text[:80]!r}")
    # rest starts at field 3 (state): utime is field 14 -> index 11, stime index 12.
    return int(fields[11]) + int(fields[12])


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
