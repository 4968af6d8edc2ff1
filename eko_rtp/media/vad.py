"""When the caller starts and stops speaking, one 20 ms G.711 frame at a time (sans I/O).

Theory of operation: each inbound frame goes through a classifier, an energy
check at the start of speech, and a small state machine.

1. **Classifier, every frame.** The frame is decoded to 16-bit linear PCM (two
   ``bytes.translate`` into one preallocated buffer, interleaved by slice
   assignment) and handed to a :class:`FrameClassifier`, which says speech or not.
   The production one is :class:`WebRtcClassifier` (the WebRTC VAD); tests use
   fakes. It hears every frame, background included, because it keeps a noise
   estimate from the frames it judges to be noise: fed only the loud frames it
   judges a quiet talker against the wrong floor. Measured (docs/VAD.md), running
   it on every frame costs about what an energy gate in front of it would, so the
   gate would save nothing.
2. **Energy check, to start.** While no speech is going on, a frame the classifier
   calls speech also has to reach ``gate_dbfs``: the WebRTC VAD calls the first
   100 ms or so of any new background speech while it adapts, and low-level line
   noise (comfort noise, hiss, hum at -50..-40 dBFS) must never start speech.
   Once speech has started the classifier alone decides, so the soft ends of
   words do not cut it. The frame's mean power comes straight from the G.711 bytes:
   a 256-entry table per codec holds each code's squared linear value (scaled down
   by 256 and rounded, so it fits three bytes), split into three byte tables;
   ``bytes.translate`` maps the frame through each and ``sum`` of the bytes adds
   them up: three translates and three sums of 160 small ints, no Python loop over
   samples. The threshold is precomputed in the same units, so no logarithm either.
3. **Warm-up.** The classifier's verdicts on the first ``warmup_ms`` of a stream
   are ignored (it still hears them): its noise estimate starts empty.
4. **Hysteresis and hangover.** Speech starts after ``min_speech_ms`` of voiced
   frames in a row (one loud click is not speech), and ends after ``hangover_ms``
   of unvoiced frames in a row (the pauses between words and at commas do not end
   it). The states and their moves are one table, :data:`TRANSITIONS`; the two
   counted moves (enough voiced frames: speaking; a long enough pause: quiet) are
   applied after it.

Times: ``now`` is the start of the frame on whatever clock the shell uses (seconds;
the RTP timestamp over 8000 plus an origin is best, since it does not move with
network jitter). :class:`SpeechStarted` is dated at the start of the first voiced
frame of the run that started speech, :class:`SpeechEnded` at the end of the last
voiced frame; the decision itself comes ``min_speech_ms`` and ``hangover_ms`` later.
Frames that never came (a lost packet, a sender pausing its stream) count as
unvoiced: a gap in ``now`` larger than a frame is that many missing frames.

dBFS here is the RMS level relative to 32768, the level of a full-scale square wave
(a full-scale sine reads -3 dBFS).
"""

from __future__ import annotations

import enum
import math
import os
from typing import Protocol

import attrs

from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE, SAMPLES_PER_FRAME
from eko_rtp.codec.g711 import alaw_decode_sample, ulaw_decode_sample

__all__ = [
    "CODECS",
    "FrameClassifier",
    "SpeechEnded",
    "SpeechStarted",
    "TRANSITIONS",
    "VadSettings",
    "VadState",
    "VoiceActivityDetector",
    "WebRtcClassifier",
    "frame_level_dbfs",
    "require_webrtcvad",
]

FRAME_MS = round(FRAME_SECONDS * 1000)
CODECS = ("PCMU", "PCMA")
_FULL_SCALE_POWER = 32768 * 32768
_ENERGY_SHIFT = 8  # squares are stored >> 8 (rounded): at most 32256**2 >> 8 < 2**24, three bytes
_MIN_GATE_DBFS = -60.0  # below this the rounding of the scaled squares starts to show
_MAX_GATE_DBFS = -10.0  # above this no speaker opens the gate
_MAX_MIN_SPEECH_MS = 1000
_MAX_HANGOVER_MS = 10_000
_MAX_WARMUP_MS = 2000
# A frame later than this after the last one may have frames missing before it (the
# exact count is rounded): below it, no division per frame.
_MISSING_AFTER = 1.4 * FRAME_SECONDS


