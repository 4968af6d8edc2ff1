"""The inbound reorder buffer: order restored, gaps concealed, late, duplicate and far packets."""

from __future__ import annotations


import hypothesis
import hypothesis.strategies as st
import pytest

from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE
from eko_rtp.media.reorder import MAX_JUMP, MAX_PAYLOAD_BYTES, ReorderBuffer

COUNTERS = ("packets_late", "packets_duplicate", "packets_refused", "packets_stray", "packets_concealed", "resets")


def tag_of(sequence: int) -> int:
    """The byte a test packet is filled with: never 0xFF (µ-law silence) nor 0xD5 (A-law)."""
    return sequence % 200


def packet(sequence: int, size: int = 160) -> bytes:
    return bytes((tag_of(sequence),)) * size


def show(frames) -> list:
    """Frames as their fill byte, or "-" for silence; each must be one uniform 160-byte frame."""
    shown = []
    for frame in frames:
        assert len(frame) == 160
        first = frame[0]
        assert bytes(frame) == bytes((first,)) * 160, f"frame is not uniform: {bytes(frame)!r}"
        shown.append("-" if first == ULAW_SILENCE else first)
    return shown


def run(buffer: ReorderBuffer, sequences) -> list:
    """Push each sequence number; the frames each push returned, shown."""
    return [show(buffer.push(sequence, packet(sequence))) for sequence in sequences]


def counters(buffer: ReorderBuffer) -> dict:
    return {name: getattr(buffer, name) for name in COUNTERS if getattr(buffer, name)}


@pytest.mark.parametrize(
    ("window", "sequences", "outputs", "expected_counters"),
    [
        # In order: each packet comes out at once.
        (3, [10, 11, 12], [[10], [11], [12]], {}),
        # Two swapped packets are put back in order.
        (3, [10, 12, 11, 13], [[10], [], [11, 12], [13]], {}),
        # Reversed inside the window.
        (3, [10, 13, 12, 11], [[10], [], [], [11, 12, 13]], {}),
        # A loss: waited for until the packet `window` places after it arrives.
        (3, [10, 12, 13, 14], [[10], [], [], ["-", 12, 13, 14]], {"packets_concealed": 1}),
        # ...and when it comes after that, it is late.
        (3, [10, 12, 13, 14, 11], [[10], [], [], ["-", 12, 13, 14], []],
         {"packets_concealed": 1, "packets_late": 1}),
        # Two losses in a row, concealed one frame each.
        (3, [10, 13, 14, 15], [[10], [], ["-"], ["-", 13, 14, 15]], {"packets_concealed": 2}),
        # A packet far beyond the window (but within MAX_JUMP) conceals the gap frame by frame.
        (3, [10, 15, 16, 17], [[10], ["-", "-"], ["-"], ["-", 15, 16, 17]], {"packets_concealed": 4}),
        # Duplicates: of a packet already out, of a held one.
        (3, [10, 11, 10, 11], [[10], [11], [], []], {"packets_duplicate": 2}),
        (3, [10, 12, 12, 11], [[10], [], [], [11, 12]], {"packets_duplicate": 1}),
        # A duplicate of a packet that came out, after its neighbour was concealed.
        (3, [10, 12, 13, 14, 12], [[10], [], [], ["-", 12, 13, 14], []],
         {"packets_concealed": 1, "packets_duplicate": 1}),
        # A packet from before the first one is late.
        (3, [10, 9], [[10], []], {"packets_late": 1}),
        # Wraparound of the 16-bit sequence number, in order and reordered.
        (3, [65534, 65535, 0, 1], [[65534 % 200], [65535 % 200], [0], [1]], {}),
        (3, [65534, 0, 65535, 1], [[65534 % 200], [], [65535 % 200, 0], [1]], {}),
        (3, [65535, 1, 2, 3], [[65535 % 200], [], [], ["-", 1, 2, 3]], {"packets_concealed": 1}),
        # window=1 reorders nothing: a gap is concealed as soon as a later packet arrives.
        (1, [10, 12, 11, 13], [[10], ["-", 12], [], [13]], {"packets_concealed": 1, "packets_late": 1}),
        # window=5 waits longer.
        (5, [10, 14, 13, 12, 11], [[10], [], [], [], [11, 12, 13, 14]], {}),
        # A single stray packet far away is ignored and costs nothing.
        (3, [10, 11, 5000, 12], [[10], [11], [], [12]], {"packets_stray": 1}),
        (3, [10, 11, 40000, 12], [[10], [11], [], [12]], {"packets_stray": 1}),
        # A source restart far ahead: two consecutive packets confirm it; no silence for the jump.
        (3, [10, 11, 5000, 5001, 5002], [[10], [11], [], [5000 % 200, 5001 % 200], [5002 % 200]], {"resets": 1}),
        # ...or far behind (a new random origin).
        (3, [30000, 30001, 100, 101], [[0], [1], [], [100, 101]], {"resets": 1}),
        # What was held when the stream restarted comes out first, its gap as silence.
        (3, [10, 12, 900, 901], [[10], [], [], ["-", 12, 900 % 200, 901 % 200]],
         {"resets": 1, "packets_concealed": 1}),
        # Two strays that are not consecutive start nothing.
        (3, [10, 900, 3000, 11], [[10], [], [], [11]], {"packets_stray": 2}),
        # A restart, with its second packet reordered before an old in-flight one.
        (3, [10, 900, 11, 901], [[10], [], [11], [900 % 200, 901 % 200]], {"resets": 1}),
    ],
)
def test_reorder_table(window, sequences, outputs, expected_counters):
    buffer = ReorderBuffer(ULAW_SILENCE, window)
    assert run(buffer, sequences) == outputs
    assert counters(buffer) == expected_counters
    assert buffer.held == 0


