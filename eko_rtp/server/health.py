"""The server's health: whether a new call could succeed now, and if not, why.

Theory of operation: the server names the conditions under which *no* new call could
succeed, each with one line saying why, and clears them when that is over:

- ``PHRASES``: the cache lacks a phrase the call script cannot do without (the
  script's ``essential_phrases``; Eko's are the greeting every caller the CRM does
  not know hears). A server started ``--degraded`` without them would answer calls
  and play nothing.
- ``RTP_PORTS``: every RTP port pair of ``media.rtp_ports`` is taken (by our calls,
  or another process holds the rest).
- ``FILE_DESCRIPTORS``: opening a call's sockets failed with EMFILE or ENFILE.

:class:`Health` is a plain record of them (no I/O, no clock). The server hands
:attr:`Health.problem` to the SIP core (``UserAgent.set_health``): while there is one,
OPTIONS outside a call and new INVITEs get 503 with Retry-After, so a trunk or the
Kamailio front sends calls elsewhere instead of to a server that would fail them;
``STATUS=`` and the log say the same words.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["Condition", "Health", "missing_essential_phrases"]


class Condition(enum.Enum):
    PHRASES = "phrases"
    RTP_PORTS = "rtp_ports"
    FILE_DESCRIPTORS = "file_descriptors"


class Health:
    """The conditions that stop every new call, each with its reason."""

    def __init__(self) -> None:
        self._reasons: dict[Condition, str] = {}

    def set(self, condition: Condition, reason: str) -> bool:
        """Record ``condition`` with ``reason``; True when that changed anything."""
        if self._reasons.get(condition) == reason:
            return False
        self._reasons[condition] = reason
        return True

    def clear(self, condition: Condition) -> bool:
        """Forget ``condition``; True when it was set."""
        return self._reasons.pop(condition, None) is not None

    def __contains__(self, condition: Condition) -> bool:
        return condition in self._reasons

    @property
    def problem(self) -> str | None:
        """Every reason, in a fixed order, joined; None when a call could succeed."""
        reasons = [self._reasons[condition] for condition in Condition if condition in self._reasons]
        return "; ".join(reasons) if reasons else None


def missing_essential_phrases(script, cached_keys: Iterable[str]) -> list[str]:
    """The phrases ``script`` declares essential (``script.essential_phrases``) that the cache lacks.

    A script without the attribute declares none: nothing is known about what it needs.
    """
    essential = getattr(script, "essential_phrases", ())
    cached = set(cached_keys)
    return sorted(key for key in essential if key not in cached)