# -- the tables ------------------------------------------------------------------

def _energy_tables(decode) -> tuple[bytes, bytes, bytes]:
    scaled = [(decode(code) ** 2 + (1 << (_ENERGY_SHIFT - 1))) >> _ENERGY_SHIFT for code in range(256)]
    return tuple(bytes((value >> (8 * digit)) & 0xFF for value in scaled) for digit in range(3))


def _linear_tables(decode) -> tuple[bytes, bytes]:
    # Little-endian 16-bit: low byte, high byte of each code's two's-complement value.
    values = [decode(code) & 0xFFFF for code in range(256)]
    return bytes(value & 0xFF for value in values), bytes(value >> 8 for value in values)


_DECODERS = {"PCMU": ulaw_decode_sample, "PCMA": alaw_decode_sample}
_ENERGY = {codec: _energy_tables(decode) for codec, decode in _DECODERS.items()}
_LINEAR = {codec: _linear_tables(decode) for codec, decode in _DECODERS.items()}


def _scaled_energy(payload: bytes | bytearray, codec: str) -> int:
    """The frame's sum of squared linear samples, >> 8 (each square rounded first)."""
    low, middle, high = _ENERGY[codec]
    return sum(payload.translate(low)) + (sum(payload.translate(middle)) << 8) + (sum(payload.translate(high)) << 16)


def _gate_threshold(gate_dbfs: float) -> int:
    """The scaled sum of squares of a 160-sample frame at ``gate_dbfs``."""
    return math.ceil(FRAME_BYTES * _FULL_SCALE_POWER * 10 ** (gate_dbfs / 10) / (1 << _ENERGY_SHIFT))


def frame_level_dbfs(payload: bytes | bytearray | memoryview, codec: str) -> float:
    """The RMS level of one G.711 frame in dBFS (``-inf`` for true silence), as the gate sees it."""
    _check_frame(payload, codec)
    energy = _scaled_energy(bytes(payload), codec)
    if energy == 0:
        return -math.inf
    return 10 * math.log10(energy * (1 << _ENERGY_SHIFT) / (len(payload) * _FULL_SCALE_POWER))


def _check_frame(payload, codec: str) -> None:
    if codec not in _ENERGY:
        raise ValueError(f"VAD codec must be one of {', '.join(CODECS)}, not {codec!r}")
    if len(payload) != FRAME_BYTES:
        raise ValueError(f"VAD frames are {FRAME_BYTES} bytes ({FRAME_MS} ms of G.711), got {len(payload)}")


# -- settings --------------------------------------------------------------------

def _whole_frames(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"VAD {name} must be whole milliseconds, not {value!r}")
    if not low <= value <= high or value % FRAME_MS:
        raise ValueError(f"VAD {name} must be a multiple of {FRAME_MS} ms within [{low}, {high}], not {value!r}")


@attrs.frozen(kw_only=True)
class VadSettings:
    """How the detector decides; the defaults are the ones measured in docs/VAD.md."""

    # Level a frame must reach to count toward starting speech; None: the classifier alone.
    gate_dbfs: float | None = -45.0
    aggressiveness: int = 2  # the WebRTC VAD's mode: 0 (most speech kept) to 3 (least noise let through)
    min_speech_ms: int = 60  # voiced time in a row before SpeechStarted
    hangover_ms: int = 300  # unvoiced time in a row after speech before SpeechEnded
    warmup_ms: int = 200  # the classifier's verdicts ignored at the start of a stream

    def __attrs_post_init__(self) -> None:
        if self.gate_dbfs is not None:
            if isinstance(self.gate_dbfs, bool) or not isinstance(self.gate_dbfs, (int, float)):
                raise ValueError(f"VAD gate_dbfs must be a number of dBFS or None, not {self.gate_dbfs!r}")
            if not _MIN_GATE_DBFS <= self.gate_dbfs <= _MAX_GATE_DBFS:
                raise ValueError(f"VAD gate_dbfs must be within [{_MIN_GATE_DBFS:g}, {_MAX_GATE_DBFS:g}] dBFS, "
                                 f"not {self.gate_dbfs!r}")
        if isinstance(self.aggressiveness, bool) or self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0, 1, 2 or 3, not {self.aggressiveness!r}")
        # Two frames at least: a single loud frame is a click, and with one frame a
        # gap that ends speech and the frame after it could start speech in one step.
        _whole_frames("min_speech_ms", self.min_speech_ms, 2 * FRAME_MS, _MAX_MIN_SPEECH_MS)
        _whole_frames("hangover_ms", self.hangover_ms, FRAME_MS, _MAX_HANGOVER_MS)
        _whole_frames("warmup_ms", self.warmup_ms, 0, _MAX_WARMUP_MS)

    @property
    def start_frames(self) -> int:
        return self.min_speech_ms // FRAME_MS

    @property
    def hangover_frames(self) -> int:
        return self.hangover_ms // FRAME_MS

    @property
    def warmup_frames(self) -> int:
        return self.warmup_ms // FRAME_MS


