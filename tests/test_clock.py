"""The shared frame clock: absolute schedules on a 1 ms grid, exact under the autojump clock."""

import pytest
import trio
import trio.testing

from eko_rtp.media.clock import MAX_SHIFT_SLOTS, PACK_LIMIT, FrameClock


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


async def test_a_stream_that_changes_phase_is_moved_and_stays_on_time(autojump_clock):
    clock = FrameClock()
    stream = RecordingStream(0.0, frames=5, period=0.030)  # 30 ms: a new phase every frame
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        clock.schedule(stream)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert [(i, round(t, 6)) for i, t in stream.sent] == [(1, 0.03), (2, 0.06), (3, 0.09), (4, 0.12)]
    assert clock.streams == 0  # it returned None after its last frame and left the wheel


async def _start_streams(clock, starts, frames=4):
    """Schedule one stream per start time, each moved as the server moves it."""
    streams, shifts = [], []
    for t0 in starts:
        stream = RecordingStream(t0, frames=frames)
        shift = clock.balancing_shift(stream.next_due)
        stream.t0 += shift
        stream.next_due += shift
        shifts.append(round(shift, 6))
        clock.schedule(stream)
        streams.append(stream)
    return streams, shifts


def _packets_per_tick(streams):
    per_tick = {}
    for stream in streams:
        for _, sent_at in stream.sent:
            per_tick[round(sent_at, 6)] = per_tick.get(round(sent_at, 6), 0) + 1
    return per_tick


@pytest.mark.parametrize("count", [2 * PACK_LIMIT + 12, 20 * PACK_LIMIT + 80])
async def test_streams_answered_together_share_ticks_up_to_a_limit_then_spread(autojump_clock, count):
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        await trio.sleep(0.0004)
        # All answered in the same instant, as a burst from a paced trunk.
        streams, shifts = await _start_streams(clock, [trio.current_time()] * count)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert 0 <= min(shifts) and max(shifts) <= MAX_SHIFT_SLOTS * 0.001 + 1e-9  # only later, within a period
    assert shifts[0] == 0  # the first takes its own phase
    per_tick = _packets_per_tick(streams)
    if count <= 20 * PACK_LIMIT:  # the period's 20 milliseconds can hold them packed
        assert max(per_tick.values()) == PACK_LIMIT and len(per_tick) == 3 * -(-count // PACK_LIMIT)
    else:  # every bucket is full: spread evenly over the 20
        assert len(per_tick) == 3 * 20 and max(per_tick.values()) - min(per_tick.values()) <= 1
    for stream in streams:  # and each keeps a steady 20 ms after its shift
        times = [t for _, t in stream.sent]
        assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [0.02, 0.02]


@pytest.mark.parametrize("gaps", [(0.0, 0.003, 0.0012, 0.0004), (0.0, 0.0071, 0.0052, 0.0043)])
async def test_a_few_calls_answered_at_different_moments_share_one_wakeup(autojump_clock, gaps):
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        starts = []
        for gap in gaps:  # four answers within a frame period, near each other or spread over it
            await trio.sleep(gap)
            starts.append(trio.current_time())
        streams, shifts = await _start_streams(clock, starts, frames=6)
        ticks_before = clock.ticks
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    ticks = sorted(_packets_per_tick(streams))
    assert len({round(tick * 1000) % 20 for tick in ticks}) == 1  # one phase (ms of the period) serves all four
    assert [round(b - a, 6) for a, b in zip(ticks, ticks[1:])] == [0.02] * (len(ticks) - 1)
    assert clock.ticks - ticks_before == len(ticks) <= 6  # one wake-up a frame period
    assert all(0 <= shift < 0.020 for shift in shifts)


async def test_wait_tick_returns_after_the_next_tick(autojump_clock):
    clock = FrameClock()
    stream = RecordingStream(0.0, frames=50)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        clock.schedule(stream)
        await trio.sleep(0.025)
        ticks = clock.ticks
        await clock.wait_tick()
        assert clock.ticks == ticks + 1 and round(trio.current_time(), 6) == 0.04
        nursery.cancel_scope.cancel()
    idle = FrameClock()
    with trio.fail_after(1):
        await idle.wait_tick()  # no streams: nothing to wait for
