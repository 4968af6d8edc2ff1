"""The call's voice activity detector: hysteresis and hangover, the start gate, real French speech."""

from __future__ import annotations

import math
import os
import random

import pytest

from eko_bench import vad_measure
from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE
from eko_rtp.codec.g711 import alaw_to_linear16, ulaw_to_linear16
from eko_rtp.media import vad as vad_module
from eko_rtp.media.vad import (SpeechEnded, SpeechStarted, VadSettings, VadState, VoiceActivityDetector,
                               frame_level_dbfs)

LOUD_ULAW = bytes(range(0, 160))  # any bytes: the scripted classifier ignores them (no gate)


class Scripted:
    """A fake classifier that says what its script says, one character a frame ('1' speech)."""

    def __init__(self, script: str):
        self._verdicts = iter(script)
        self.heard: list[bytes] = []

    def is_speech(self, pcm: bytearray) -> bool:
        self.heard.append(bytes(pcm))
        return next(self._verdicts) == "1"


class AlwaysSpeech:
    def is_speech(self, pcm: bytearray) -> bool:
        return True


def described(event):
    """An event in whole milliseconds: ("start", at) or ("end", at, duration)."""
    if isinstance(event, SpeechStarted):
        return ("start", round(event.at * 1000))
    return ("end", round(event.at * 1000), round(event.duration * 1000))


def logic_settings(**overrides) -> VadSettings:
    # No gate and no warm-up: the script alone decides each frame.
    return VadSettings(**{"gate_dbfs": None, "warmup_ms": 0, **overrides})


def run_script(script: str, settings: VadSettings) -> dict[int, tuple]:
    detector = VoiceActivityDetector(settings, Scripted(script))
    found = {}
    for index in range(len(script)):
        event = detector.feed(LOUD_ULAW, "PCMU", index * FRAME_SECONDS)
        if event is not None:
            found[index] = described(event)
    return found


@pytest.mark.parametrize(
    ("settings", "script", "expected"),
    [
        pytest.param(dict(min_speech_ms=60, hangover_ms=100), "..111111.....",
                     {4: ("start", 40), 12: ("end", 160, 120)}, id="three voiced start, five unvoiced end"),
        pytest.param(dict(min_speech_ms=60, hangover_ms=100), "..11....11....", {},
                     id="bursts shorter than min_speech are forgotten"),
        pytest.param(dict(min_speech_ms=60, hangover_ms=100), "11.111......",
                     {5: ("start", 60), 10: ("end", 120, 60)}, id="an unvoiced frame restarts the count"),
        pytest.param(dict(min_speech_ms=60, hangover_ms=100), "111....111......",
                     {2: ("start", 0), 14: ("end", 200, 200)}, id="a pause shorter than the hangover is bridged"),
        pytest.param(dict(min_speech_ms=60, hangover_ms=100), "111.....111...",
                     {2: ("start", 0), 7: ("end", 60, 60), 10: ("start", 160)},
                     id="a pause as long as the hangover ends speech"),
        pytest.param(dict(min_speech_ms=100, hangover_ms=100), "1111111", {4: ("start", 0)}, id="min_speech 100 ms"),
        pytest.param(dict(min_speech_ms=40, hangover_ms=20), "11.1", {1: ("start", 0), 2: ("end", 40, 40)},
                     id="one-frame hangover"),
        pytest.param(dict(min_speech_ms=60, hangover_ms=100, warmup_ms=100), "11111111......",
                     {7: ("start", 100), 12: ("end", 160, 60)}, id="warm-up verdicts are ignored"),
    ],
)
def test_hysteresis_and_hangover(settings, script, expected):
    assert run_script(script, logic_settings(**settings)) == expected


# -- real speech -----------------------------------------------------------------

PHRASE = "Bonjour, je voudrais prendre rendez-vous pour mardi prochain."
LEAD = 1.0  # s of line before the phrase
TAIL = 1.5  # s after it


