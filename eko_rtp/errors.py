"""Errors shared across the package.

:class:`UserError` is what a person running ``eko-rtp`` can fix: a broken config
file, a bad flag, a malformed catalogue. Its message names the file, line or key.
The CLI turns it into exit status 2. Protocol errors from the network have their
own types in their protocol modules (they carry the status to answer).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input the operator controls (config, catalogue, flags)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, key: str | None = None):
        self.path = path
        self.line = line
        self.key = key
        self.detail = message
        where = []
        if path is not None:
            where.append(str(path) if line is None else f"{path}:{line}")
        if key is not None:
            where.append(f"key {key!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first exception in ``group`` that is not itself a group (what a nursery wrapped)."""
    error = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
