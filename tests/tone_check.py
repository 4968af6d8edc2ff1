"""Pure tones for the peer tests: write one as a WAV, find one in a recording (pure Python).

``write_tone_wav`` writes a sine (16-bit, 8 kHz, mono by default), the format pjsua2's
``AudioMediaPlayer`` plays and its recorder writes in these tests. ``tone_fraction``
cuts a recording into 20 ms blocks and runs the Goertzel filter on each: a block
counts for the tone when it is not silence and the tone carries most of its energy.
A G.711 round trip keeps a pure tone's share near 1; a block of the other tone, of
silence or of speech stays far below the default threshold of 0.5.

Goertzel at a frequency f over N samples x[n] gives |X(f)|², the squared magnitude of
the DFT of the block at f (f need not fall on a DFT bin). For a pure sine of
amplitude A at f, |X|² ≈ (A·N/2)² and the block's energy Σx² ≈ A²·N/2, so
``2·|X|² / (N·Σx²)`` is about 1 for the tone alone and about 0 without it.
"""

from __future__ import annotations

import array
import math
import wave

SAMPLE_RATE = 8000
BLOCK_SECONDS = 0.020


def tone_samples(frequency: float, seconds: float, *, amplitude: float = 0.5, rate: int = SAMPLE_RATE) -> list[int]:
    """A sine at ``frequency`` Hz, ``amplitude`` of full scale, as 16-bit samples."""
    peak = amplitude * 32767
    step = 2 * math.pi * frequency / rate
    return [int(round(peak * math.sin(step * n))) for n in range(int(seconds * rate))]


def write_tone_wav(path, frequency: float, seconds: float = 2.0, *, amplitude: float = 0.5, rate: int = SAMPLE_RATE) -> str:
    """Write a mono 16-bit WAV of a pure tone; return its path as a string."""
    samples = array.array("h", tone_samples(frequency, seconds, amplitude=amplitude, rate=rate))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return str(path)


def read_wav(path) -> tuple[list[int], int]:
    """The samples (16-bit mono) and the sample rate of a WAV."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono, got {wav.getsampwidth() * 8}-bit x{wav.getnchannels()}")
        rate = wav.getframerate()
        data = wav.readframes(wav.getnframes())
    samples = array.array("h")
    samples.frombytes(data)
    return samples.tolist(), rate


def goertzel_power(block: list[int], frequency: float, rate: int = SAMPLE_RATE) -> float:
    """|X(f)|² of the block at ``frequency`` (Goertzel's second-order recurrence)."""
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s_prev = s_prev2 = 0.0
    for x in block:
        s = x + coefficient * s_prev - s_prev2
        s_prev2, s_prev = s_prev, s
    return s_prev * s_prev + s_prev2 * s_prev2 - coefficient * s_prev * s_prev2


def tone_share(block: list[int], frequency: float, rate: int = SAMPLE_RATE) -> float:
    """The share of the block's energy at ``frequency`` (about 1 for that tone alone, 0 for silence)."""
    energy = sum(x * x for x in block)
    if energy == 0:
        return 0.0
    return 2 * goertzel_power(block, frequency, rate) / (len(block) * energy)


def block_shares(samples: list[int], frequency: float, *, rate: int = SAMPLE_RATE, min_rms: float = 300.0) -> list[float]:
    """``tone_share`` of each 20 ms block, 0 for a block quieter than ``min_rms`` (silence, line noise)."""
    size = int(rate * BLOCK_SECONDS)
    shares = []
    for start in range(0, len(samples) - size + 1, size):
        block = samples[start : start + size]
        rms = math.sqrt(sum(x * x for x in block) / size)
        shares.append(tone_share(block, frequency, rate) if rms >= min_rms else 0.0)
    return shares


def tone_fraction(path, frequency: float, *, threshold: float = 0.5, min_rms: float = 300.0) -> float:
    """The fraction of the recording's 20 ms blocks in which the tone at ``frequency`` dominates."""
    samples, rate = read_wav(path)
    shares = block_shares(samples, frequency, rate=rate, min_rms=min_rms)
    if not shares:
        return 0.0
    return sum(1 for share in shares if share >= threshold) / len(shares)


def tone_seconds(path, frequency: float, *, threshold: float = 0.5, min_rms: float = 300.0) -> float:
    """How many seconds of the recording (in 20 ms blocks) the tone at ``frequency`` dominates."""
    samples, rate = read_wav(path)
    shares = block_shares(samples, frequency, rate=rate, min_rms=min_rms)
    return sum(1 for share in shares if share >= threshold) * BLOCK_SECONDS