@pytest.fixture(scope="module")
def french_phrase(tmp_path_factory):
    """The phrase as espeak-ng says it, at 8 kHz (fails, not skips, without espeak-ng or sox)."""
    samples = vad_measure.render_speech(PHRASE, tmp_path_factory.mktemp("vad-speech"))
    start, end = vad_measure.speech_span(samples)
    gain = 32768 * 10 ** (vad_measure.SPEECH_LEVEL_DBFS / 20) / vad_measure.active_rms(samples)
    return [value * gain for value in samples[start:end]]


@pytest.mark.parametrize(
    ("codec", "background"),
    [
        pytest.param("PCMU", vad_measure.silence, id="ulaw over idle"),
        pytest.param("PCMA", vad_measure.silence, id="alaw over idle"),
        pytest.param("PCMU", vad_measure.white_noise, id="ulaw over white -50 dBFS"),
        pytest.param("PCMU", vad_measure.pink_noise, id="ulaw over pink -45 dBFS"),
    ],
)
def test_french_speech_starts_and_ends_speech(french_phrase, codec, background):
    settings = VadSettings()
    track = [0.0] * round(LEAD * SAMPLE_RATE) + french_phrase + [0.0] * round(TAIL * SAMPLE_RATE)
    level = -50.0 if background is vad_measure.white_noise else -45.0
    line = background(len(track) / SAMPLE_RATE, level, random.Random(11))
    frames = vad_measure.frames_of(vad_measure.encode([a + b for a, b in zip(track, line)], codec))
    detector = VoiceActivityDetector(settings)
    decided = []
    for index, frame in enumerate(frames):
        event = detector.feed(memoryview(frame), codec, index * FRAME_SECONDS)
        if event is not None:
            decided.append((index * FRAME_SECONDS + FRAME_SECONDS, event))
    onset, end = LEAD, LEAD + len(french_phrase) / SAMPLE_RATE
    assert [type(event) for _, event in decided] == [SpeechStarted, SpeechEnded], decided
    (started_when, started), (ended_when, ended) = decided
    # Started: decided within 200 ms of the first sample, dated within a frame or two of it.
    assert 0 <= started_when - onset <= 0.200
    assert abs(started.at - onset) <= 0.060
    # Ended: decided after the hangover past the last sample, not much later (the
    # WebRTC VAD holds speech a few frames itself); dated near the last sample.
    hangover = settings.hangover_ms / 1000
    assert hangover <= ended_when - end <= hangover + 0.250
    assert -0.100 <= ended.at - end <= 0.150
    assert ended.duration == pytest.approx(ended.at - started.at)


class PublicWebRtc:
    """The WebRTC VAD through its public method only (the detector calls its entry point)."""

    def __init__(self, aggressiveness: int):
        import webrtcvad
        self._vad = webrtcvad.Vad(aggressiveness)
        self.verdicts: list[bool] = []

    def is_speech(self, pcm: bytearray) -> bool:
        verdict = self._vad.is_speech(bytes(pcm), SAMPLE_RATE)
        self.verdicts.append(verdict)
        return verdict


def test_the_webrtc_entry_point_decides_as_the_public_method(french_phrase):
    settings = VadSettings(gate_dbfs=None, warmup_ms=0)
    track = [0.0] * 8000 + french_phrase + [0.0] * 8000
    line = vad_measure.pink_noise(len(track) / SAMPLE_RATE, -45.0, random.Random(5))
    frames = vad_measure.frames_of(vad_measure.encode([a + b for a, b in zip(track, line)], "PCMU"))
    direct = VoiceActivityDetector(settings)
    public = PublicWebRtc(settings.aggressiveness)
    through_method = VoiceActivityDetector(settings, public)
    states = []
    for index, frame in enumerate(frames):
        now = index * FRAME_SECONDS
        assert direct.feed(frame, "PCMU", now) == through_method.feed(frame, "PCMU", now)
        states.append((direct.state, through_method.state))
    assert all(mine == theirs for mine, theirs in states)
    # Both sides of the comparison were exercised: speech and silence, every frame heard.
    assert len(public.verdicts) == len(frames) and True in public.verdicts and False in public.verdicts
    assert {mine for mine, _ in states} >= {VadState.QUIET, VadState.SPEAKING}


