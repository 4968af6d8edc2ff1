"""Barge-in as the caller hears it: from the caller's first word to the bot's last sound (pure).

Theory of operation: per call the bench has two timelines on one clock
(CLOCK_REALTIME ns): when it *sent* the first packet of each caller talkspurt
(``onsets_ns``, see ``caller_speech.py``), and when each of the bot's packets
*arrived* (kernel receive stamps) with whether its payload was sound or silence
(``sound``: 1 when any byte is not the codec's zero code, the same test as "first
sound"). A barge-in is the bot's stream turning to silence while the caller speaks.

"Turning to silence" must not be a pause inside the bot's phrase (a comma is a few
hundred ms of digital silence), so it means a *quiet run*: at least
``quiet_frames`` silent packets in a row, longer than any pause in the phrase. For
each onset ``S`` the bot's state at ``S`` is read from the packets that arrived by
then, and the first quiet run after it is looked for:

- no sound yet, or ``S`` inside a quiet run already begun (``quiet_frames`` silent
  packets before ``S``): ``BOT_QUIET``, the bot was not speaking; nothing to measure;
- the quiet run begins after ``S``, its last sound packet arriving ``L`` after ``S``
  with ``S + L`` inside the window: ``BARGED``, latency ``L``;
- the quiet run began in a short pause that was under way at ``S`` (its last sound
  packet arrived before ``S``): ``BARGED_IN_PAUSE``: the bot stopped, but when the
  server decided cannot be told, so no latency is counted;
- the bot's sound goes on past the window, or the quiet run is the end of the phrase
  itself (when its length is known: the bot played ``phrase_frames`` packets, up to
  the phrase's last sound frame, since it last started after a quiet run):
  ``MISSED``, no barge-in observed;
- the call's packets end inside the window before a quiet run is complete:
  ``UNFINISHED`` (the bench hung up).

The window ends ``window_ns`` after ``S``, or at the next onset if that comes first
(a quiet run after it belongs to the next talkspurt). Packets are taken in arrival
order and counted, not timed: a lost packet shortens a run by one.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence

import attrs

# 500 ms: longer than the pauses inside a phrase (a comma, a full stop; the CLI checks
# the cached phrase's longest, quiet_frames_for), shorter than the listening script's silence.
QUIET_FRAMES = 25
QUIET_MARGIN_FRAMES = 5  # over the longest pause of the phrase, when the cache says it
PHRASE_END_TOLERANCE = 2  # packets short of the whole phrase that still count as its end (a loss, a late start)
WINDOW_SECONDS = 2.0  # a quiet run that starts later belongs to nothing the caller just said


class Outcome(enum.Enum):
    """What became of one caller talkspurt (the JSON names are the values)."""

    BARGED = "barged"
    BARGED_IN_PAUSE = "barged_in_pause"
    BOT_QUIET = "bot_quiet"
    MISSED = "missed"
    UNFINISHED = "unfinished"


@attrs.frozen(kw_only=True)
class Talkspurt:
    """One caller talkspurt: when its first packet left, and what the bot did."""

    onset_ns: int
    outcome: Outcome
    latency_ns: int | None = None  # BARGED only: onset -> arrival of the bot's last sound packet


@attrs.frozen(kw_only=True)
class QuietRun:
    """``length`` silent packets in a row from index ``start``; ``complete`` unless the call's
    packets ended before ``quiet_frames`` of them came."""

    start: int
    length: int
    complete: bool


def quiet_frames_for(longest_pause_frames: int, listen_frames: int) -> int:
    """The quiet run for a phrase whose longest inner pause is ``longest_pause_frames``: at least
    ``QUIET_FRAMES``; refused when it would not fit in the script's ``listen_frames`` of silence."""
    frames = max(QUIET_FRAMES, longest_pause_frames + QUIET_MARGIN_FRAMES)
    if frames >= listen_frames:
        raise ValueError(f"the phrase pauses for {longest_pause_frames * 20} ms: a barge-in cannot be told from"
                         f" a pause within the script's {listen_frames * 20} ms of listening")
    return frames