# -- events ----------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class SpeechStarted:
    """The caller started speaking; ``at`` is the start of the first voiced frame."""

    at: float


@attrs.frozen(kw_only=True)
class SpeechEnded:
    """The caller stopped speaking; ``at`` is the end of the last voiced frame."""

    at: float
    duration: float  # s from the SpeechStarted's ``at``


# -- the classifier --------------------------------------------------------------

class FrameClassifier(Protocol):
    """Says whether one frame is speech; hears every frame of the stream, in order."""

    def is_speech(self, pcm: bytearray) -> bool:
        """``pcm``: one frame as 16-bit little-endian linear PCM at 8 kHz (320 bytes).

        The buffer is reused for the next frame: read it, do not keep it.
        """
        ...


def require_webrtcvad():
    """The webrtcvad module, imported (a RuntimeError saying what to install when it is missing)."""
    try:
        import webrtcvad
    except ImportError:
        raise RuntimeError("the VAD needs the webrtcvad module: pip install webrtcvad-wheels") from None
    return webrtcvad


class WebRtcClassifier:
    """The WebRTC VAD (package ``webrtcvad-wheels``): a GMM on six sub-band energies."""

    __slots__ = ("_vad", "_process")

    def __init__(self, aggressiveness: int):
        webrtcvad = require_webrtcvad()
        if isinstance(aggressiveness, bool) or aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"WebRTC VAD aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        vad = webrtcvad.Vad(aggressiveness)
        # ``Vad.is_speech`` is a Python wrapper that checks the length against the
        # buffer and calls the extension's ``process``: calling that directly, with
        # the length taken from the buffer itself, saves a Python call per frame. The
        # public method stays the fallback should a release of the package move it.
        process = getattr(getattr(webrtcvad, "_webrtcvad", None), "process", None)
        handle = getattr(vad, "_vad", None)
        if process is None or handle is None:
            self._vad, self._process = vad, None
        else:
            self._vad, self._process = handle, process

    def entry_point(self) -> tuple:
        """``(process, handle)``: ``process(handle, 8000, pcm, samples)`` is :meth:`is_speech`,
        one Python call less; ``(None, None)`` when only the public method was found."""
        if self._process is None:
            return None, None
        return self._process, self._vad

    def is_speech(self, pcm: bytearray) -> bool:
        if self._process is None:
            return self._vad.is_speech(pcm, SAMPLE_RATE)
        return self._process(self._vad, SAMPLE_RATE, pcm, len(pcm) >> 1)


# -- the state machine -----------------------------------------------------------

class VadState(enum.Enum):
    QUIET = "quiet"  # no speech
    ONSET = "onset"  # voiced frames in a row, not yet min_speech_ms of them
    SPEAKING = "speaking"  # speech, the last frame voiced
    TRAILING = "trailing"  # speech, unvoiced frames in a row, not yet hangover_ms of them


_V = VadState
# (state, frame voiced) -> next state, before the counted moves:
# ONSET -> SPEAKING once start_frames voiced in a row (SpeechStarted),
# TRAILING -> QUIET once hangover_frames unvoiced in a row (SpeechEnded).
TRANSITIONS: dict[tuple[VadState, bool], VadState] = {
    (_V.QUIET, False): _V.QUIET,
    (_V.QUIET, True): _V.ONSET,
    (_V.ONSET, False): _V.QUIET,  # a burst shorter than min_speech_ms: forgotten
    (_V.ONSET, True): _V.ONSET,
    (_V.SPEAKING, False): _V.TRAILING,
    (_V.SPEAKING, True): _V.SPEAKING,
    (_V.TRAILING, False): _V.TRAILING,
    (_V.TRAILING, True): _V.SPEAKING,  # a pause shorter than the hangover: still speaking
}


