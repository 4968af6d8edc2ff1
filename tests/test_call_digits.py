"""The caller's keys on their way to the script (call/digits.py)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from eko_rtp.call import digits as digits_module
from eko_rtp.call.digits import DigitQueue


@pytest.fixture
def channels_opened(monkeypatch):
    """How many memory channels the digit queues open."""
    opened = []
    real = trio.open_memory_channel

    class Counting:
        def __getitem__(self, item):
            def open_channel(capacity):
                opened.append(capacity)
                return real[item](capacity)
            return open_channel

    monkeypatch.setattr(digits_module.trio, "open_memory_channel", Counting())
    return opened


def test_a_call_without_keys_opens_no_channel(channels_opened):
    queue = DigitQueue(call_id="c1")
    assert queue.pending == 0
    queue.close()
    assert channels_opened == []


async def test_keys_pressed_before_the_script_reads_are_kept_in_order(channels_opened):
    heard = []
    queue = DigitQueue(call_id="c1", on_digit=lambda: heard.append("key"))
    queue.deliver("1")
    queue.deliver("#")
    assert channels_opened == [32]
    assert queue.pending == 2 and heard == ["key", "key"]
    queue.close()
    assert [digit async for digit in queue.receive] == ["1", "#"]


async def test_a_script_that_reads_first_gets_the_key_pressed_later(channels_opened):
    queue = DigitQueue(call_id="c1")
    got = []

    async def read():
        got.append(await queue.receive.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        queue.deliver("5")
    assert got == ["5"] and channels_opened == [32]


async def test_closed_before_anything_the_script_reads_the_end():
    queue = DigitQueue(call_id="c1")
    queue.close()
    with pytest.raises(trio.EndOfChannel):
        await queue.receive.receive()
    queue.deliver("9")  # after the BYE: nobody's, and no error
    assert queue.dropped == 0


def test_keys_beyond_the_capacity_are_dropped_and_counted():
    queue = DigitQueue(call_id="c1", capacity=2)
    for digit in "123":
        queue.deliver(digit)
    assert queue.pending == 2 and queue.dropped == 1
