"""The espeak-ng render backend: offline French speech, converted to cached µ-law.

Theory of operation: ``espeak-ng --stdout`` writes a WAV stream (16-bit mono at
22050 Hz, with a header whose length fields say "unknown" when it streams); ``sox``
reads that WAV on stdin and resamples it to 8 kHz signed 16-bit raw PCM with its
band-limited ``rate`` effect (which low-passes below 4 kHz, so nothing aliases into
the telephone band); :class:`~eko_rtp.cache.audio.Linear16ToUlawStream` encodes
that to µ-law with our G.711 tables, and the leading silence is trimmed.

The two commands are plain argument lists so the live TTS path can run the same
pipeline as a stream (``espeak_command`` stdout into ``resample_command`` stdin,
its stdout chunks through ``Linear16ToUlawStream`` and ``LeadingSilenceTrimmer``).
sox runs with ``-D`` (no dither) so a text always renders to the same bytes.
"""

from __future__ import annotations

import attrs
import trio

from eko_rtp.cache.audio import Linear16ToUlawStream, finish_ulaw
from eko_rtp.codec.frame import SAMPLE_RATE
from eko_rtp.cache.backend import RenderError
from eko_rtp.errors import UserError

__all__ = ["DEFAULT_VOICE", "EspeakBackend", "espeak_command", "resample_command", "render_espeak"]

DEFAULT_VOICE = "fr-fr"


def espeak_command(text: str, voice: str = DEFAULT_VOICE) -> list[str]:
    """The espeak-ng command that speaks ``text`` as a WAV stream on stdout."""
    # `--` ends the options, so a text starting with "-" is spoken, not parsed.
    return ["espeak-ng", "-v", voice, "--stdout", "--", text]


def resample_command(sample_rate: int = SAMPLE_RATE) -> list[str]:
    """The sox command turning a WAV stream on stdin into mono s16le raw PCM on stdout."""
    return [
        "sox", "-D", "-q",
        "-t", "wav", "-",
        "-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-c", "1", "-r", str(sample_rate), "-",
    ]


async def _run(command: list[str], stdin: bytes | None, what: str) -> bytes:
    try:
        result = await trio.run_process(command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{command[0]} is not installed (it renders the {what}); "
                        f"install it: apt-get install {command[0]}") from None
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"{command[0]} exited with status {result.returncode}: {stderr or 'no message'}")
    return result.stdout


async def render_espeak(text: str, voice: str = DEFAULT_VOICE) -> bytes:
    """Speak ``text`` with espeak-ng and return cached-format µ-law (trimmed, padded)."""
    wav = await _run(espeak_command(text, voice), None, "offline phrases")
    pcm = await _run(resample_command(), wav, "offline phrases")
    encoder = Linear16ToUlawStream()
    ulaw = encoder.feed(pcm) + encoder.finish()
    try:
        return finish_ulaw(ulaw)
    except ValueError as error:
        raise RenderError(f"espeak-ng voice {voice!r} produced no speech: {error}") from None


@attrs.frozen(kw_only=True)
class EspeakBackend:
    """Render with espeak-ng; free, offline, two at a time (one per core)."""

    voice: str = DEFAULT_VOICE
    name: str = attrs.field(default="espeak", init=False)
    model: str | None = attrs.field(default=None, init=False)
    concurrency: int = attrs.field(default=2, init=False)
    dollars_per_1000_characters: float = attrs.field(default=0.0, init=False)

    async def render(self, text: str) -> bytes:
        return await render_espeak(text, self.voice)

    async def aclose(self) -> None:
        """Nothing to give back: each render is its own pair of processes."""

