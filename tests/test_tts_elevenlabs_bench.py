"""Benchmark: our ElevenLabs client (httpx in trio) against the SDK's clients, on the fake API.

Run (the figures in docs/BENCHMARKS.md, "ElevenLabs client: one for both paths")::

    .venv/bin/python tests/test_tts_elevenlabs_bench.py --requests 200 --phrases 30 --rounds 20 --repeats 3

(a) Live: ``--requests`` utterances one after the other, each streamed to its end on
a kept-alive connection, the fake sending 1000-byte chunks 20 ms apart: from the
fake writing the first audio bytes to the trio task holding them, and from the call
to that moment. (b) Hang-up: ``--requests`` more, the caller hanging up as soon as
the first chunk is in hand, chunks 100 ms apart: from the hang-up to the fake seeing
the connection close (until then the provider goes on generating, and billing).
(c) Batch: ``--rounds`` passes over a catalogue of ``--phrases`` phrases, whole
bodies, 4 requests in flight under a ``trio.CapacityLimiter`` as ``cache build``
runs them, with an instant fake and with 100 ms to first byte, ``--repeats`` times
each, variants alternating: renders per second and this process's CPU per render
(the fake's is not counted).

The fake runs in a child process (its own interpreter and GIL, as a remote API
would be) and stamps ``time.perf_counter()``, CLOCK_MONOTONIC on Linux, so its stamps
and ours are on one clock. Under pytest a few requests per variant check that each
still gets the right audio and yields a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import trio
from elevenlabs import AsyncElevenLabs, ElevenLabs
from fake_elevenlabs import FakeElevenLabs, Respond, expected_audio

from eko_rtp.tts.elevenlabs_api import RetryPolicy, SpeechApi
from eko_rtp.tts.elevenlabs_client import ElevenLabsClient

KEY = "bench-key"
VOICE = "voice-bench"
MODEL = "eleven_flash_v2_5"
IN_FLIGHT = 4
# The fake answers every request with the audio of one text, made once: rendering a
# tone per request costs the fake about a millisecond per character, which would be
# measured as the client's time. Live: 4000 bytes (4 chunks); batch: a 2 s phrase.
LIVE_AUDIO_OF = "Un, deux !"
BATCH_AUDIO_OF = "Votre rendez-vous est confirmé à 9 h 30."
LIVE_AUDIO = expected_audio(LIVE_AUDIO_OF)
BATCH_AUDIO = expected_audio(BATCH_AUDIO_OF)
LIVE_RESPOND = {"chunk_size": 1000, "chunk_delay": 0.02, "audio_of": LIVE_AUDIO_OF}
HANG_UP_RESPOND = {"chunk_size": 1000, "chunk_delay": 0.1, "audio_of": LIVE_AUDIO_OF}
BATCH_FIRST_BYTE_DELAYS = (0.0, 0.1)
SDK_DEFAULT = "default"  # the SDK's own chunk_size (1024), as it ships


# -- the fake, in a child process driven over stdin/stdout, one JSON line each way --


def serve() -> None:
    """Child side: run the fake. ``{"default": {...}}`` sets its answer (a :class:`Respond`,
    ``audio_of`` a text whose audio it sends); ``{"stamps": true}`` returns
    {text: [first_byte_at, disconnected_at]} for the requests since the last call."""
    with FakeElevenLabs(api_key=KEY, poll_interval=0.001) as fake:
        print(json.dumps({"base_url": fake.base_url}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if "default" in command:
                options = dict(command["default"])
                fake.default = Respond(audio=expected_audio(options.pop("audio_of")), **options)
                print("{}", flush=True)
            elif "stamps" in command:
                records, fake.requests[:] = list(fake.requests), []
                for record in records:
                    record.wait_finished()
                stamps = {record.json["text"]: [record.first_byte_at, record.disconnected_at] for record in records}
                print(json.dumps(stamps), flush=True)


class FakeProcess:
    def __enter__(self) -> FakeProcess:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.base_url = json.loads(self._process.stdout.readline())["base_url"]
        return self

    def ask(self, command: dict) -> dict:
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def __exit__(self, *exc_info: object) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=10)


# -- the clients under test --


def our_client(base_url: str) -> ElevenLabsClient:
    api = SpeechApi(api_key=KEY, base_url=base_url, voice_id=VOICE, model_id=MODEL, optimize_streaming_latency=3)
    return ElevenLabsClient(api, RetryPolicy(retries=0, first_backoff=0, max_backoff=0), timeout=30.0)


def our_stream(client: ElevenLabsClient, text: str):
    return contextlib.aclosing(client.stream(text, first_byte_timeout=5.0, stall_timeout=5.0))


def sdk_stream(client: ElevenLabs | AsyncElevenLabs, text: str, chunk_size: object):
    options: dict = {"max_retries": 0}  # the SDK's retries off, as a wrapper of ours would have them
    if chunk_size != SDK_DEFAULT:
        options["chunk_size"] = chunk_size
    return client.text_to_speech.stream(VOICE, text=text, model_id=MODEL, output_format="ulaw_8000",
                                        optimize_streaming_latency=3, request_options=options)


def sdk_convert(client: ElevenLabs | AsyncElevenLabs, text: str):
    return client.text_to_speech.convert(VOICE, text=text, model_id=MODEL, output_format="ulaw_8000",
                                         request_options={"max_retries": 0})


# (a) each speaks `texts` to the end, noting when it called and when it held the first chunk.


async def live_ours(base_url: str, texts: list[str], called: dict, first: dict) -> None:
    client = our_client(base_url)
    for text in texts:
        audio = bytearray()
        called[text] = time.perf_counter()
        async with our_stream(client, text) as chunks:
            async for chunk in chunks:
                if not audio:
                    first[text] = time.perf_counter()
                audio += chunk
        assert audio == LIVE_AUDIO
    await client.aclose()


def live_sdk_thread(chunk_size: object) -> Callable[..., Awaitable[None]]:
    async def run(base_url: str, texts: list[str], called: dict, first: dict) -> None:
        with httpx.Client() as http:
            client = ElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)
            for text in texts:
                called[text] = time.perf_counter()
                chunks = sdk_stream(client, text, chunk_size)
                audio = await trio.to_thread.run_sync(next, chunks)
                first[text] = time.perf_counter()
                while (chunk := await trio.to_thread.run_sync(next, chunks, None)) is not None:
                    audio += chunk
                assert audio == LIVE_AUDIO

    return run


async def live_sdk_async(base_url: str, texts: list[str], called: dict, first: dict) -> None:
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)
        for text in texts:
            audio = bytearray()
            called[text] = time.perf_counter()
            async with contextlib.aclosing(sdk_stream(client, text, None)) as chunks:
                async for chunk in chunks:
                    if not audio:
                        first[text] = time.perf_counter()
                    audio += chunk
            assert audio == LIVE_AUDIO


LIVE_VARIANTS = {
    "ours: httpx in trio": live_ours,
    "SDK sync client, worker thread": live_sdk_thread(SDK_DEFAULT),
    "SDK sync client, worker thread, chunk_size=None": live_sdk_thread(None),
    "SDK async client in trio, chunk_size=None": live_sdk_async,
}


# (b) each hangs up on `texts` once the first chunk is in hand, noting when.


async def hang_up_ours(base_url: str, texts: list[str], hung_up: dict) -> None:
    client = our_client(base_url)
    for text in texts:
        async with our_stream(client, text) as chunks:
            await chunks.__anext__()
            hung_up[text] = time.perf_counter()
    await client.aclose()


async def hang_up_sdk_thread(base_url: str, texts: list[str], hung_up: dict) -> None:
    """The SDK's blocking iterator in a thread feeding the call's task, as live speech would use it."""
    with httpx.Client() as http:
        client = ElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)
        for text in texts:
            send, receive = trio.open_memory_channel(0)

            def produce(text: str = text, send: trio.MemorySendChannel = send) -> None:
                # The thread learns of the hang-up only when it next hands a chunk over.
                with contextlib.closing(sdk_stream(client, text, None)) as chunks:
                    for chunk in chunks:
                        try:
                            trio.from_thread.run(send.send, chunk)
                        except trio.BrokenResourceError:
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, produce))
                await receive.receive()
                hung_up[text] = time.perf_counter()
                await receive.aclose()


async def hang_up_sdk_async(base_url: str, texts: list[str], hung_up: dict) -> None:
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)
        for text in texts:
            async with contextlib.aclosing(sdk_stream(client, text, None)) as chunks:
                await chunks.__anext__()
                hung_up[text] = time.perf_counter()


HANG_UP_VARIANTS = {
    "ours: httpx in trio": hang_up_ours,
    "SDK sync client, worker thread, chunk_size=None": hang_up_sdk_thread,
    "SDK async client in trio, chunk_size=None": hang_up_sdk_async,
}


# (c) each renders `texts`, IN_FLIGHT at a time.


async def batch_ours(base_url: str, texts: list[str]) -> None:
    client = our_client(base_url)
    await in_flight(texts, client.convert)
    await client.aclose()


async def batch_sdk_thread(base_url: str, texts: list[str]) -> None:
    with httpx.Client() as http:
        client = ElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)
        await in_flight(texts, lambda text: trio.to_thread.run_sync(lambda: b"".join(sdk_convert(client, text))))


async def batch_sdk_async(base_url: str, texts: list[str]) -> None:
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=KEY, base_url=base_url, httpx_client=http)

        async def convert(text: str) -> bytes:
            return b"".join([chunk async for chunk in sdk_convert(client, text)])

        await in_flight(texts, convert)


BATCH_VARIANTS = {
    "ours: httpx in trio": batch_ours,
    "SDK sync client, 4 worker threads": batch_sdk_thread,
    "SDK async client in trio": batch_sdk_async,
}


async def in_flight(texts: list[str], render: Callable[[str], Awaitable[bytes]]) -> None:
    limiter = trio.CapacityLimiter(IN_FLIGHT)

    async def one(text: str) -> None:
        async with limiter:
            assert await render(text) == BATCH_AUDIO

    async with trio.open_nursery() as nursery:
        for text in texts:
            nursery.start_soon(one, text)


# -- measuring --


def percentile(values: list[float], rank: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * rank / 100) - 1)]


def measure_live(fake: FakeProcess, requests: int) -> dict[str, dict[str, list[float]]]:
    fake.ask({"default": LIVE_RESPOND})
    results = {}
    for index, (name, variant) in enumerate(LIVE_VARIANTS.items()):
        texts = [f"Requête {request:03d}, client {index}." for request in range(requests)]
        called: dict[str, float] = {}
        first: dict[str, float] = {}
        trio.run(variant, fake.base_url, texts, called, first)
        stamps = fake.ask({"stamps": True})
        results[name] = {
            "handover": [1000 * (first[text] - stamps[text][0]) for text in texts],
            "total": [1000 * (first[text] - called[text]) for text in texts],
        }
    return results


def measure_hang_up(fake: FakeProcess, requests: int) -> dict[str, list[float]]:
    fake.ask({"default": HANG_UP_RESPOND})
    results = {}
    for index, (name, variant) in enumerate(HANG_UP_VARIANTS.items()):
        texts = [f"Raccroché {request:03d}, client {index}." for request in range(requests)]
        hung_up: dict[str, float] = {}
        trio.run(variant, fake.base_url, texts, hung_up)
        stamps = fake.ask({"stamps": True})
        results[name] = [1000 * (stamps[text][1] - hung_up[text]) for text in texts]
    return results


def measure_batch(fake: FakeProcess, phrases: int, rounds: int, repeats: int) -> dict[tuple[float, str], dict]:
    results: dict[tuple[float, str], dict] = {}
    for delay in BATCH_FIRST_BYTE_DELAYS:
        fake.ask({"default": {"first_byte_delay": delay, "audio_of": BATCH_AUDIO_OF}})
        for repeat in range(repeats):
            for index, (name, variant) in enumerate(BATCH_VARIANTS.items()):
                texts = [f"Phrase {phrase:02d}, passage {run}.{repeat}, client {index}."
                         for run in range(rounds) for phrase in range(phrases)]
                began, cpu = time.perf_counter(), time.process_time()
                trio.run(variant, fake.base_url, texts)
                figures = results.setdefault((delay, name), {"rate": [], "cpu": []})
                figures["rate"].append(len(texts) / (time.perf_counter() - began))
                figures["cpu"].append(1000 * (time.process_time() - cpu) / len(texts))
                fake.ask({"stamps": True})
    return results


def report(live: dict, hang_up: dict, batch: dict) -> str:
    lines = ["| (a) live | fake's first byte -> first chunk in hand, p50 / p99 / max (ms) "
             "| call -> first chunk, p50 / p99 (ms) |", "| --- | --- | --- |"]
    for name, figures in live.items():
        handover, total = figures["handover"], figures["total"]
        lines.append(f"| {name} | {statistics.median(handover):.2f} / {percentile(handover, 99):.2f} / "
                     f"{max(handover):.2f} | {statistics.median(total):.2f} / {percentile(total, 99):.2f} |")
    lines += ["", "| (b) hang-up | hang-up -> fake sees the connection close, p50 / p99 / max (ms) |", "| --- | --- |"]
    for name, delays in hang_up.items():
        lines.append(f"| {name} | {statistics.median(delays):.1f} / {percentile(delays, 99):.1f} / {max(delays):.1f} |")
    lines += ["", "| (c) batch | " + " | ".join(
        f"first byte after {delay * 1000:.0f} ms: renders/s, median (min-max); CPU ms/render"
        for delay in BATCH_FIRST_BYTE_DELAYS) + " |", "| --- |" + " --- |" * len(BATCH_FIRST_BYTE_DELAYS)]
    for name in BATCH_VARIANTS:
        cells = []
        for delay in BATCH_FIRST_BYTE_DELAYS:
            rate, cpu = batch[delay, name]["rate"], batch[delay, name]["cpu"]
            cells.append(f"{statistics.median(rate):.1f} ({min(rate):.1f}-{max(rate):.1f}); "
                         f"{statistics.median(cpu):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_every_variant_gets_the_right_audio_and_a_figure():
    with FakeProcess() as fake:
        live = measure_live(fake, requests=3)
        hang_up = measure_hang_up(fake, requests=2)
        batch = measure_batch(fake, phrases=5, rounds=1, repeats=1)
    assert set(live) == set(LIVE_VARIANTS) and set(hang_up) == set(HANG_UP_VARIANTS)
    assert {name for _, name in batch} == set(BATCH_VARIANTS)
    for figures in live.values():
        assert all(len(values) == 3 and min(values) > 0 for values in figures.values())
    assert all(len(delays) == 2 and min(delays) > 0 for delays in hang_up.values())
    assert all(min(figures["rate"]) > 0 for figures in batch.values())
    tables = report(live, hang_up, batch).split("\n\n")
    assert [len(table.splitlines()) - 2 for table in tables] == [
        len(LIVE_VARIANTS), len(HANG_UP_VARIANTS), len(BATCH_VARIANTS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--phrases", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    with FakeProcess() as fake:
        live = measure_live(fake, args.requests)
        hang_up = measure_hang_up(fake, args.requests)
        batch = measure_batch(fake, args.phrases, args.rounds, args.repeats)
    print(report(live, hang_up, batch))


if __name__ == "__main__":
    main()