def test_a_gap_of_max_jump_packets_is_concealed_frame_by_frame():
    buffer = ReorderBuffer(ULAW_SILENCE)
    assert show(buffer.push(10, packet(10))) == [10]
    # 11..110 lost: MAX_JUMP packets. 111 is MAX_JUMP ahead of the expected 11.
    assert show(buffer.push(111, packet(111))) == ["-"] * (MAX_JUMP - 2)
    assert buffer.held == 1
    assert show(buffer.flush()) == ["-", "-", 111]
    assert buffer.packets_concealed == MAX_JUMP
    assert buffer.resets == 0


def test_one_more_than_max_jump_is_another_stream():
    buffer = ReorderBuffer(ULAW_SILENCE)
    buffer.push(10, packet(10))
    assert buffer.push(112, packet(112)) == []
    assert buffer.packets_stray == 1
    assert show(buffer.push(113, packet(113))) == [112, 113]
    assert (buffer.packets_stray, buffer.resets, buffer.packets_concealed) == (0, 1, 0)


def test_flush_gives_up_on_gaps_and_tracking_goes_on():
    buffer = ReorderBuffer(ULAW_SILENCE)
    assert run(buffer, [10, 12, 13]) == [[10], [], []]
    assert show(buffer.flush()) == ["-", 12, 13]
    assert buffer.flush() == []
    assert run(buffer, [14, 11, 13]) == [[14], [], []]
    assert (buffer.packets_concealed, buffer.packets_late, buffer.packets_duplicate) == (1, 1, 1)


def test_in_order_payload_comes_out_uncopied():
    buffer = ReorderBuffer(ULAW_SILENCE)
    data = b"\x80\x00" + bytes(10) + packet(7)  # a datagram: header, then payload
    payload = memoryview(data)[12:]
    (frame,) = buffer.push(7, payload)
    assert frame is payload
    held = memoryview(packet(9))
    assert buffer.push(9, held) == []
    first, second = buffer.push(8, packet(8))
    assert second is held


def test_writable_buffers_are_copied_before_being_held():
    buffer = ReorderBuffer(ULAW_SILENCE)
    scratch = bytearray(packet(2))
    buffer.push(0, packet(0))
    assert buffer.push(2, scratch) == []
    scratch[:] = packet(99)  # the owner reuses its buffer
    assert show(buffer.push(1, packet(1))) == [1, 2]
    scratch[:] = packet(3)
    (frame,) = buffer.push(3, memoryview(scratch))
    scratch[:] = packet(98)
    assert show([frame]) == [3]


def test_alaw_silence_byte():
    buffer = ReorderBuffer(ALAW_SILENCE, window=1)
    buffer.push(0, packet(0))
    silence, _ = buffer.push(2, packet(2))
    assert silence == b"\xd5" * 160


def test_10ms_packets_make_a_frame_every_second_packet():
    buffer = ReorderBuffer(ULAW_SILENCE)
    half = [bytes((n,)) * 80 for n in range(1, 7)]
    assert buffer.push(0, half[0]) == []
    assert buffer.push(1, half[1]) == [half[0] + half[1]]
    # Packet 2 lost: concealed with 80 bytes (the packets' size), not a whole frame.
    assert buffer.push(3, half[3]) == []
    assert buffer.push(4, half[4]) == []
    assert buffer.push(5, half[5]) == [b"\xff" * 80 + half[3], half[4] + half[5]]
    assert buffer.packets_concealed == 1


