"""What the caller says in the listening scenario, and where each of its talkspurts starts.

Theory of operation: every caller speaks over the bot. Its audio is a WAV looped
(``--audio``, or by default a French sentence rendered at bench start with
``espeak-ng -v fr`` and resampled with ``sox`` to 8 kHz mono 16-bit, followed by
``PAUSE_SECONDS`` of digital silence), sent as µ-law RTP after ``LEAD_IN_SECONDS``
of silence from the 200 OK, so the first talkspurt lands on the bot's first phrase.

A *talkspurt onset* is a frame of the loop whose level reaches ``TALK_DBFS`` after
at least ``QUIET_BEFORE_FRAMES`` frames below it; the loop is circular, so the
loop's end is the silence before its start. The RTP engine records when it sends
each onset frame: that is where the barge-in latency (``barge_in.py``) counts from.
The level is the frame's RMS against 32768, computed from the µ-law codes by a
256-entry table of squares; no sample loop is run per packet, only once per loop.
"""

from __future__ import annotations

import math
import pathlib
import shutil
import subprocess

import attrs

from eko_rtp.codec.g711 import ulaw_decode_sample
from eko_rtp.errors import UserError

FRAME_BYTES = 160  # 20 ms of 8 kHz G.711 (RFC 3551 §4.5.14)
SENTENCE = "Ma box ne marche plus depuis ce matin"  # about 2 s with espeak-ng's French voice, no comma pause
PAUSE_SECONDS = 1.5  # silence after the sentence, before it comes again
LEAD_IN_SECONDS = 1.0  # silence from the 200 OK before the caller first speaks
TALK_DBFS = -50.0  # a frame this loud is speech (digital silence, hiss and dither are far below)
QUIET_BEFORE_FRAMES = 25  # 500 ms below TALK_DBFS before a frame that starts a talkspurt
_SQUARES = [ulaw_decode_sample(code) ** 2 for code in range(256)]
_RENDER_TIMEOUT = 60.0


@attrs.frozen(kw_only=True)
class CallerTalk:
    """How a caller speaks: silence for ``lead_in_frames`` after the answer, then its audio looped;
    ``onset_frames`` are the frames of the loop that start a talkspurt (their send times are kept)."""

    lead_in_frames: int
    onset_frames: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if self.lead_in_frames < 0:
            raise ValueError(f"lead-in of {self.lead_in_frames} frames is negative")
        if any(frame < 0 for frame in self.onset_frames):
            raise ValueError(f"onset frames must be positions in the loop, got {self.onset_frames}")


def frame_levels_dbfs(ulaw: bytes) -> list[float]:
    """The RMS level (dBFS, ``-inf`` for digital silence) of each whole 160-byte µ-law frame."""
    levels = []
    for start in range(0, len(ulaw) - FRAME_BYTES + 1, FRAME_BYTES):
        power = sum(_SQUARES[code] for code in ulaw[start:start + FRAME_BYTES]) / FRAME_BYTES
        levels.append(-math.inf if power == 0 else 10 * math.log10(power / (32768 * 32768)))
    return levels


def talkspurt_onsets(ulaw: bytes, *, talk_dbfs: float = TALK_DBFS,
                     quiet_before: int = QUIET_BEFORE_FRAMES) -> tuple[int, ...]:
    """Frames of the looped audio ``ulaw`` that start a talkspurt: at least ``talk_dbfs`` loud
    after ``quiet_before`` frames that are not (counted circularly: the loop repeats)."""
    loud = [level >= talk_dbfs for level in frame_levels_dbfs(ulaw)]
    if not any(loud):
        return ()
    if all(loud):
        return ()  # one endless talkspurt: no onset comes again
    frames = len(loud)
    onsets = []
    for position in range(frames):
        if loud[position] and all(not loud[(position - back) % frames] for back in range(1, quiet_before + 1)):
            onsets.append(position)
    return tuple(onsets)


def caller_talk(ulaw: bytes, *, lead_in_seconds: float = LEAD_IN_SECONDS) -> CallerTalk:
    """The caller's talk plan for audio ``ulaw``; refuses audio in which no talkspurt starts."""
    onsets = talkspurt_onsets(ulaw)
    if not onsets:
        raise UserError(f"the caller audio has no talkspurt: no frame of {TALK_DBFS:g} dBFS or more after"
                        f" {QUIET_BEFORE_FRAMES * 20} ms quieter (the listening scenario needs speech and pauses)",
                        key="--audio")
    return CallerTalk(lead_in_frames=round(lead_in_seconds * 50), onset_frames=onsets)


def render_sentence(directory: str, *, text: str = SENTENCE, pause_seconds: float = PAUSE_SECONDS) -> str:
    """Render ``text`` in French with espeak-ng, as 8 kHz mono 16-bit with ``pause_seconds`` of
    silence after it, into ``directory``; returns the WAV's path."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise UserError(f"the listening scenario renders the caller's sentence with espeak-ng and sox; {tool}"
                            " is not on PATH (install it, or give a WAV with --audio)", key="--audio")
    spoken = pathlib.Path(directory) / "caller-espeak.wav"
    wav = pathlib.Path(directory) / "caller.wav"
    # -D: no dither, so the pause stays digital silence (µ-law 0xFF).
    for command in (["espeak-ng", "-v", "fr", "-w", str(spoken), text],
                    ["sox", "-D", str(spoken), "-r", "8000", "-c", "1", "-b", "16", str(wav),
                     "pad", "0", f"{pause_seconds:g}"]):
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=_RENDER_TIMEOUT)
        except subprocess.CalledProcessError as error:
            raise UserError(f"{command[0]} failed (status {error.returncode}): {error.stderr.strip()[-300:]}",
                            key="--audio") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{command[0]} did not finish within {_RENDER_TIMEOUT:.0f} s", key="--audio") from None
    return str(wav)