class PythonVadCore:
    """What :meth:`feed` reads per frame, and ``feed``: the base of :class:`VoiceActivityDetector`.

    ``VadCore`` is this or its compiled twin (media/_vad.c), which tests/test_vad.py
    holds to the same behaviour. What is not per frame is the subclass's, and
    ``feed`` only calls it: the first frame's classifier and buffer
    (``_first_frame``), frames that never came (``_missing``) and the events
    (``_started``, ``_end``).
    """

    __slots__ = ("state", "frames", "_is_speech", "_process", "_handle", "_pcm", "_last_now", "_threshold",
                 "_start_frames", "_hangover_frames", "_warmup_frames", "_run", "_run_start", "_speech_start",
                 "_last_voiced_end", "_frame", "_moves", "_moves_of")

    def __init__(self) -> None:
        self._frame: bytearray | None = None  # made by the first frame that is not ``bytes``
        # TRANSITIONS' row of the state in ``_moves_of`` (unvoiced, voiced), looked up
        # again only when the state changes: hashing an Enum member is a Python call.
        self._moves_of: VadState | None = None
        self._moves: tuple[VadState, VadState] = (VadState.QUIET, VadState.ONSET)

    def feed(self, payload: bytes | bytearray | memoryview, codec: str,
             now: float) -> SpeechStarted | SpeechEnded | None:
        """Take the frame starting at ``now`` (s) of ``codec`` ("PCMU"/"PCMA"); the event it decided, if any."""
        linear = _LINEAR.get(codec)
        if linear is None or len(payload) != FRAME_BYTES:
            _check_frame(payload, codec)  # raises
        frames = self.frames = self.frames + 1
        event = None
        last_now = self._last_now
        self._last_now = now
        if last_now is not None and now - last_now > _MISSING_AFTER:
            # Frames that never came are unvoiced; a long gap ends speech by itself.
            missing = round((now - last_now) / FRAME_SECONDS) - 1
            if missing > 0:
                event = self._missing(missing)
        # The classifier hears every frame (see the module's docstring), as linear PCM.
        pcm = self._pcm
        is_speech = self._is_speech
        if pcm is None or is_speech is None:
            pcm, is_speech = self._first_frame()
        if type(payload) is not bytes:
            # A view into the datagram has no translate: copy it into the buffer kept for that.
            frame = self._frame
            if frame is None:
                frame = self._frame = bytearray(FRAME_BYTES)
            frame[:] = payload
            payload = frame
        pcm[0::2] = payload.translate(linear[0])
        pcm[1::2] = payload.translate(linear[1])
        process = self._process
        speech = is_speech(pcm) if process is None else process(self._handle, SAMPLE_RATE, pcm, SAMPLES_PER_FRAME)
        if frames <= self._warmup_frames:
            voiced = False
        elif speech and self._threshold >= 0 and (self.state is VadState.QUIET or self.state is VadState.ONSET):
            voiced = _scaled_energy(payload, codec) >= self._threshold
        else:
            voiced = bool(speech)
        if not voiced and self.state is VadState.QUIET:
            self._run = 0  # _step's most common move (silence goes on), without the call
            return event
        step = self._step(voiced, now)
        # Both at once is impossible: a gap's SpeechEnded leaves QUIET, and from
        # QUIET one frame cannot start speech (min_speech_ms is two frames at least).
        return step if event is None else event

    def _step(self, voiced: bool, now: float) -> SpeechStarted | SpeechEnded | None:
        state = self.state
        if state is not self._moves_of:
            self._moves = (TRANSITIONS[state, False], TRANSITIONS[state, True])
            self._moves_of = state
        following = self._moves[voiced]
        if voiced:
            self._last_voiced_end = now + FRAME_SECONDS
            if following is VadState.ONSET:
                if state is VadState.QUIET:
                    self._run = 0
                    self._run_start = now
                self._run += 1
                if self._run >= self._start_frames:
                    self.state = VadState.SPEAKING
                    self._speech_start = self._run_start
                    self._run = 0
                    return self._started(self._run_start)
            else:
                self._run = 0
            self.state = following
            return None
        if following is VadState.TRAILING:
            self._run = 1 if state is VadState.SPEAKING else self._run + 1
            if self._run >= self._hangover_frames:
                return self._end()
        else:
            self._run = 0
        self.state = following
        return None


