"""Sealed copies of cache files: audio the server plays cannot change under it.

Theory of operation: a shared mapping of a file sees every later change to the
file. ``truncate -s 0 greet.raw`` under a running server turned every read of the
mapping past the new end into SIGBUS: the PCMA path, which translates a frame in
Python, killed the process; the PCMU path handed the kernel a view it could not
read, and calls went silent with DEBUG-level send errors. A private mapping
(MAP_PRIVATE) does not help: pages not yet copied on write still read the file,
and past its end they SIGBUS just the same.

So each file is copied once, at load, into anonymous memory of our own: a memfd
(``memfd_create(2)``), filled by ``sendfile(2)`` from the descriptor we opened (in
the kernel: no Python buffer), then sealed with ``F_SEAL_SHRINK | F_SEAL_GROW |
F_SEAL_WRITE | F_SEAL_SEAL``, so nobody (not us, not root through
``/proc/<pid>/map_files``) can change its size or bytes again. It is mapped
``PROT_READ`` and the descriptor closed: the mapping lives as long as the views of
it (a reload leaves calls in progress their audio). The mapping is MAP_PRIVATE only
because kernels before 6.7 refuse a shared mapping of a write-sealed memfd opened
read-write; with the pages sealed and never written, private and shared read the
same pages, and nothing is ever copied again.

What we validate (the sha256 of the manifest) is the copy, not the file, so what
passed the check is exactly what plays. The file's ``fstat`` at the copy (device,
inode, size, mtime) is kept as its :class:`FileSignature`, to tell later whether
the file on disk is still the one we copied (:mod:`eko_rtp.cache.watch`).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import attrs

__all__ = ["FileSignature", "SealedCopy", "file_signature", "sealed_copy"]

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_CHUNK = 1 << 20


@attrs.frozen(kw_only=True)
class FileSignature:
    """Which file, and which version of it: what ``stat`` says."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileSignature:
        return cls(device=status.st_dev, inode=status.st_ino, size=status.st_size, mtime_ns=status.st_mtime_ns)


def file_signature(path: str | os.PathLike[str]) -> FileSignature | None:
    """The signature of ``path`` now, or None if it does not exist."""
    try:
        return FileSignature.of(os.stat(path))
    except FileNotFoundError:
        return None


@attrs.frozen(kw_only=True, eq=False)
class SealedCopy:
    """A file's bytes, sealed: ``data`` is a read-only mmap (``b""`` for an empty file)."""

    data: mmap.mmap | bytes
    signature: FileSignature


def _copy(source: int, target: int, size: int) -> int:
    """Copy up to ``size`` bytes of ``source`` into ``target``; returns how many."""
    copied = 0
    try:
        while copied < size:
            sent = os.sendfile(target, source, copied, size - copied)
            if sent == 0:
                break  # the file shrank while we copied: the length check will say so
            copied += sent
        return copied
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or copied:
            raise
    # A file system sendfile cannot read from: plain reads.
    while copied < size:
        chunk = os.pread(source, min(_CHUNK, size - copied), copied)
        if not chunk:
            break
        os.write(target, chunk)
        copied += len(chunk)
    return copied


def sealed_copy(path: str | os.PathLike[str], *, name: str | None = None) -> SealedCopy | None:
    """A sealed, read-only copy of ``path``, or None if it does not exist.

    ``name`` labels the memory in ``/proc/<pid>/maps`` (``/memfd:<name>``). Raises
    OSError if the file cannot be read or the memory not had.
    """
    path = Path(path)
    try:
        source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        status = os.fstat(source)
        signature = FileSignature.of(status)
        if status.st_size == 0:
            return SealedCopy(data=b"", signature=signature)
        memory = os.memfd_create(name or path.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            copied = _copy(source, memory, status.st_size)
            if copied == 0:
                return SealedCopy(data=b"", signature=signature)
            fcntl.fcntl(memory, fcntl.F_ADD_SEALS, SEALS)
            data = mmap.mmap(memory, copied, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        finally:
            os.close(memory)
    finally:
        os.close(source)
    return SealedCopy(data=data, signature=signature)
