"""Atomic file replacement: write under a temporary name, fsync, rename, fsync the directory.

A reader (or a build killed at any instant, even by SIGKILL or a full disk) sees
either the old complete file or the new complete file, never a torn one. The
temporary name starts with the target's name and contains ``.tmp-`` so a later
build can sweep leftovers with :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMPORARY_MARKER = ".tmp-"


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    target = Path(path)
    temporary = target.with_name(f"{target.name}{TEMPORARY_MARKER}{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries left by an interrupted writer; return what was removed."""
    removed = []
    for entry in Path(directory).iterdir():
        if TEMPORARY_MARKER in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
