"""The shared frame clock: absolute schedules on a 1 ms grid, exact under the autojump clock."""

import pytest
import trio
import trio.testing

from eko_rtp.media.clock import FrameClock


class RecordingStream:
    def __init__(self, t0: float, frames: int, period: float = 0.020):
        self.t0 = t0
        self.period = period
        self.frames = frames
        self.sent: list[tuple[int, float]] = []
        self.index = 1
        self.next_due = t0 + period

    def send_due(self, now):
        while self.index < self.frames and self.t0 + self.index * self.period <= now + 1e-9:
            self.sent.append((self.index, now))
            self.index += 1
        if self.index >= self.frames:
            return None
        return self.t0 + self.index * self.period


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_frames_leave_at_their_phase_rounded_up_to_the_millisecond(autojump_clock):
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        await trio.sleep(0.0105)
        first = RecordingStream(trio.current_time(), frames=5)
        clock.schedule(first)
        await trio.sleep(0.003)
        second = RecordingStream(trio.current_time(), frames=3)
        clock.schedule(second)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert [(i, round(t, 6)) for i, t in first.sent] == [(1, 0.031), (2, 0.051), (3, 0.071), (4, 0.091)]
    assert [(i, round(t, 6)) for i, t in second.sent] == [(1, 0.034), (2, 0.054)]


async def test_many_streams_one_wakeup_per_slot(autojump_clock):
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        await trio.sleep(0.001)
        streams = [RecordingStream(trio.current_time(), frames=11) for _ in range(100)]
        for stream in streams:
            clock.schedule(stream)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert all(len(s.sent) == 10 for s in streams)
    assert clock.ticks == 10  # all 100 share a slot: one wake-up per frame period


async def test_a_late_clock_sends_the_missed_frames_at_once(autojump_clock):
    clock = FrameClock()
    stream = RecordingStream(0.0, frames=6)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        clock.schedule(stream)
        await trio.sleep(0.015)
        autojump_clock.jump(0.050)  # the loop was blocked for 50 ms
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    times = [round(t, 6) for _, t in stream.sent]
    assert times[:3] == [times[0]] * 3 and times[0] >= 0.065  # frames 1-3 sent together, late
    assert [round(t, 6) for t in times[3:]] == [0.08, 0.1]  # then back on schedule
