"""Cut a byte stream of 8 kHz µ-law into 20 ms RTP frames.

Theory of operation: a provider streams audio in chunks whose sizes have nothing to
do with our packetisation (ElevenLabs sends whatever its encoder flushed). One
PCMU frame is 160 bytes (RFC 3551 §4.5.14: 8000 samples/s, one byte per sample;
20 ms is the default packetisation, §4.2). :class:`FrameAssembler` keeps the
remainder of a chunk that does not fill a frame and completes it with the next
chunk, so a chunk boundary never inserts silence mid-utterance; only
:meth:`FrameAssembler.finish`, at the end of the utterance, pads the last partial
frame with µ-law silence. No I/O here.
"""

from __future__ import annotations

from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.codec.g711 import ULAW_SILENCE

__all__ = ["FRAME_BYTES", "FrameAssembler"]


class FrameAssembler:
    """Feed chunks in, take whole frames out; ``finish()`` once at the end."""

    def __init__(self, frame_bytes: int = FRAME_BYTES, silence: int = ULAW_SILENCE):
        if frame_bytes < 1:
            raise ValueError(f"frame_bytes must be >= 1, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._silence = bytes([silence])
        self._pending = bytearray()
        self._finished = False
        self.bytes_in = 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of their frame."""
        return len(self._pending)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Add one chunk; return the frames it completed (possibly none)."""
        if self._finished:
            raise RuntimeError("FrameAssembler.feed after finish()")
        self.bytes_in += len(chunk)
        size = self.frame_bytes
        if not self._pending and len(chunk) % size == 0:
            # The common aligned case: slice the chunk directly.
            view = bytes(chunk)
            return [view[offset : offset + size] for offset in range(0, len(view), size)]
        self._pending += chunk
        whole = len(self._pending) - len(self._pending) % size
        frames = [bytes(self._pending[offset : offset + size]) for offset in range(0, whole, size)]
        del self._pending[:whole]
        return frames

    def finish(self) -> list[bytes]:
        """End of the utterance: the last partial frame padded with silence, or nothing."""
        if self._finished:
            raise RuntimeError("FrameAssembler.finish called twice")
        self._finished = True
        if not self._pending:
            return []
        frame = bytes(self._pending) + self._silence * (self.frame_bytes - len(self._pending))
        self._pending.clear()
        return [frame]
