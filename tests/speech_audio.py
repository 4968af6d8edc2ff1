"""French speech for the listening tests: espeak-ng words as a caller's G.711 frames or a WAV.

Rendering: ``espeak-ng -v fr`` writes a 22.05 kHz WAV, ``sox`` resamples it to 8 kHz
mono 16-bit (``-D``: no dither, so espeak's exact-zero silences stay zeros and a
phrase renders to the same samples every time). The silence espeak puts before and
after the words is cut, so the first sample is the first sound of the first word,
and the words are scaled to a chosen active level (dBFS: RMS of the non-zero
samples relative to 32768), loud enough to open the VAD's -45 dBFS gate and the
fake Deepgram's speech level.

Frames: 160 samples (20 ms) each, the last one padded with silence, encoded with
the project's G.711 code (µ-law) or sample by sample (A-law), as a phone sends them.

Also the short phrase catalogue the listening tests run the server with: the keys
Eko's default script speaks, in a few words each, so a whole question-answer-reply
call takes seconds instead of the production catalogue's twelve.
"""

from __future__ import annotations

import array
import functools
import math
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE, alaw_encode_sample, linear16_to_ulaw

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 8000
FRAME_SAMPLES = 160
FRAME_SECONDS = 0.020

# The keys Eko's default script (eko_rtp/call/eko_script.py) may speak, in short.
SHORT_PHRASES = {
    "greet": "Bonjour. Comment puis-je vous aider ?",
    "welcome": "Bienvenue.",
    "returning_client_pending_internet": "Un ticket est ouvert. Est-ce à ce sujet ?",
    "returning_client_pending_mobile": "Un ticket mobile est ouvert. Est-ce à ce sujet ?",
    "returning_client_no_ticket": "Bonjour. Que puis-je faire pour vous ?",
    "press_yes_no": "Tapez 1 pour oui, 2 pour non.",
    "clarify_yes_no": "Oui ou non ?",
    "ticket_transfer_ok": "Je vous passe un technicien.",
    "transfer_unavailable": "Tous occupés. On vous rappelle.",
    "transfer_failed": "Transfert impossible. On vous rappelle.",
    "closed_hours": "Fermé. On vous rappelle.",
    "ticket_not_related": "Très bien. Quelle est la raison de votre appel ?",
    "problem_internet": "Un problème de connexion.",
    "problem_mobile": "Un problème de mobile.",
    "problem_tv": "Un problème de télévision.",
    "problem_billing": "Une question de facture.",
    "anything_else": "Autre chose ?",
    "still_there": "Allô ?",
    "goodbye": "Merci, au revoir.",
    "no_input_goodbye": "Je raccroche. Au revoir.",
    "error": "Erreur technique.",
}