def test_missing_frames_count_as_unvoiced():
    settings = logic_settings(min_speech_ms=60, hangover_ms=100)
    detector = VoiceActivityDetector(settings, AlwaysSpeech())
    events = [detector.feed(LOUD_ULAW, "PCMU", index * FRAME_SECONDS) for index in range(3)]
    assert [described(event) for event in events if event] == [("start", 0)]
    # Nothing for 4 frames (under the hangover): still speaking when frames resume.
    assert detector.feed(LOUD_ULAW, "PCMU", 7 * FRAME_SECONDS) is None
    assert detector.state is VadState.SPEAKING
    # Then a gap of 5 frames (the hangover): the next frame's gap ends speech, dated
    # at the end of the last voiced frame.
    event = detector.feed(LOUD_ULAW, "PCMU", 14 * FRAME_SECONDS)
    assert described(event) == ("end", 160, 160)


def test_a_gap_breaks_an_onset():
    detector = VoiceActivityDetector(logic_settings(min_speech_ms=60), AlwaysSpeech())
    assert detector.feed(LOUD_ULAW, "PCMU", 0.0) is None
    assert detector.feed(LOUD_ULAW, "PCMU", 0.020) is None
    assert detector.feed(LOUD_ULAW, "PCMU", 0.100) is None  # 3 missing frames: the onset starts over
    assert detector.state is VadState.ONSET
    assert detector.feed(LOUD_ULAW, "PCMU", 0.120) is None
    assert described(detector.feed(LOUD_ULAW, "PCMU", 0.140)) == ("start", 100)


def test_finish_ends_speech_in_progress_and_nothing_else():
    detector = VoiceActivityDetector(logic_settings(min_speech_ms=40), AlwaysSpeech())
    assert detector.finish() is None
    detector.feed(LOUD_ULAW, "PCMU", 0.0)
    detector.feed(LOUD_ULAW, "PCMU", 0.020)
    assert described(detector.finish()) == ("end", 40, 40)
    assert detector.state is VadState.QUIET


@pytest.mark.parametrize(("codec", "silence"), [("PCMU", 0xFF), ("PCMA", 0xD5)])
def test_the_gate_keeps_digital_silence_and_line_noise_from_starting_speech(codec, silence):
    # A classifier that calls everything speech: only the energy gate stands in the way.
    detector = VoiceActivityDetector(VadSettings(gate_dbfs=-45.0, warmup_ms=0), AlwaysSpeech())
    quiet = bytes([silence]) * FRAME_BYTES
    noise = vad_measure.frames_of(vad_measure.encode(
        vad_measure.white_noise(1.0, -55.0, random.Random(3)), codec))
    events = [detector.feed(frame, codec, index * FRAME_SECONDS)
              for index, frame in enumerate([quiet] * 50 + noise)]
    assert [event for event in events if event is not None] == []
    assert frame_level_dbfs(quiet, codec) == -math.inf
    assert -58.0 < frame_level_dbfs(noise[10], codec) < -52.0


