"""Call recordings on disk: real files in tmp_path, read back byte for byte and by sox.

The recorder's writes run in worker threads, in real time. Most tests hold trio's
clock still (``MockClock()``, rate 0) and move it by hand, so the flush schedule
is exact; :func:`until` then waits, in real time and bounded, for a worker thread
to land its write.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from eko_rtp.call.recording import (
    FINAL_FLUSH_SECONDS,
    CallRecorder,
    RecordingState,
    recording_path,
    sweep_recordings,
)
from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE
from eko_rtp.media.wav import HEADER_SIZE, WavEncoding, WavFormat, wav_header

STEREO_ULAW = WavFormat(encoding=WavEncoding.MULAW, channels=2)
STEREO_ALAW = WavFormat(encoding=WavEncoding.ALAW, channels=2)
STEREO_FRAME = 2 * FRAME_BYTES
ULAW_SILENT_FRAME = bytes((ULAW_SILENCE,)) * FRAME_BYTES
ALAW_SILENT_FRAME = bytes((ALAW_SILENCE,)) * FRAME_BYTES
LOGGER = "eko_rtp.call.recording"

needs_sox = pytest.mark.skipif(shutil.which("sox") is None or shutil.which("soxi") is None,
                               reason="sox is not installed (apt install sox)")


@pytest.fixture
def clock():
    """Trio's clock, standing still until a test jumps it."""
    return trio.testing.MockClock()


@pytest.fixture
def autojump_clock():
    """Trio's clock, jumping to the next deadline whenever every task waits."""
    return trio.testing.MockClock(autojump_threshold=0)


def caller(n: int) -> bytes:
    return bytes((n,)) * FRAME_BYTES  # 0..127: never a silence code


def bot(n: int) -> bytes:
    return bytes((128 + n,)) * FRAME_BYTES  # 128..227: never a silence code


