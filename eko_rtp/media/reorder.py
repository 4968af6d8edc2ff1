"""The caller's audio back in order: a small reorder buffer for inbound RTP (sans-I/O).

Theory of operation: the shell feeds every inbound audio packet's sequence number
and payload to :meth:`ReorderBuffer.push` as it arrives (telephone-events and
anything else that is not the negotiated audio codec are kept out by the shell);
``push`` returns the 20 ms frames that are now ready, in order. Nothing here reads
a clock: the buffer works in sequence numbers (RFC 3550 §5.1: one more per packet),
never in timestamps, so a pause in sending (DTX) produces no frames.

The buffer covers ``window`` sequence numbers from the next one expected:

- the expected packet comes out at once, with any packets held right behind it;
  when nothing is missing nothing waits (the common case returns the payload
  object itself, uncopied);
- a packet ahead of the expected one, but inside the window, is held;
- a packet beyond the window moves the window on: each position that leaves it
  comes out, a held packet as itself, a missing one as silence (the codec's
  silence byte, as long as the latest payload: one frame at 20 ms), counted in
  ``packets_concealed``. So a gap is waited for until the packet ``window``
  places after it arrives: ``window`` frame periods (60 ms at the default of 3)
  after the lost packet was due, and audio behind a gap waits at most
  ``window - 1`` periods. ``window = 1`` reorders nothing;
- a packet behind the expected one comes too late (its position already came
  out) and is dropped: ``packets_duplicate`` when that position came out as a
  packet, ``packets_late`` when it came out as silence (a bitmap of the last
  :data:`MAX_JUMP` positions tells them apart); a second copy of a held packet
  is a duplicate too;
- a packet more than :data:`MAX_JUMP` positions away either way is not this
  stream: a restart (a re-INVITE to another media server, a new SSRC) or a stray
  or hostile packet. Like RFC 3550 A.1's probation it is kept aside, counted in
  ``packets_stray``; if the next far packet is its successor the stream has
  restarted: whatever is held comes out (gaps as silence), the buffer starts
  again from the kept packet, and ``resets`` counts it (that packet is then no
  longer stray). No silence is made for the jump, so a source that leaps
  thousands of numbers ahead costs nothing; a single stray packet costs nothing
  either. A gap of up to :data:`MAX_JUMP` packets comes out as that many
  packets of silence, which keeps the caller's audio on its timeline.

Packetisation other than 20 ms (``a=ptime`` is only a wish, RFC 4566 §6): any
payload up to :data:`MAX_PAYLOAD_BYTES` is accepted and the stream is cut again
into 160-byte frames, a partial frame being carried to the next packet (10 ms
packets make a frame every second packet; 30 ms packets one and a half). A longer
payload is refused and counted (``packets_refused``), and its position later
comes out as silence. An empty payload (a keepalive) takes its sequence number
and adds no audio.

:meth:`ReorderBuffer.flush` gives up on every gap at once: held packets come out,
gaps before them as silence, and a partial frame is completed with silence;
sequence tracking goes on. The shell calls it at the end of the stream, and
should call it when the caller's packets pause (nothing for ``window`` frame
periods): otherwise audio behind a gap would wait for the caller's next packet.

Bounds: at most ``window - 1`` (≤ 9) payloads held, plus one stray packet and a
partial frame, each payload at most :data:`MAX_PAYLOAD_BYTES`: under 13 kB a
call. One ``push`` returns at most ``MAX_JUMP + window`` packets' worth of audio.

Payloads are kept by reference while held and returned as they came when they
fill a frame exactly: pass ``bytes`` or a read-only memoryview over bytes (the
receive hub's datagrams are). A writable buffer (``bytearray``, a writable
memoryview) is copied first, since its owner may reuse it.
"""

from __future__ import annotations

from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.media.sequence import SEQUENCE_MODULUS, seq_diff

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "MAX_JUMP", "MAX_PAYLOAD_BYTES", "ReorderBuffer"]

DEFAULT_WINDOW = 3  # frames: 60 ms of reordering tolerated
MAX_WINDOW = 10  # 200 ms: beyond that a late packet is no use to a live conversation
MAX_JUMP = 100  # positions: 2 s of loss is concealed; further away is another stream
MAX_PAYLOAD_BYTES = 8 * FRAME_BYTES  # 160 ms of G.711 in one packet

_SEQUENCE_MASK = SEQUENCE_MODULUS - 1
_SILENCE_FRAMES: dict[int, bytes] = {}  # codec silence byte -> one frame of it, shared by every buffer
_HISTORY_MASK = (1 << MAX_JUMP) - 1


def _silence_frame(codec_silence: int) -> bytes:
    frame = _SILENCE_FRAMES.get(codec_silence)
    if frame is None:
        frame = _SILENCE_FRAMES[codec_silence] = bytes((codec_silence,)) * FRAME_BYTES
    return frame