def write_short_catalogue(path: Path) -> Path:
    """The short catalogue as a phrases TOML file at ``path``."""
    lines = ["# The listening tests' short catalogue (tests/speech_audio.py).", ""]
    for key, text in SHORT_PHRASES.items():
        lines += [f"[phrases.{key}]", f'text = "{text}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def build_short_cache(directory: Path) -> tuple[Path, Path]:
    """Render the short catalogue with espeak-ng into ``directory``; (cache dir, catalogue file)."""
    directory.mkdir(parents=True, exist_ok=True)
    catalogue = write_short_catalogue(directory / "phrases.toml")
    subprocess.run(
        [sys.executable, "-m", "eko_rtp", "cache", "build", "--cache", str(directory), "--phrases", str(catalogue),
         "--backend", "espeak"],
        check=True, capture_output=True, cwd=REPO, timeout=300,
    )
    return directory, catalogue


def phrase_ulaw(cache_dir: Path, key: str) -> bytes:
    """A cached phrase's audio as the server sends it in PCMU: the raw µ-law file."""
    return (cache_dir / f"{key}.raw").read_bytes()


def phrase_seconds(cache_dir: Path, key: str) -> float:
    return len(phrase_ulaw(cache_dir, key)) / SAMPLE_RATE


@functools.lru_cache(maxsize=32)
def render(text: str, level_dbfs: float = -20.0) -> tuple[int, ...]:
    """``text`` spoken by espeak-ng in French: 8 kHz 16-bit samples, silence cut, at ``level_dbfs`` active."""
    with tempfile.TemporaryDirectory(prefix="eko-speech-") as scratch:
        spoken = Path(scratch) / "espeak.wav"
        resampled = Path(scratch) / "8k.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-w", str(spoken), text], check=True, capture_output=True,
                       timeout=60)
        subprocess.run(["sox", "-D", str(spoken), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(resampled)],
                       check=True, capture_output=True, timeout=60)
        with wave.open(str(resampled), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
            samples = array.array("h")
            samples.frombytes(wav.readframes(wav.getnframes()))
    if sys.byteorder != "little":
        samples.byteswap()
    loud = [index for index, sample in enumerate(samples) if abs(sample) > 64]
    if not loud:
        raise AssertionError(f"espeak-ng rendered {text!r} as silence")
    words = samples[loud[0] : loud[-1] + 1]
    active = [sample for sample in words if sample]
    rms = math.sqrt(sum(sample * sample for sample in active) / len(active))
    gain = 32768 * 10 ** (level_dbfs / 20) / rms
    return tuple(max(-32768, min(32767, round(sample * gain))) for sample in words)


def _frames(encoded: bytes, silence: int) -> list[bytes]:
    padded = encoded + bytes((silence,)) * (-len(encoded) % FRAME_SAMPLES)
    return [padded[start : start + FRAME_SAMPLES] for start in range(0, len(padded), FRAME_SAMPLES)]


def ulaw_frames(samples) -> list[bytes]:
    """``samples`` as 20 ms µ-law frames (the last padded with µ-law silence, 0xFF)."""
    return _frames(linear16_to_ulaw(array.array("h", samples).tobytes()), ULAW_SILENCE)


def alaw_frames(samples) -> list[bytes]:
    """``samples`` as 20 ms A-law frames (the last padded with A-law silence, 0xD5)."""
    return _frames(bytes(alaw_encode_sample(sample) for sample in samples), ALAW_SILENCE)


# Two codes of each law just either side of zero (±8 of 32768, about -72 dBFS: far
# under any VAD gate or speech level), and its silence.
_QUIET_CODES = {"PCMU": (0xFE, 0x7E), "PCMA": (0xD5, 0x55)}


def quiet_frames(count: int, codec: str = "PCMU", start: int = 0) -> list[bytes]:
    """``count`` frames of line hiss too faint to be speech, each one different.

    Frame ``n`` spells ``n`` in its bytes (bit ``p % 16`` of ``n`` picks the code at
    position ``p``), so a frame lost, repeated or moved shows in a byte comparison
    where digital silence would hide it.
    """
    high, low = _QUIET_CODES[codec]
    return [bytes(high if (index >> (position % 16)) & 1 else low for position in range(FRAME_SAMPLES))
            for index in range(start, start + count)]


def speech_frames(text: str, codec: str = "PCMU", level_dbfs: float = -20.0) -> list[bytes]:
    """``text`` spoken, as a caller's 20 ms frames in ``codec`` (PCMU or PCMA)."""
    samples = render(text, level_dbfs)
    return ulaw_frames(samples) if codec == "PCMU" else alaw_frames(samples)


def write_wav(path: Path, samples, *, lead_seconds: float = 0.0, tail_seconds: float = 0.0) -> Path:
    """``samples`` as an 8 kHz mono 16-bit WAV, with that much digital silence before and after."""
    pcm = array.array("h", [0] * round(lead_seconds * SAMPLE_RATE))
    pcm.extend(samples)
    pcm.extend([0] * round(tail_seconds * SAMPLE_RATE))
    if sys.byteorder != "little":
        pcm.byteswap()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return path