# The compiled twin (media/_vad.c) when it was built, else the class above; both
# pass tests/test_vad.py. EKO_RTP_PURE_PYTHON=1 takes the Python one (to compare).
VadCore: type = PythonVadCore
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.media import _vad
    except ImportError:
        pass
    else:
        _vad.bind((VadState.QUIET, VadState.ONSET, VadState.SPEAKING, VadState.TRAILING),
                  (*_LINEAR["PCMU"], *_ENERGY["PCMU"]), (*_LINEAR["PCMA"], *_ENERGY["PCMA"]))
        VadCore = _vad.VadCore

# Whether the detector's frames run compiled (for the start line, with the ears').
PER_FRAME_PATH = "compiled" if VadCore is not PythonVadCore else "python"


class VoiceActivityDetector(VadCore):
    """One call's voice activity: feed each inbound frame, get speech start and end events."""

    # One per call, kept for its life. The WebRTC state and the frame buffers are made
    # by the first frame: a call nobody listens to never pays for them. The per-frame
    # state is VadCore's.
    __slots__ = ("settings", "_classifier")

    def __init__(self, settings: VadSettings = VadSettings(), classifier: FrameClassifier | None = None):
        super().__init__()
        self.settings = settings
        self.state = VadState.QUIET
        self.frames = 0  # frames fed
        if classifier is None:
            require_webrtcvad()  # fail now, not at the first frame
        self._classifier = classifier  # None: a WebRtcClassifier, made by the first frame
        self._is_speech = None if classifier is None else classifier.is_speech
        # The WebRTC VAD's own entry point and its state, called per frame without
        # the classifier's method in between (WebRtcClassifier.is_speech): None for others.
        self._process = None
        self._handle = None
        self._threshold = -1 if settings.gate_dbfs is None else _gate_threshold(settings.gate_dbfs)
        self._start_frames = settings.start_frames
        self._hangover_frames = settings.hangover_frames
        self._warmup_frames = settings.warmup_frames
        self._pcm: bytearray | None = None
        self._run = 0  # frames in the current run: voiced in ONSET, unvoiced in TRAILING
        self._run_start = 0.0  # start of the ONSET run's first frame
        self._speech_start = 0.0  # SpeechStarted's ``at``
        self._last_voiced_end = 0.0
        self._last_now: float | None = None

    def finish(self) -> SpeechEnded | None:
        """The stream ended (hang-up, hold): end the speech in progress, if any."""
        if self.state in (VadState.SPEAKING, VadState.TRAILING):
            return self._end()
        self.state = VadState.QUIET
        self._run = 0
        return None

    # -- internals ---------------------------------------------------------------

    def _first_frame(self) -> tuple[bytearray, object]:
        if self._classifier is None:
            self._classifier = WebRtcClassifier(self.settings.aggressiveness)
            self._is_speech = self._classifier.is_speech
            self._process, self._handle = self._classifier.entry_point()
        if self._pcm is None:
            self._pcm = bytearray(2 * FRAME_BYTES)
        return self._pcm, self._is_speech

    def _missing(self, count: int) -> SpeechEnded | None:
        state = self.state
        if state is VadState.ONSET:
            self.state = VadState.QUIET
            self._run = 0
        elif state in (VadState.SPEAKING, VadState.TRAILING):
            self._run = count if state is VadState.SPEAKING else self._run + count
            self.state = VadState.TRAILING
            if self._run >= self._hangover_frames:
                return self._end()
        return None

    def _started(self, at: float) -> SpeechStarted:
        return SpeechStarted(at=at)

    def _end(self) -> SpeechEnded:
        self.state = VadState.QUIET
        self._run = 0
        at = self._last_voiced_end
        return SpeechEnded(at=at, duration=at - self._speech_start)
