"""The playout queue: frames, silence between sources, talkspurt markers, completion."""

import pytest

from eko_rtp.media.playout import CachedSource, LiveSource, PlayoutQueue, SilenceSource

SILENCE = b"\xff" * 160


def frames_of(*values: int) -> memoryview:
    return memoryview(b"".join(bytes([v]) * 160 for v in values))


def drain(queue: PlayoutQueue, count: int) -> list[tuple[int, bool]]:
    out = []
    for _ in range(count):
        frame, marker = queue.next_frame()
        assert len(frame) == 160
        out.append((frame[0], marker))
    return out


def test_empty_queue_plays_silence_without_marker():
    queue = PlayoutQueue(SILENCE)
    assert drain(queue, 3) == [(0xFF, False)] * 3


def test_cached_phrase_zero_copy_marker_on_first_frame_and_completion_on_last():
    finished = []
    audio = frames_of(1, 2, 3)
    queue = PlayoutQueue(SILENCE)
    queue.enqueue(CachedSource(audio, on_finished=lambda: finished.append("a")))
    frame, marker = queue.next_frame()
    assert isinstance(frame, memoryview) and frame.obj is audio.obj  # a slice, not a copy
    assert (frame[0], marker) == (1, True)
    assert drain(queue, 1) == [(2, False)]
    assert finished == []
    assert drain(queue, 1) == [(3, False)]
    assert finished == ["a"]  # finished as its last frame is handed out
    assert drain(queue, 1) == [(0xFF, False)]


def test_two_phrases_back_to_back_have_no_gap_and_one_talkspurt():
    queue = PlayoutQueue(SILENCE)
    queue.enqueue(CachedSource(frames_of(1, 2)))
    queue.enqueue(CachedSource(frames_of(3)))
    assert drain(queue, 4) == [(1, True), (2, False), (3, False), (0xFF, False)]


def test_pause_then_phrase_starts_a_new_talkspurt():
    queue = PlayoutQueue(SILENCE)
    done = []
    queue.enqueue(CachedSource(frames_of(1)))
    queue.enqueue(SilenceSource(2, SILENCE, on_finished=lambda: done.append(1)))
    queue.enqueue(CachedSource(frames_of(2)))
    assert drain(queue, 4) == [(1, True), (0xFF, False), (0xFF, False), (2, True)]
    assert done == [1]


def test_live_source_underrun_plays_silence_then_resumes_and_ends():
    queue = PlayoutQueue(SILENCE)
    done = []
    live = LiveSource(on_finished=lambda: done.append(1))
    queue.enqueue(live)
    assert drain(queue, 2) == [(0xFF, False)] * 2
    live.push(bytes([7]) * 160)
    live.push(bytes([8]) * 160)
    assert drain(queue, 1) == [(7, True)]
    live.end()
    assert drain(queue, 1) == [(8, False)]
    assert done == [1]
    assert live.underruns == 2


def test_hybrid_cached_then_live_ready_is_gapless():
    queue = PlayoutQueue(SILENCE)
    live = LiveSource()
    live.push(bytes([9]) * 160)
    live.end()
    queue.enqueue(CachedSource(frames_of(1)))
    queue.enqueue(live)
    assert drain(queue, 3) == [(1, True), (9, False), (0xFF, False)]


def test_clear_finishes_everything_queued():
    queue = PlayoutQueue(SILENCE)
    done = []
    queue.enqueue(CachedSource(frames_of(1, 2), on_finished=lambda: done.append("a")))
    queue.enqueue(LiveSource(on_finished=lambda: done.append("b")))
    queue.next_frame()
    queue.clear()
    assert done == ["a", "b"]
    assert drain(queue, 1) == [(0xFF, False)]


def test_bad_frame_sizes_are_refused():
    with pytest.raises(ValueError, match="whole 160-byte frames, got 100 bytes"):
        CachedSource(memoryview(b"\x00" * 100))
    with pytest.raises(ValueError, match="live frames must be 160 bytes, got 3"):
        LiveSource().push(b"abc")
