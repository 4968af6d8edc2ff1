"""The seam between the engine and a speech synthesiser.

A backend turns text into a stream of 8 kHz µ-law bytes, chunked however it likes
(the engine's :class:`~eko_rtp.tts.framer.FrameAssembler` cuts frames). ``stream``
is an async generator: the engine consumes it under ``contextlib.aclosing`` so
that a cancelled speech (hang-up, barge-in) closes the generator at once, and the
generator's ``finally`` releases the HTTP stream or kills the subprocess.
``render_identity`` names what shapes the audio besides the text; it becomes part
of the dynamic-cache key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import attrs


@attrs.frozen(kw_only=True)
class RenderIdentity:
    """What, besides the text, decides the audio a backend produces."""

    voice: str
    model: str
    output_format: str
    settings: Mapping[str, object] = attrs.field(factory=dict)


class TtsBackend(Protocol):
    name: str
    paid: bool  # characters sent to it cost money (accounting counts them)

    def render_identity(self) -> RenderIdentity: ...

    def stream(self, text: str) -> AsyncIterator[bytes]:
        """µ-law 8 kHz chunks for ``text``; raises :class:`~eko_rtp.tts.errors.TtsError` subclasses."""
        ...

    async def aclose(self) -> None: ...