def test_the_level_of_a_full_scale_square_wave_is_0_dbfs():
    square = bytes([0x80, 0x00] * (FRAME_BYTES // 2))  # µ-law: +32124 and -32124
    assert frame_level_dbfs(square, "PCMU") == pytest.approx(20 * math.log10(32124 / 32768), abs=0.01)


@pytest.mark.parametrize(("fields", "message"), [
    (dict(gate_dbfs=-70.0), "VAD gate_dbfs must be within [-60, -10] dBFS, not -70.0"),
    (dict(gate_dbfs="loud"), "VAD gate_dbfs must be a number of dBFS or None, not 'loud'"),
    (dict(aggressiveness=4), "VAD aggressiveness must be 0, 1, 2 or 3, not 4"),
    (dict(aggressiveness=True), "VAD aggressiveness must be 0, 1, 2 or 3, not True"),
    (dict(min_speech_ms=50), "VAD min_speech_ms must be a multiple of 20 ms within [40, 1000], not 50"),
    (dict(min_speech_ms=20), "VAD min_speech_ms must be a multiple of 20 ms within [40, 1000], not 20"),
    (dict(hangover_ms=0), "VAD hangover_ms must be a multiple of 20 ms within [20, 10000], not 0"),
    (dict(warmup_ms=1.5), "VAD warmup_ms must be whole milliseconds, not 1.5"),
])
def test_bad_settings_say_which_and_why(fields, message):
    with pytest.raises(ValueError) as caught:
        VadSettings(**fields)
    assert str(caught.value) == message


@pytest.mark.parametrize(("payload", "codec", "message"), [
    (b"\xff" * 159, "PCMU", "VAD frames are 160 bytes (20 ms of G.711), got 159"),
    (b"\xff" * 160, "G722", "VAD codec must be one of PCMU, PCMA, not 'G722'"),
])
def test_frames_of_another_shape_are_refused(payload, codec, message):
    detector = VoiceActivityDetector(logic_settings(), AlwaysSpeech())
    with pytest.raises(ValueError) as caught:
        detector.feed(payload, codec, 0.0)
    assert str(caught.value) == message


@pytest.mark.parametrize(("codec", "decode"), [("PCMU", ulaw_to_linear16), ("PCMA", alaw_to_linear16)])
def test_the_classifier_hears_the_frame_as_the_g711_tables_decode_it(codec, decode):
    classifier = Scripted("..")
    detector = VoiceActivityDetector(logic_settings(), classifier)
    every_code = bytes(range(160)), bytes(range(96, 256))
    for index, payload in enumerate(every_code):
        detector.feed(memoryview(payload), codec, index * FRAME_SECONDS)  # a view, as the ears pass it
    assert classifier.heard == [decode(payload) for payload in every_code]


def test_the_compiled_detector_runs_when_it_was_built():
    try:
        from eko_rtp.media import _vad
    except ImportError:
        pytest.skip("media/_vad.c was not built (no C compiler or Python.h)")
    if os.environ.get("EKO_RTP_PURE_PYTHON"):
        pytest.skip("EKO_RTP_PURE_PYTHON asks for the Python twins")
    assert vad_module.VadCore is _vad.VadCore and issubclass(VoiceActivityDetector, _vad.VadCore)
    assert vad_module.PER_FRAME_PATH == "compiled"


def test_a_detector_core_never_set_up_raises_instead_of_crashing():
    """The core's members start empty: a subclass that forgets one (or a classifier that
    hands back a wrong buffer) gets an error, never a crash of the server."""
    class Bare(vad_module.VadCore):
        def _first_frame(self):
            return None

    bare = Bare()
    bare.state = VadState.QUIET
    bare.frames = 0
    for attribute in ("_warmup_frames", "_threshold", "_run", "_start_frames", "_hangover_frames"):
        setattr(bare, attribute, 0 if attribute != "_threshold" else -1)
    bare._last_now = bare._process = bare._handle = None
    with pytest.raises((RuntimeError, TypeError, AttributeError)):
        bare.feed(bytes(160), "PCMU", 0.0)
    bare._pcm = bytearray(7)  # not a frame's buffer
    bare._is_speech = AlwaysSpeech().is_speech
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        bare.feed(bytes(160), "PCMU", 0.02)
    bare._pcm = bytearray(320)
    bare.state = "speaking"  # not a VadState member
    bare._start_frames = 3
    with pytest.raises((RuntimeError, KeyError)):
        bare.feed(bytes(160), "PCMU", 0.04)


def test_a_deleted_member_is_an_error_or_none_never_a_crash():
    detector = VoiceActivityDetector(logic_settings(), AlwaysSpeech())
    del detector._last_now  # the compiled twin reads a deleted member as None; the Python one raises
    try:
        detector.feed(LOUD_ULAW, "PCMU", 0.0)
    except AttributeError:
        assert vad_module.VadCore is vad_module.PythonVadCore
    else:
        assert detector._last_now == 0.0 and detector.frames == 1


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_a_frame_in_any_buffer_is_heard_as_the_same_bytes(kind):
    data = bytes(range(40, 240))
    payload = {"bytes": data[20:180], "bytearray": bytearray(data[20:180]), "memoryview": memoryview(data)[20:180]}
    scripted = Scripted("1")
    detector = VoiceActivityDetector(logic_settings(), scripted)
    detector.feed(payload[kind], "PCMU", 0.0)
    assert scripted.heard == [ulaw_to_linear16(data[20:180])]