def quiet_runs(sound: Sequence[int], quiet_frames: int) -> list[QuietRun]:
    """The runs of at least ``quiet_frames`` silent packets, and a shorter last one cut by the end."""
    if quiet_frames < 1:
        raise ValueError(f"a quiet run is at least one packet, not {quiet_frames}")
    runs = []
    start = None
    for index, flag in enumerate(sound):
        if flag:
            if start is not None and index - start >= quiet_frames:
                runs.append(QuietRun(start=start, length=index - start, complete=True))
            start = None
        elif start is None:
            start = index
    if start is not None:
        length = len(sound) - start
        runs.append(QuietRun(start=start, length=length, complete=length >= quiet_frames))
    return runs


def talkspurts(onsets_ns: Sequence[int], arrivals_ns: Sequence[int], sound: Sequence[int], *,
               quiet_frames: int, window_ns: int, phrase_frames: int | None = None) -> list[Talkspurt]:
    """Each onset's outcome for one call (see the module's theory); ``sound`` lines up with ``arrivals_ns``.

    ``phrase_frames``: packets from the start of the phrase the bot says to its last sound frame
    (None: unknown, and a phrase that ends by itself inside the window counts as a barge-in).
    """
    if len(arrivals_ns) != len(sound):
        raise ValueError(f"{len(arrivals_ns)} arrivals but {len(sound)} sound flags")
    if window_ns <= 0:
        raise ValueError(f"the window must be positive, not {window_ns} ns")
    runs = quiet_runs(sound, quiet_frames)
    run_starts = [run.start for run in runs]
    # Where the bot's speech that each quiet run ends began: the first sound after the run before.
    first_sound = next((index for index, flag in enumerate(sound) if flag), 0)
    spoke_from = [first_sound] + [run.start + run.length for run in runs[:-1]]
    phrase_end = None if phrase_frames is None else phrase_frames - PHRASE_END_TOLERANCE
    # Index of the last sound packet at or before each position (-1: none yet).
    last_sound = []
    latest = -1
    for index, flag in enumerate(sound):
        if flag:
            latest = index
        last_sound.append(latest)
    found = []
    for position, onset in enumerate(onsets_ns):
        window_end = onset + window_ns
        if position + 1 < len(onsets_ns):
            window_end = min(window_end, onsets_ns[position + 1])
        found.append(_one(onset, window_end, arrivals_ns, last_sound, runs, run_starts, spoke_from, quiet_frames,
                          phrase_end))
    return found


def _one(onset: int, window_end: int, arrivals_ns: Sequence[int], last_sound: list[int], runs: list[QuietRun],
         run_starts: list[int], spoke_from: list[int], quiet_frames: int, phrase_end: int | None) -> Talkspurt:
    heard = bisect.bisect_right(arrivals_ns, onset)  # packets [0, heard) arrived by the onset
    sounded = last_sound[heard - 1] if heard else -1
    if sounded < 0 or heard - 1 - sounded >= quiet_frames:
        return Talkspurt(onset_ns=onset, outcome=Outcome.BOT_QUIET)
    # The first quiet run that starts after the bot's last sound by the onset.
    index = bisect.bisect_right(run_starts, sounded)
    if index == len(runs):
        ended = not arrivals_ns or arrivals_ns[-1] < window_end
        return Talkspurt(onset_ns=onset, outcome=Outcome.UNFINISHED if ended else Outcome.MISSED)
    run = runs[index]
    stopped = arrivals_ns[run.start - 1]  # the bot's last sound packet before the quiet run
    if stopped > window_end:
        return Talkspurt(onset_ns=onset, outcome=Outcome.MISSED)
    if phrase_end is not None and run.start - spoke_from[index] >= phrase_end:
        return Talkspurt(onset_ns=onset, outcome=Outcome.MISSED)  # the phrase ended by itself
    if not run.complete:
        return Talkspurt(onset_ns=onset, outcome=Outcome.UNFINISHED)
    if stopped <= onset:
        return Talkspurt(onset_ns=onset, outcome=Outcome.BARGED_IN_PAUSE)
    return Talkspurt(onset_ns=onset, outcome=Outcome.BARGED, latency_ns=stopped - onset)
