"""StateEnum: the members of the state machines' tables, hashed in C.

``enum.Enum`` hashes a member by hashing its name in Python code, so each look-up
in a transition table keyed by ``(state, input)`` runs a Python call per member, a
few dozen of them on an INVITE's way to its 200 OK. A member is a singleton that
compares by identity (``Enum`` keeps ``object.__eq__``), so ``object.__hash__`` is
consistent with equality and a dict or set of members behaves the same. Only
iteration order of a set of members differs, and that already changed from one
process to the next with string hash randomization.
"""

from __future__ import annotations

import enum

__all__ = ["StateEnum"]


class StateEnum(enum.Enum):
    """An Enum whose members hash by identity (see the module docstring)."""

    __hash__ = object.__hash__
