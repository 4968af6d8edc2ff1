"""What a recognizer stream costs, measured: ``python -m eko_bench.asr_measure --streams N --seconds S``.

Theory of operation: one trio process runs ``--streams`` recognizer clients (by
default the server's :class:`~eko_rtp.asr.deepgram_client.DeepgramStream`) against
the bench's fake Deepgram (:class:`~eko_bench.fake_asr.FakeAsr`, its own process, so
its CPU is not counted), each fed like a call: a 100 ms message of G.711 (five
20 ms frames, ``--chunk-frames``) on an absolute schedule, the streams' schedules
spread over 20 ms. The fake answers with an interim ``Results`` every second of
audio, so the receive path and the reply parsing are in the figure too. CPU is the
process's user and system time (``getrusage``) over the steady part of the run,
after every stream is connected, divided by the messages sent.

``--client none`` is the harness alone (a consumer that drains each channel and
sends nothing): its cost is the feeding, not the recognizer; subtract it.
``--client MODULE:CLASS`` measures another implementation with the same
constructor and ``run``. Several ``--client`` run in turn, ``--rounds`` times, so a
neighbour's burst of CPU lands on all of them alike; the summary gives medians.

``--memory`` instead opens the streams, lets them settle and reports, per stream,
the Python heap they hold (``tracemalloc``) and the growth of the resident set.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import resource
import statistics
import sys
import tracemalloc
from collections.abc import Callable

import trio

from eko_bench.fake_asr import FakeAsr
from eko_rtp.asr.deepgram_api import AsrSettings
from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS

__all__ = ["main", "measure_cpu", "measure_memory"]

DEFAULT_CLIENT = "eko_rtp.asr.deepgram_client:DeepgramStream"
SETTLE_SECONDS = 2.0  # after the last stream started, before the clock runs
SPREAD_SECONDS = 0.02  # the streams' schedules are spread over one frame period


class _Drain:
    """The harness alone: takes the audio and sends nothing."""

    def __init__(self, **_: object) -> None:
        pass

    async def run(self, audio: trio.MemoryReceiveChannel[bytes], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for _ in audio:
            pass


class _Count:
    """Streams started so far (called once by each)."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> None:
        self.value += 1


def load_client(spec: str) -> Callable[..., object]:
    """``none`` or ``MODULE:CLASS``: the class whose instances are streams."""
    if spec == "none":
        return _Drain
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--client {spec!r}: expected MODULE:CLASS or none")
    return getattr(importlib.import_module(module), name)


def _cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _streams(fake: FakeAsr, client: Callable[..., object], streams: int, chunk_frames: int,
                   seconds: float, on_started: Callable[[], None], clock_start: trio.Event) -> None:
    """Run ``streams`` clients, fed ``seconds`` of audio once ``clock_start`` is set."""
    period = FRAME_SECONDS * chunk_frames
    chunk = b"\xff" * (FRAME_BYTES * chunk_frames)
    settings = AsrSettings(base_url=fake.base_url)

    async def one(index: int) -> None:
        send, receive = trio.open_memory_channel[bytes](1000)
        stream = client(settings=settings, api_key=fake.api_key, on_event=lambda event: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(stream.run, receive)
            on_started()
            await clock_start.wait()
            start = trio.current_time() + (index % 20) * SPREAD_SECONDS / 20
            async with send:
                for count in range(int(seconds / period)):
                    await trio.sleep_until(start + count * period)
                    send.send_nowait(chunk)

    async with trio.open_nursery() as nursery:
        for index in range(streams):
            nursery.start_soon(one, index)


def measure_cpu(fake: FakeAsr, client: Callable[..., object], *, streams: int, seconds: float,
                chunk_frames: int = 5) -> dict[str, float]:
    """One run: CPU seconds (user, system, both), wall seconds and messages sent in the steady part."""
    figures: dict[str, float] = {}

    async def main() -> None:
        started = _Count()
        clock_start = trio.Event()

        async def clock() -> None:
            with trio.fail_after(30):
                while started.value < streams:
                    await trio.sleep(0.05)
            await trio.sleep(SETTLE_SECONDS)
            cpu = _cpu_seconds()
            clock_start.set()
            wall = seconds - 0.5  # the streams' last messages and their closes stay out
            await trio.sleep(wall)
            user, system = _cpu_seconds()
            figures.update(user=user - cpu[0], system=system - cpu[1], busy=user + system - sum(cpu), wall=wall,
                           messages=streams * wall / (FRAME_SECONDS * chunk_frames))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock)
            nursery.start_soon(_streams, fake, client, streams, chunk_frames, seconds, started, clock_start)

    trio.run(main)
    return figures


def measure_memory(fake: FakeAsr, client: Callable[..., object], *, streams: int) -> dict[str, float]:
    """Bytes per open, idle stream: Python heap (tracemalloc) and resident set growth."""
    figures: dict[str, float] = {}

    async def main() -> None:
        started = _Count()
        clock_start = trio.Event()

        async def probe(cancel: trio.CancelScope) -> None:
            await trio.sleep(0.5)  # trio's own structures and the first imports settle
            gc.collect()
            rss, heap = _rss_bytes(), tracemalloc.get_traced_memory()[0]
            done.set()
            with trio.fail_after(60):
                while started.value < streams:
                    await trio.sleep(0.05)
            await trio.sleep(1.0)
            gc.collect()
            figures.update(heap=(tracemalloc.get_traced_memory()[0] - heap) / streams,
                           rss=(_rss_bytes() - rss) / streams)
            cancel.cancel()

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe, nursery.cancel_scope)
            await done.wait()
            nursery.start_soon(_streams, fake, client, streams, 5, 3600.0, started, clock_start)

    tracemalloc.start()
    try:
        trio.run(main)
    finally:
        tracemalloc.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eko_bench.asr_measure", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stream in a CPU run (default 10)")
    parser.add_argument("--chunk-frames", type=int, default=5, help="20 ms frames per message (default 5)")
    parser.add_argument("--client", action="append", help=f"MODULE:CLASS or none (default {DEFAULT_CLIENT})")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each client, in turn (default 1)")
    parser.add_argument("--memory", action="store_true", help="bytes per idle stream instead of CPU")
    args = parser.parse_args(argv)
    clients = args.client or [DEFAULT_CLIENT]
    loaded = [(spec, load_client(spec)) for spec in clients]
    per_message: dict[str, list[float]] = {spec: [] for spec in clients}
    with FakeAsr() as fake:
        for _ in range(args.rounds):
            for spec, client in loaded:
                if args.memory:
                    figures = measure_memory(fake, client, streams=args.streams)
                    print(f"{spec}: {args.streams} streams, {figures['heap'] / 1024:.1f} KiB heap and "
                          f"{figures['rss'] / 1024:.1f} KiB RSS per stream", flush=True)
                    continue
                figures = measure_cpu(fake, client, streams=args.streams, seconds=args.seconds,
                                      chunk_frames=args.chunk_frames)
                micros = 1e6 * figures["busy"] / figures["messages"]
                system = 1e6 * figures["system"] / figures["messages"]
                per_message[spec].append(micros)
                print(f"{spec}: {args.streams} streams, {100 * figures['busy'] / figures['wall']:.1f} % of a core, "
                      f"{micros:.1f} µs a message ({system:.1f} in the kernel), "
                      f"{micros / args.chunk_frames:.1f} µs a frame", flush=True)
    if not args.memory:
        for spec, runs in per_message.items():
            median = statistics.median(runs)
            print(f"median {spec}: {median:.1f} µs a message, {median / args.chunk_frames:.1f} µs a frame "
                  f"({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