def test_30ms_packets_are_cut_into_frames_and_flush_pads_the_last():
    buffer = ReorderBuffer(ULAW_SILENCE)
    one, two, three = (bytes((n,)) * 240 for n in (1, 2, 3))
    audio = one + two + three
    assert buffer.push(0, one) == [audio[0:160]]
    assert buffer.push(1, two) == [audio[160:320], audio[320:480]]
    assert buffer.push(2, three) == [audio[480:640]]
    assert buffer.flush() == [audio[640:720] + b"\xff" * 80]
    assert buffer.flush() == []


def test_over_long_payload_is_refused_and_its_place_concealed():
    buffer = ReorderBuffer(ULAW_SILENCE, window=1)
    buffer.push(0, packet(0))
    assert buffer.push(1, bytes(MAX_PAYLOAD_BYTES + 1)) == []
    assert buffer.packets_refused == 1
    assert show(buffer.push(2, packet(2))) == ["-", 2]
    # The bound itself is accepted.
    assert len(buffer.push(3, bytes(MAX_PAYLOAD_BYTES))) == MAX_PAYLOAD_BYTES // 160


def test_empty_payload_takes_its_place_without_audio():
    buffer = ReorderBuffer(ULAW_SILENCE)
    assert run(buffer, [0]) == [[0]]
    assert buffer.push(1, b"") == []
    assert run(buffer, [2]) == [[2]]
    assert buffer.packets_concealed == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((ULAW_SILENCE, 0), "window must be 1..10 frames, not 0"),
        ((ULAW_SILENCE, 11), "window must be 1..10 frames, not 11"),
        ((ULAW_SILENCE, 2.0), "window must be 1..10 frames, not 2.0"),
        ((256,), "codec_silence must be one byte value 0..255, not 256"),
        ((b"\xff",), "codec_silence must be one byte value 0..255, not b'\\xff'"),
    ],
)
def test_bad_construction(arguments, message):
    with pytest.raises(ValueError) as caught:
        ReorderBuffer(*arguments)
    assert str(caught.value) == message


@pytest.mark.parametrize("sequence", [-1, 65536])
def test_sequence_outside_16_bits_is_a_programming_error(sequence):
    with pytest.raises(ValueError) as caught:
        ReorderBuffer(ULAW_SILENCE).push(sequence, packet(0))
    assert str(caught.value) == f"RTP sequence number {sequence} outside 0..65535"


@hypothesis.given(
    window=st.integers(1, 10),
    start=st.integers(0, 65535),
    delays=st.lists(st.integers(0, 9), min_size=1, max_size=60),
)
def test_reordering_within_the_window_is_undone_exactly(window, start, delays):
    # Packet n is overtaken by at most window - 1 later ones: it arrives before n + window.
    count = len(delays)
    delays[0] = 0  # the first packet to arrive starts the stream: one before it would be late
    arrival = sorted(range(count), key=lambda n: (n + delays[n] % window, n))
    buffer = ReorderBuffer(ULAW_SILENCE, window)
    out = []
    for n in arrival:
        sequence = (start + n) % 65536
        out += buffer.push(sequence, packet(sequence))
    out += buffer.flush()
    assert show(out) == [tag_of((start + n) % 65536) for n in range(count)]
    assert counters(buffer) == {}


@hypothesis.given(
    window=st.integers(1, 10),
    start=st.integers(0, 65535),
    delays=st.lists(st.integers(0, 12), min_size=1, max_size=60),
    lost=st.sets(st.integers(1, 59)),
)
def test_every_position_comes_out_once_in_order(window, start, delays, lost):
    count = len(delays)
    kept = [n for n in range(count) if n not in lost]
    arrival = sorted(kept, key=lambda n: (n + delays[n], n))
    buffer = ReorderBuffer(ULAW_SILENCE, window)
    out = []
    for n in arrival:
        sequence = (start + n) % 65536
        out += buffer.push(sequence, packet(sequence))
    out += buffer.flush()
    shown = show(out)
    # Every position from the first packet that arrived to the newest comes out once,
    # in order: as its own packet or as silence.
    first = arrival[0]
    positions = range(first, max(kept) + 1)
    assert len(shown) == len(positions)
    for position, frame in zip(positions, shown):
        assert frame in ("-", tag_of((start + position) % 65536))
    assert shown.count("-") == buffer.packets_concealed
    assert len(shown) - shown.count("-") + buffer.packets_late == len(kept)
    assert buffer.packets_duplicate == buffer.packets_stray == buffer.resets == 0
