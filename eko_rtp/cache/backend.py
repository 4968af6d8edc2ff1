"""What a render backend is: the interface the builder drives, and its one error type.

A backend turns a phrase text into cached-format µ-law (trimmed, padded to whole
frames; see :mod:`eko_rtp.cache.audio`) and says who made it (name, voice, model:
recorded in the manifest, and a change of any of them re-renders the phrase), how
many renders may run at once and what a character costs.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Backend", "RenderError"]


class RenderError(Exception):
    """One phrase could not be rendered (the build reports it and goes on)."""


class Backend(Protocol):
    name: str
    voice: str | None
    model: str | None
    concurrency: int
    dollars_per_1000_characters: float

    async def render(self, text: str) -> bytes:
        """Cached-format µ-law for ``text``; RenderError if it failed, UserError if the operator must act."""

    async def aclose(self) -> None:
        """Give back what the backend holds (connections); the build calls it once, at the end."""