class ReorderBuffer:
    """Inbound audio packets in, in-order 160-byte frames out; gaps filled with silence.

    Counters (read them, never write them): ``packets_late``, ``packets_duplicate``,
    ``packets_refused``, ``packets_stray``, ``packets_concealed``, ``resets``; and
    ``held``, the packets waiting behind a gap (a plain attribute: the shell reads it
    after every packet).
    """

    __slots__ = (
        "window",
        "_silence_frame",
        "_gap_fill",
        "_slots",
        "_head",
        "held",
        "_next",
        "_received",
        "_partial",
        "_stray",
        "packets_late",
        "packets_duplicate",
        "packets_refused",
        "packets_stray",
        "packets_concealed",
        "resets",
    )

    def __init__(self, codec_silence: int, window: int = DEFAULT_WINDOW):
        if type(codec_silence) is not int or not 0 <= codec_silence <= 0xFF:
            raise ValueError(f"codec_silence must be one byte value 0..255, not {codec_silence!r}")
        if type(window) is not int or not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW} frames, not {window!r}")
        self.window = window
        self._silence_frame = _silence_frame(codec_silence)
        # Stands in for one missing packet: silence as long as the latest payload.
        self._gap_fill = self._silence_frame
        # A ring of `window` places; _slots[_head] is the position of sequence _next.
        self._slots: list[bytes | memoryview | None] = [None] * window
        self._head = 0
        self.held = 0
        self._next: int | None = None  # None until the first packet
        # Bit i set: position _next - 1 - i came out as a packet (not as silence).
        self._received = 0
        self._partial = bytearray()  # the start of a frame, when payloads are not 160 bytes
        self._stray: tuple[int, bytes | memoryview] | None = None  # a far packet on probation
        self.packets_late = 0
        self.packets_duplicate = 0
        self.packets_refused = 0
        self.packets_stray = 0
        self.packets_concealed = 0
        self.resets = 0

    @property
    def expected(self) -> int | None:
        """The sequence number of the next position to come out (None before the first packet)."""
        return self._next

    def push(self, sequence: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
        """Account for one inbound audio packet; the frames it makes ready, oldest first."""
        if not 0 <= sequence <= _SEQUENCE_MASK:
            raise ValueError(f"RTP sequence number {sequence!r} outside 0..{_SEQUENCE_MASK}")
        size = len(payload)
        if size > MAX_PAYLOAD_BYTES:
            self.packets_refused += 1
            return []
        if type(payload) is not bytes and not (type(payload) is memoryview and payload.readonly):
            payload = bytes(payload)
        expected = self._next
        if expected is None:
            expected = self._next = sequence
        if (sequence == expected and not self.held and not self._partial and size == FRAME_BYTES
                and self._gap_fill is self._silence_frame):
            # The common case, inline: the expected 20 ms packet, nothing held.
            self._next = (sequence + 1) & _SEQUENCE_MASK
            self._received = ((self._received << 1) | 1) & _HISTORY_MASK
            return [payload]
        out: list[bytes | memoryview] = []
        self._place(sequence, payload, out)
        return out

    def flush(self) -> list[bytes | memoryview]:
        """Give up on every gap: held packets come out in order, gaps before them as silence,
        and a partial frame is completed with silence. Tracking goes on."""
        out: list[bytes | memoryview] = []
        while self.held:
            self._release(out)
        partial = self._partial
        if partial:
            partial += self._silence_frame[: FRAME_BYTES - len(partial)]
            out.append(bytes(partial))
            partial.clear()
        return out

    # -- internals -----------------------------------------------------------------

    def _place(self, sequence: int, payload: bytes | memoryview, out: list) -> None:
        distance = seq_diff(sequence, self._next)
        if distance > MAX_JUMP or distance < -MAX_JUMP:
            self._far(sequence, payload, out)
            return
        if distance < 0:
            if (self._received >> (-distance - 1)) & 1:
                self.packets_duplicate += 1
            else:
                self.packets_late += 1
            return
        window = self.window
        if distance >= window:
            for _ in range(distance - window + 1):
                self._release(out)
            distance = window - 1
        slots = self._slots
        place = (self._head + distance) % window
        if slots[place] is not None:
            self.packets_duplicate += 1
            return
        size = len(payload)
        if size and size != len(self._gap_fill):
            self._gap_fill = self._silence_frame if size == FRAME_BYTES else self._silence_frame[:1] * size
        slots[place] = payload
        self.held += 1
        while slots[self._head] is not None:
            self._release(out)

    def _release(self, out: list) -> None:
        """The position at the head of the window comes out: its packet, or silence."""
        head = self._head
        payload = self._slots[head]
        if payload is None:
            self.packets_concealed += 1
            self._emit(self._gap_fill, out)
            self._received = (self._received << 1) & _HISTORY_MASK
        else:
            self._slots[head] = None
            self.held -= 1
            self._emit(payload, out)
            self._received = ((self._received << 1) | 1) & _HISTORY_MASK
        head += 1
        self._head = head if head < self.window else 0
        self._next = (self._next + 1) & _SEQUENCE_MASK

    def _emit(self, payload: bytes | memoryview, out: list) -> None:
        partial = self._partial
        if not partial and len(payload) == FRAME_BYTES:
            out.append(payload)
            return
        partial += payload
        whole = len(partial) - len(partial) % FRAME_BYTES
        if whole:
            for start in range(0, whole, FRAME_BYTES):
                out.append(bytes(partial[start : start + FRAME_BYTES]))
            del partial[:whole]

    def _far(self, sequence: int, payload: bytes | memoryview, out: list) -> None:
        stray = self._stray
        if stray is not None and sequence == (stray[0] + 1) & _SEQUENCE_MASK:
            # Two far packets in a row: a new stream. The held audio of the old one
            # comes out, then the new one starts at the packet kept aside.
            self._stray = None
            self.packets_stray -= 1
            self.resets += 1
            while self.held:
                self._release(out)
            self._next = stray[0]
            self._received = 0
            self._place(stray[0], stray[1], out)
            self._place(sequence, payload, out)
            return
        self._stray = (sequence, payload)
        self.packets_stray += 1