def soxi(path: Path, option: str) -> str:
    done = subprocess.run(["soxi", option, str(path)], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def sox_samples(path: Path) -> int:
    """Samples per channel sox actually decodes (not what the header says), with no warning."""
    done = subprocess.run(["sox", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-"],
                          capture_output=True, timeout=30, check=True)
    assert b"WARN" not in done.stderr, done.stderr
    return len(done.stdout) // 2


def channels(path: Path) -> tuple[bytes, bytes]:
    """The data chunk of a recording, de-interleaved: (left, right)."""
    data = path.read_bytes()[HEADER_SIZE:]
    return data[0::2], data[1::2]


async def until(condition, what: str) -> None:
    """Wait, in real time and at most 5 s, for a worker thread to make ``condition()`` true."""
    for _ in range(2500):
        if condition():
            return
        await trio.to_thread.run_sync(time.sleep, 0.002)
    raise AssertionError(f"still waiting for {what}")


def error_messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def gated_writes(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make every audio write wait for ``gate``; ``entered`` tells that one is waiting (a hung disk)."""
    gate, entered = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if offset >= HEADER_SIZE:
            entered.set()
            assert gate.wait(10), "the test never opened the gate"
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return gate, entered


# -- what the file holds -----------------------------------------------------------------


@needs_sox
async def test_the_caller_is_left_the_bot_right_and_silence_fills_what_the_caller_did_not_send(tmp_path, clock):
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    sender_buffer = bytearray(FRAME_BYTES)  # the sender reuses it: the recorder must copy
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(75):
            if not 10 <= n < 20:  # the caller's side went quiet for 200 ms
                recorder.caller_frame(caller(n))
            sender_buffer[:] = bot(n)
            recorder.bot_frame(memoryview(sender_buffer))
        nursery.cancel_scope.cancel()
    assert path.read_bytes()[:HEADER_SIZE] == wav_header(STEREO_ULAW, 75 * STEREO_FRAME)
    assert path.stat().st_size == HEADER_SIZE + 75 * STEREO_FRAME
    left, right = channels(path)
    assert left == b"".join(ULAW_SILENT_FRAME if 10 <= n < 20 else caller(n) for n in range(75))
    assert right == b"".join(bot(n) for n in range(75))
    assert (soxi(path, "-c"), soxi(path, "-r"), soxi(path, "-e"), soxi(path, "-s")) == ("2", "8000", "u-law", "12000")
    assert float(soxi(path, "-D")) == 1.5
    assert sox_samples(path) == 12000
    assert (recorder.frames_written, recorder.bytes_written) == (75, 75 * STEREO_FRAME)
    assert (recorder.state, recorder.failed, recorder.caller_frames_dropped, recorder.frames_discarded) == (
        RecordingState.CLOSED, None, 0, 0)


@pytest.mark.parametrize(
    ("events", "max_pending_frames", "expected_left", "dropped"),
    [
        # A burst of two caller frames is played out one per bot frame, then silence.
        ("c0 c1 B B B c2 B", 50, [0, 1, None, 2], 0),
        # Caller frames wait for the next bot frame, in order.
        ("B c0 B c1 c2 B B c3 B", 50, [None, 0, 1, 2, 3], 0),
        # A caller running ahead loses its oldest frames beyond the bound.
        ("c0 c1 c2 c3 c4 B B B B", 3, [2, 3, 4, None], 2),
        ("c0 c1 B c2 c3 c4 c5 B B B B", 2, [0, 4, 5, None, None], 3),
    ],
)
async def test_each_bot_frame_takes_the_oldest_caller_frame_waiting(
        tmp_path, clock, events, max_pending_frames, expected_left, dropped):
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.ALAW, max_pending_frames=max_pending_frames)
    bots = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for event in events.split():
            if event == "B":
                recorder.bot_frame(bot(bots))
                bots += 1
            else:
                recorder.caller_frame(caller(int(event[1:])))
        nursery.cancel_scope.cancel()
    left, right = channels(path)
    assert left == b"".join(ALAW_SILENT_FRAME if n is None else caller(n) for n in expected_left)
    assert right == b"".join(bot(n) for n in range(bots))
    assert recorder.caller_frames_dropped == dropped


# -- when it reaches the disk ------------------------------------------------------------


@needs_sox
async def test_flushes_at_each_interval_and_the_file_on_disk_is_valid_mid_call(tmp_path, clock):
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.ALAW, flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        # Before any audio the file is already a valid, empty recording.
        assert path.read_bytes() == wav_header(STEREO_ALAW)
        assert soxi(path, "-s") == "0"
        for n in range(50):
            recorder.caller_frame(caller(n))
            recorder.bot_frame(bot(n))
        clock.jump(0.999)
        await trio.testing.wait_all_tasks_blocked()
        assert (recorder.bytes_written, path.stat().st_size) == (0, HEADER_SIZE)

        clock.jump(0.001)  # t = 1 s: the first flush
        await until(lambda: recorder.bytes_written == 50 * STEREO_FRAME, "the first flush")
        assert path.read_bytes() == wav_header(STEREO_ALAW, 50 * STEREO_FRAME) + b"".join(
            bytes(pair) for n in range(50) for pair in zip(caller(n), bot(n)))

        for n in range(50, 75):
            recorder.caller_frame(caller(n))
            recorder.bot_frame(bot(n))
        clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.bytes_written == 50 * STEREO_FRAME
        # The process dies now, the file still open: what it left is a valid recording
        # of the first second.
        crashed = tmp_path / "crashed.wav"
        shutil.copyfile(path, crashed)
        assert float(soxi(crashed, "-D")) == 1.0
        assert sox_samples(crashed) == 8000

        clock.jump(0.5)  # t = 2 s: the second flush
        await until(lambda: recorder.bytes_written == 75 * STEREO_FRAME, "the second flush")
        assert float(soxi(path, "-D")) == 1.5
        assert recorder.state is RecordingState.RECORDING
        nursery.cancel_scope.cancel()
    assert path.read_bytes()[:HEADER_SIZE] == wav_header(STEREO_ALAW, 75 * STEREO_FRAME)


@needs_sox
async def test_the_end_of_the_call_writes_what_is_buffered_and_closes(tmp_path, clock):
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW, flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(30):
            recorder.bot_frame(bot(n))
        clock.jump(0.6)
        nursery.cancel_scope.cancel()  # before the first flush
    assert recorder.state is RecordingState.CLOSED
    assert float(soxi(path, "-D")) == 0.6
    assert sox_samples(path) == 4800
    assert channels(path) == (ULAW_SILENT_FRAME * 30, b"".join(bot(n) for n in range(30)))
    # Frames after the end are counted, not kept.
    recorder.caller_frame(caller(1))
    recorder.bot_frame(bot(30))
    assert (recorder.frames_written, recorder.frames_discarded) == (30, 1)


async def test_a_flush_cut_short_by_the_end_of_the_call_is_finished_in_order(tmp_path, clock, monkeypatch):
    gate, entered = gated_writes(monkeypatch)
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW, flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(50):
            recorder.bot_frame(bot(n))
        clock.jump(1.0)
        await trio.to_thread.run_sync(entered.wait, 5)  # the flush of 50 frames is on the disk's way
        for n in range(50, 60):
            recorder.bot_frame(bot(n))
        nursery.cancel_scope.cancel()  # abandons the flush; the final write waits behind it
        gate.set()
    assert recorder.bytes_written == 60 * STEREO_FRAME
    assert path.read_bytes()[:HEADER_SIZE] == wav_header(STEREO_ULAW, 60 * STEREO_FRAME)
    assert channels(path) == (ULAW_SILENT_FRAME * 60, b"".join(bot(n) for n in range(60)))


async def test_a_hung_disk_holds_the_end_of_the_call_for_the_final_flush_bound_only(
        tmp_path, autojump_clock, monkeypatch, caplog):
    caplog.set_level("INFO", logger=LOGGER)
    gate, entered = gated_writes(monkeypatch)
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(10):
            recorder.bot_frame(bot(n))
        nursery.cancel_scope.cancel()
    # The clock jumped while the final write hung, to the bound and no further.
    assert trio.current_time() == FINAL_FLUSH_SECONDS
    assert recorder.state is RecordingState.CLOSED
    assert error_messages(caplog) == [
        f"recording {path}: the disk did not finish the file within 2 s; a worker thread completes it"]
    # The abandoned worker thread still owns the file, and finishes it once the disk answers.
    # (Under the autojump clock it may be abandoned before it even reached the disk.)
    await trio.to_thread.run_sync(entered.wait, 5)
    gate.set()
    await until(lambda: recorder.bytes_written == 10 * STEREO_FRAME, "the abandoned final write")
    assert path.read_bytes()[:HEADER_SIZE] == wav_header(STEREO_ULAW, 10 * STEREO_FRAME)
    assert path.stat().st_size == HEADER_SIZE + 10 * STEREO_FRAME


# -- failures stay inside the recorder ----------------------------------------------------


async def start_and_watch(nursery, recorder) -> trio.Event:
    """Start ``recorder.run`` like a call does; the event tells when it returned by itself."""
    returned = trio.Event()

    async def record(task_status=trio.TASK_STATUS_IGNORED):
        await recorder.run(task_status=task_status)
        returned.set()

    await nursery.start(record)
    return returned


@needs_sox
async def test_a_full_disk_is_logged_once_and_the_call_goes_on(tmp_path, clock, monkeypatch, caplog):
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if offset >= HEADER_SIZE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        returned = await start_and_watch(nursery, recorder)
        for n in range(50):
            recorder.caller_frame(caller(n))
            recorder.bot_frame(bot(n))
        clock.jump(1.0)
        await until(returned.is_set, "run to return after the disk error")
        # The call's nursery was not disturbed, and the rest of the call is not recorded.
        assert not nursery.cancel_scope.cancel_called
        for n in range(50, 100):
            recorder.caller_frame(caller(n))
            recorder.bot_frame(bot(n))
        clock.jump(5.0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    reason = f"cannot write {path}: No space left on device (ENOSPC)"
    assert recorder.failed == reason
    assert error_messages(caplog) == [f"recording stopped, the call goes on: {reason}"]
    assert (recorder.state, recorder.frames_written, recorder.frames_discarded) == (RecordingState.CLOSED, 0, 100)
    # What is on disk is the valid, empty recording of the start.
    assert path.read_bytes() == wav_header(STEREO_ULAW)
    assert sox_samples(path) == 0


async def test_a_recording_whose_directory_is_a_file_fails_alone(tmp_path, clock, caplog):
    (tmp_path / "not-a-directory").write_bytes(b"")
    path = tmp_path / "not-a-directory" / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        returned = await start_and_watch(nursery, recorder)  # started: the call goes on without it
        await until(returned.is_set, "run to return")
        recorder.bot_frame(bot(0))
        nursery.cancel_scope.cancel()
    reason = f"cannot create {path}: Not a directory (ENOTDIR)"
    assert recorder.failed == reason
    assert error_messages(caplog) == [f"recording stopped, the call goes on: {reason}"]
    assert (recorder.state, recorder.frames_discarded) == (RecordingState.CLOSED, 1)


async def test_a_missing_directory_is_made_private_and_the_file_is_not_world_readable(tmp_path, clock):
    path = tmp_path / "recordings" / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    umask = os.umask(0o022)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            nursery.cancel_scope.cancel()
    finally:
        os.umask(umask)
    assert (path.parent.stat().st_mode & 0o7777, path.stat().st_mode & 0o7777) == (0o750, 0o640)
    assert path.read_bytes() == wav_header(STEREO_ULAW)


async def test_only_the_last_directory_is_made(tmp_path, clock, caplog):
    path = tmp_path / "missing" / "recordings" / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
    reason = f"cannot create directory {path.parent}: No such file or directory (ENOENT)"
    assert recorder.failed == reason
    assert error_messages(caplog) == [f"recording stopped, the call goes on: {reason}"]


@pytest.mark.parametrize("existing", ["file", "link", "dangling link", "directory"])
async def test_an_existing_path_is_never_overwritten_nor_followed(tmp_path, clock, caplog, existing):
    path = tmp_path / "call.wav"
    target = tmp_path / "elsewhere.txt"
    if existing == "file":
        path.write_bytes(b"an earlier recording")
    elif existing == "link":
        target.write_bytes(b"somebody else's file")
        path.symlink_to(target)
    elif existing == "dangling link":
        path.symlink_to(target)
    else:
        path.mkdir()
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
    reason = f"cannot create {path}: it already exists (a recording never overwrites a file nor follows a link)"
    assert recorder.failed == reason
    assert error_messages(caplog) == [f"recording stopped, the call goes on: {reason}"]
    if existing == "file":
        assert path.read_bytes() == b"an earlier recording"
    elif existing == "link":
        assert path.is_symlink() and target.read_bytes() == b"somebody else's file"
    elif existing == "dangling link":
        assert path.is_symlink() and not target.exists()
    else:
        assert path.is_dir() and list(path.iterdir()) == []


@needs_sox
async def test_the_recording_stops_at_its_maximum_length(tmp_path, clock, caplog):
    caplog.set_level("INFO", logger=LOGGER)
    path = tmp_path / "call.wav"
    # Three frames and a bit: only whole frames are kept.
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW, max_data_length=3 * STEREO_FRAME + 100)
    async with trio.open_nursery() as nursery:
        returned = await start_and_watch(nursery, recorder)
        for n in range(5):
            recorder.bot_frame(bot(n))
        clock.jump(1.0)
        await until(returned.is_set, "run to return once the recording is full")
        nursery.cancel_scope.cancel()
    assert error_messages(caplog) == [
        f"recording {path} reached 960 bytes of audio, the most it may hold; the rest of the call is not recorded"]
    assert (recorder.failed, recorder.frames_written, recorder.frames_discarded) == (None, 3, 2)
    assert channels(path) == (ULAW_SILENT_FRAME * 3, bot(0) + bot(1) + bot(2))
    assert sox_samples(path) == 3 * FRAME_BYTES


async def test_a_disk_too_slow_stops_the_recording_before_memory_grows(tmp_path, clock, monkeypatch, caplog):
    gate, entered = gated_writes(monkeypatch)
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path=path, encoding=WavEncoding.MULAW, flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        returned = await start_and_watch(nursery, recorder)
        for n in range(50):
            recorder.bot_frame(bot(n))
        clock.jump(1.0)
        await trio.to_thread.run_sync(entered.wait, 5)  # the first flush hangs
        for n in range(50, 502):  # 10 s of audio wait: the 501st frame is one too many
            recorder.bot_frame(bot(n % 100))
        reason = f"cannot write {path} fast enough: 10 s of audio wait for the disk"
        assert (recorder.state, recorder.failed) == (RecordingState.STOPPED, reason)
        assert error_messages(caplog) == [f"recording stopped, the call goes on: {reason}"]
        gate.set()  # the disk answers at last: what was buffered still lands, in order
        await until(returned.is_set, "run to return")
        nursery.cancel_scope.cancel()
    assert (recorder.frames_written, recorder.frames_discarded) == (500, 2)
    assert channels(path)[1] == b"".join(bot(n % 100) for n in range(500))
    assert len(error_messages(caplog)) == 1


# -- contract errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"encoding": 7}, TypeError, "encoding must be a WavEncoding, not 7"),
        ({"flush_interval": 0}, ValueError, "flush_interval must be a positive number of seconds, not 0"),
        ({"flush_interval": float("inf")}, ValueError, "flush_interval must be a positive number of seconds, not inf"),
        ({"max_pending_frames": 0}, ValueError, "max_pending_frames must be a positive integer, not 0"),
        ({"max_data_length": 319}, ValueError, "max_data_length must be an integer in 320..4294967244, not 319"),
    ],
)
def test_constructor_errors(tmp_path, options, error, message):
    with pytest.raises(error) as caught:
        CallRecorder(**{"path": tmp_path / "call.wav", "encoding": WavEncoding.MULAW, **options})
    assert str(caught.value) == message


def test_a_frame_of_the_wrong_size_is_a_bug_of_the_sender(tmp_path):
    recorder = CallRecorder(path=tmp_path / "call.wav", encoding=WavEncoding.MULAW)
    with pytest.raises(ValueError) as bot_error:
        recorder.bot_frame(bytes(80))
    with pytest.raises(ValueError) as caller_error:
        recorder.caller_frame(memoryview(bytes(240)))
    assert (str(bot_error.value), str(caller_error.value)) == (
        "a bot frame is 160 bytes, not 80", "a caller frame is 160 bytes, not 240")


async def test_a_recorder_runs_once(tmp_path, clock):
    recorder = CallRecorder(path=tmp_path / "call.wav", encoding=WavEncoding.MULAW)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError) as caught:
        await recorder.run()
    assert str(caught.value) == f"the recorder of {tmp_path / 'call.wav'} already ran"


# -- names ----------------------------------------------------------------------------------------

STARTED = 1796422503  # 2026-12-04 22:15:03 UTC


@pytest.mark.parametrize(
    ("call_id", "name"),
    [
        ("a84b4c76e66710.pc33-atlanta_com", "20261204T221503Z-a84b4c76e66710.pc33-atlanta_com.wav"),
        ("a84b4c76e66710@pc33.atlanta.com", "20261204T221503Z-a84b4c76e66710_pc33.atlanta.com-26559daa.wav"),
        ("../../etc/passwd", "20261204T221503Z-_.._etc_passwd-3754d6cb.wav"),
        ("", "20261204T221503Z-e3b0c442.wav"),
        ("...", "20261204T221503Z-ab5df625.wav"),
        (".hidden", "20261204T221503Z-hidden-16924190.wav"),
        ("appel-é-☎", "20261204T221503Z-appel-_-_-f07fe1fb.wav"),
        ("a/b\\c\x00d", "20261204T221503Z-a_b_c_d-e1994951.wav"),
        ("x" * 200, f"20261204T221503Z-{'x' * 64}-aa20c23e.wav"),
    ],
)
def test_recording_path_is_safe_whatever_the_call_id(tmp_path, call_id, name):
    path = recording_path(tmp_path, call_id=call_id, started_at_unix=STARTED + 0.75)
    assert path == tmp_path / name
    assert len(name) <= 100


@pytest.mark.parametrize("started", [float("nan"), -1, float("inf"), 253402300800])
def test_recording_path_needs_a_plausible_time(tmp_path, started):
    with pytest.raises(ValueError) as caught:
        recording_path(tmp_path, call_id="x", started_at_unix=started)
    assert str(caught.value) == f"started_at_unix must be a time between 1970 and 9999, not {started!r}"


# -- retention ------------------------------------------------------------------------------------

NOW = 1800000000
DAY = 86400


def aged(path: Path, days: float) -> Path:
    os.utime(path, (NOW - days * DAY, NOW - days * DAY), follow_symlinks=False)
    return path


def test_sweep_deletes_old_recordings_only(tmp_path):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"kept")
    aged(outside, 100)
    for name in ("old.wav", "older.wav", "new.wav", "old.txt"):
        (recordings / name).write_bytes(b"x")
    aged(recordings / "old.wav", 31)
    aged(recordings / "older.wav", 400)
    aged(recordings / "new.wav", 29)
    aged(recordings / "old.txt", 400)
    (recordings / "link.wav").symlink_to(outside)
    aged(recordings / "link.wav", 100)
    (recordings / "folder.wav").mkdir()
    (recordings / "folder.wav" / "inside.wav").write_bytes(b"x")
    aged(recordings / "folder.wav" / "inside.wav", 100)
    aged(recordings / "folder.wav", 100)

    assert sweep_recordings(recordings, retention_days=30, now_unix=NOW) == 2
    assert sorted(entry.name for entry in recordings.iterdir()) == ["folder.wav", "link.wav", "new.wav", "old.txt"]
    assert (recordings / "folder.wav" / "inside.wav").exists()
    assert outside.read_bytes() == b"kept"
    assert sweep_recordings(recordings, retention_days=30, now_unix=NOW) == 0


def test_sweep_skips_a_file_it_cannot_delete_and_goes_on(tmp_path, monkeypatch, caplog):
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"x")
        aged(tmp_path / name, 40)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(path) == "b.wav":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert sweep_recordings(tmp_path, retention_days=30, now_unix=NOW) == 2
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["b.wav"]
    assert error_messages(caplog) == [
        f"cannot delete the old recording {tmp_path / 'b.wav'}: Permission denied (EACCES)"]


def test_sweep_of_a_missing_or_unlistable_directory(tmp_path, caplog):
    assert sweep_recordings(tmp_path / "none yet", retention_days=30, now_unix=NOW) == 0
    (tmp_path / "a file").write_bytes(b"")
    assert sweep_recordings(tmp_path / "a file", retention_days=30, now_unix=NOW) == 0
    assert error_messages(caplog) == [
        f"cannot sweep the recordings in {tmp_path / 'a file'}: Not a directory (ENOTDIR)"]


@pytest.mark.parametrize("retention_days", [0, -1, float("nan")])
def test_sweep_needs_a_positive_retention(tmp_path, retention_days):
    with pytest.raises(ValueError) as caught:
        sweep_recordings(tmp_path, retention_days=retention_days, now_unix=NOW)
    assert str(caught.value) == f"retention_days must be a positive number of days, not {retention_days!r}"
