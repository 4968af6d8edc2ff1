"""Helpers for tests that run the real server: a built cache, free ports, the server as a process."""

from __future__ import annotations

import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHRASES = REPO / "cache" / "phrases.toml"
PJSUA2_CALLER = REPO / "tests" / "peers" / "pjsua2_caller.py"


def build_cache(directory: Path) -> Path:
    """Render the whole catalogue with espeak-ng into ``directory`` (about a second)."""
    subprocess.run(
        [sys.executable, "-m", "eko_rtp", "cache", "build", "--cache", str(directory), "--backend", "espeak"],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    return directory


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


def free_sipp_media_port() -> int:
    """A port P with P..P+3 free on 127.0.0.1 UDP: sipp's -mp binds audio at P and video at P+2.

    A lone free port is not enough: sipp exits 254 when P+2 happens to be taken.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        if base + 3 > 65535:
            continue
        held = []
        try:
            for port in range(base, base + 4):
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(udp)
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for udp in held:
                udp.close()
        return base
    raise RuntimeError("no four free UDP ports in a row found for sipp's media")


def rtp_range(width: int = 400, *, avoid: int | None = None) -> str:
    """A random RTP port range of ``width`` ports that does not hold port ``avoid`` (the
    server's SIP port: a test that finds the call's port among the server's sockets in
    the range must not find the SIP socket there too)."""
    for _ in range(1000):  # a draw holds ``avoid`` at most one time in 70
        low = random.randrange(30000, 60000 - width, 2)
        if avoid is None or not low <= avoid <= low + width:
            return f"{low}-{low + width}"
    raise RuntimeError(f"no RTP range of {width} ports without port {avoid} found")


class ServerProcess:
    """``eko-rtp serve`` in a subprocess; its log lines are collected as they come."""

    def __init__(self, cache_dir: Path, *extra: str, env: dict | None = None, port: int | None = None,
                 cpus: set[int] | None = None):
        self.port = port or free_port()
        self.address = ("127.0.0.1", self.port)
        self.rtp_ports = rtp_range(avoid=self.port)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), environment.get("PYTHONPATH")]))
        environment.pop("ELEVENLABS_API_KEY", None)
        environment.pop("DEEPGRAM_API_KEY", None)  # no test reaches the real provider
        environment.update(env or {})
        pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []  # util-linux, as an operator would
        self.command = [
            *pin, sys.executable, "-m", "eko_rtp", "--log-level", "DEBUG", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--rtp-ports", self.rtp_ports,
            "--cache", str(cache_dir),
            "--phrases", str(PHRASES),
            *extra,
        ]
        self.process = subprocess.Popen(
            self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=environment
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n{self.log()}")

    def __enter__(self) -> "ServerProcess":
        try:
            self.wait_for_log(r"Eko RTP listening for SIP")
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ fails: never leave a server (and its spinners) behind
            raise
        return self

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(2)
        return self.process.returncode

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_crm(directory: Path) -> tuple[subprocess.Popen, str]:
    """A seeded ``eko-rtp crm serve`` on a free loopback port, once it listens; the caller stops it."""
    database = directory / "crm.sqlite3"
    subprocess.run([sys.executable, "-m", "eko_rtp", "crm", "seed", "--db", str(database)],
                   check=True, capture_output=True, cwd=REPO, timeout=60)
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, "-m", "eko_rtp", "crm", "serve", "--listen", address, "--db", str(database)],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    line = ""
    while "CRM listening" not in line:
        line = process.stderr.readline()
        assert line, "the CRM exited before listening"
    return process, address


def run_pjsua2(target: tuple, *args: str, timeout: float = 60.0) -> list[dict]:
    """Run the pjsua2 caller; return its per-call JSON results."""
    completed = subprocess.run(
        [sys.executable, str(PJSUA2_CALLER), "--target", f"{target[0]}:{target[1]}", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    last = completed.stdout.strip().splitlines()[-1]
    return json.loads(last)


def read_wav_samples(path: str) -> list[int]:
    import array

    with wave.open(path, "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, (wav.getsampwidth(), wav.getnchannels())
        assert wav.getframerate() == 8000, wav.getframerate()
        data = wav.readframes(wav.getnframes())
    samples = array.array("h")
    samples.frombytes(data)
    return samples.tolist()


def best_correlation(received: list[int], reference: list[int], max_lag: int) -> tuple[float, int]:
    """The highest normalised cross-correlation of ``reference`` within ``received`` over lags 0..max_lag."""
    import numpy

    ref = numpy.asarray(reference, dtype=numpy.float64)
    rec = numpy.asarray(received, dtype=numpy.float64)
    ref = ref - ref.mean()
    best, best_lag = -1.0, 0
    ref_norm = numpy.sqrt((ref * ref).sum())
    for lag in range(0, min(max_lag, len(rec) - len(ref)) + 1, 1):
        window = rec[lag : lag + len(ref)]
        window = window - window.mean()
        norm = numpy.sqrt((window * window).sum()) * ref_norm
        if norm == 0:
            continue
        value = float((window * ref).sum() / norm)
        if value > best:
            best, best_lag = value, lag
    return best, best_lag


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def windowed_match(received: list[int], reference: list[int], *, seconds: float, window: int = 2000) -> tuple[float, int]:
    """How well ``received`` holds the first ``seconds`` of ``reference``, window by window.

    A phone's adaptive jitter buffer may drop or repeat a frame while it settles, shifting
    what follows by a few ms: one alignment over the whole phrase would then score low.
    Each 250 ms window is aligned on its own (the first within 1 s of the start, each next
    within 100 ms of the previous; windows of the phrase's pauses are skipped). The window
    in which such a shift happens is half aligned whatever we do, so the result is the
    *second* worst window's score (the worst when there are fewer than four windows),
    with the lag of the first window.
    """
    length = min(len(reference), int(seconds * 8000)) // window * window
    score, lag = best_correlation(received, reference[:window], max_lag=8000)
    scores, first_lag = [score], lag
    for start in range(window, length, window):
        if max(abs(sample) for sample in reference[start : start + window]) < 200:
            continue  # a pause in the phrase: nothing to align on
        low = max(0, lag + start - 800)
        score, found = best_correlation(received[low:], reference[start : start + window], max_lag=1600)
        lag = low + found - start
        scores.append(score)
    scores.sort()
    return (scores[1] if len(scores) >= 4 else scores[0]), first_lag


def frame_breaks(packets) -> list[tuple[int, int, int, int]]:
    """Where the bot's stream is not one frame on from the packet before: (sequence,
    sequence, timestamp, timestamp) of each such pair; ``packets`` from the call's first.

    One break is allowed, and not returned: between the first two frames, a timestamp
    step of 20 to 39 ms in whole milliseconds (the frame clock moves a new call's
    schedule later once, and the timestamps count it; FrameClock.balancing_shift).
    """
    breaks = []
    for index, (a, b) in enumerate(zip(packets, packets[1:])):
        steps = ((b.sequence - a.sequence) % 65536, (b.timestamp - a.timestamp) % 2**32)
        start_shift = index == 0 and steps[0] == 1 and 160 <= steps[1] < 320 and steps[1] % 8 == 0
        if steps != (1, 160) and not start_shift:
            breaks.append((a.sequence, b.sequence, a.timestamp, b.timestamp))
    return breaks
