"""A call's recording on disk: one stereo WAV, caller left, bot right (the trio shell).

Theory of operation: recording is off by default (the caller's voice is personal
data under the GDPR). When it is on, the call makes a :class:`CallRecorder` and
starts :meth:`CallRecorder.run` in its nursery. The bytes of the file come from
the sans-I/O core :mod:`eko_rtp.media.wav`; this module only moves them.

The bot's frames are the recording's clock. The media sender hands every frame it
sends to :meth:`~CallRecorder.bot_frame`, every 20 ms whatever the caller does,
and the receiver hands each in-order caller frame to
:meth:`~CallRecorder.caller_frame`, which only queues it. Each bot frame is paired
with the oldest queued caller frame, or with codec silence when none is waiting,
and the pair goes, interleaved, into a buffer in memory. Both calls are
synchronous and cost a few microseconds: no ``await``, no system call.

``run`` creates the file (never over an existing path, never through a link),
writes a header that declares no audio, and then once per ``flush_interval``
hands what is buffered to a worker thread, which appends it and only then patches
the header's sizes. So the header never declares more audio than the file holds,
and a process that dies mid-call leaves a valid recording as of the last patch.
When the call's nursery is cancelled, ``run`` writes the rest and closes the file
in a shielded scope bounded by :data:`FINAL_FLUSH_SECONDS`.

A recording must never disturb the call. A disk error (full disk, permissions, a
path that is taken) is logged once with the path and the reason, ``run`` returns
normally, and from then on frames are discarded and counted. A recording also
stops, logged once, when it reaches the largest size a WAV header can declare, or
when the disk falls so far behind that the buffer holds :data:`MAX_BUFFERED_SECONDS`
of audio (memory per call stays bounded whatever the disk does).

Thread safety: every file operation runs in a worker thread, one at a time under a
lock held by the :class:`_RecordingFile`, which alone owns the file descriptor. A
flush abandoned by a cancellation may still be running when the final write
starts; the lock orders them, and the final write skips whatever the abandoned
one already wrote (the buffer stays on the event loop's side until a write is
confirmed). If the final write itself outlives its time bound, the thread still
finishes it and closes the descriptor: nothing else ever touches it.
"""

from __future__ import annotations

import collections
import enum
import errno
import hashlib
import logging
import math
import os
import re
import threading
import time
from pathlib import Path

import trio

from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS
from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE
from eko_rtp.media.wav import (
    HEADER_SIZE,
    MAX_DATA_LENGTH,
    WavEncoding,
    WavFormat,
    interleave_into,
    pad_byte,
    size_patches,
    wav_header,
)

__all__ = [
    "CallRecorder",
    "RecordingState",
    "FINAL_FLUSH_SECONDS",
    "MAX_BUFFERED_SECONDS",
    "STEREO_FRAME_BYTES",
    "recording_path",
    "sweep_recordings",
]

log = logging.getLogger("eko_rtp.call.recording")

STEREO_FRAME_BYTES = 2 * FRAME_BYTES  # one frame of the caller and one of the bot, interleaved
# The last write and close at the end of a call: long enough for a healthy disk
# (a second of audio is 16 kB), short enough that a hung one does not hold the
# call's teardown. An abandoned final write still completes in its thread.
FINAL_FLUSH_SECONDS = 2.0
# Audio the buffer may hold while the disk is slow, before the recording gives up:
# 160 kB a call (16 kB/s of stereo G.711), or three flush intervals if longer.
MAX_BUFFERED_SECONDS = 10.0
DIRECTORY_MODE = 0o750
FILE_MODE = 0o640
# Never follow or reuse a path: O_EXCL fails on any existing name, a symbolic
# link included (even a dangling one), so a recording cannot be aimed at another file.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SILENCE = {WavEncoding.MULAW: ULAW_SILENCE, WavEncoding.ALAW: ALAW_SILENCE}


class RecordingState(enum.Enum):
    """Where a recording is. Frames are kept in STARTING and RECORDING only.

    STARTING -> RECORDING (the file is open);
    STARTING or RECORDING -> STOPPED (the file could not be made, disk error, full, disk too slow);
    any -> CLOSED (``run`` finished the file, or gave up on it).
    """

    STARTING = "starting"
    RECORDING = "recording"
    STOPPED = "stopped"
    CLOSED = "closed"


_KEEPING = frozenset({RecordingState.STARTING, RecordingState.RECORDING})


def _describe(error: OSError) -> str:
    if error.errno == errno.EEXIST:
        return "it already exists (a recording never overwrites a file nor follows a link)"
    if error.errno is not None and error.strerror:
        return f"{error.strerror} ({errno.errorcode.get(error.errno, error.errno)})"
    return str(error) or type(error).__name__


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    # Bounded: every pass writes at least one byte or raises.
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[written:]
        offset += written


class _RecordingFile:
    """The file and its descriptor; every method runs in a worker thread, one at a time.

    ``length`` is the audio the file holds *and* its header declares: it grows only
    after a write and its patch both succeeded. After the first error, or after
    :meth:`finish`, every method does nothing.
    """

    def __init__(self, path: Path, wav_format: WavFormat) -> None:
        self.path = path
        self._format = wav_format
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._done = False
        self.length = 0
        self.failure: str | None = None

    def create(self) -> bool:
        """Make the directory if missing, create the file, write an empty header."""
        with self._lock:
            if self._done:
                return False
            directory = self.path.parent
            try:
                os.mkdir(directory, DIRECTORY_MODE)
            except FileExistsError:
                pass  # the usual case; a non-directory there fails at os.open below
            except OSError as error:
                self._fail(f"cannot create directory {directory}: {_describe(error)}")
                return False
            try:
                fd = os.open(self.path, _CREATE_FLAGS, FILE_MODE)
            except OSError as error:
                self._fail(f"cannot create {self.path}: {_describe(error)}")
                return False
            self._fd = fd
            try:
                _pwrite_all(fd, wav_header(self._format), 0)
            except OSError as error:
                # We made this file (O_EXCL) and it has no valid header: take it back.
                self._fail(f"cannot write {self.path}: {_describe(error)}")
                try:
                    os.unlink(self.path)
                except OSError as unlink_error:
                    log.warning("cannot remove the unfinished recording %s: %s", self.path, _describe(unlink_error))
                return False
            return True

    def write(self, offset: int, data: bytes) -> None:
        """Append the part of ``data`` (audio from ``offset`` on) not yet in the file, then patch."""
        with self._lock:
            self._write(offset, data)

    def finish(self, offset: int, data: bytes) -> None:
        """The last :meth:`write`, the pad byte, and the close."""
        with self._lock:
            self._write(offset, data)
            self._done = True
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                pad = pad_byte(self.length)  # always empty in stereo; kept for the RIFF rule
                if pad:
                    _pwrite_all(fd, pad, HEADER_SIZE + self.length)
                    self._patch(fd, self.length)
            except OSError as error:
                self._fail(f"cannot write {self.path}: {_describe(error)}")
                os.close(fd)
                return
            try:
                os.close(fd)
            except OSError as error:  # NFS reports delayed write errors here
                self._fail(f"cannot close {self.path}: {_describe(error)}")

    def _write(self, offset: int, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            return
        skip = self.length - offset
        if skip < 0:
            raise AssertionError(
                f"recording gap: the file holds {self.length} bytes, the next write starts at {offset}")
        if skip >= len(data):
            return
        try:
            _pwrite_all(fd, memoryview(data)[skip:], HEADER_SIZE + self.length)
            length = offset + len(data)
            self._patch(fd, length)
        except OSError as error:
            self._fail(f"cannot write {self.path}: {_describe(error)}")
            return
        self.length = length

    def _patch(self, fd: int, length: int) -> None:
        for position, value in size_patches(self._format, length):
            _pwrite_all(fd, value, position)

    def _fail(self, reason: str) -> None:
        # Called at most once: afterwards there is no descriptor and every method returns early.
        self.failure = reason
        self._done = True
        log.error("recording stopped, the call goes on: %s", reason)
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as error:
                log.debug("closing %s after a failure: %s", self.path, _describe(error))


class CallRecorder:
    """One stereo WAV for one call: the caller on the left channel, the bot on the right.

    ``max_data_length`` bounds the audio (default: the most a WAV header declares,
    over 74 hours); ``limiter`` is the worker-thread limiter (default: trio's),
    which a server may share among all its calls' recorders.
    """

    def __init__(
        self,
        *,
        path: Path,
        encoding: WavEncoding,
        flush_interval: float = 1.0,
        max_pending_frames: int = 50,
        max_data_length: int = MAX_DATA_LENGTH,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if not isinstance(encoding, WavEncoding):
            raise TypeError(f"encoding must be a WavEncoding, not {encoding!r}")
        if not (isinstance(flush_interval, (int, float)) and math.isfinite(flush_interval) and flush_interval > 0):
            raise ValueError(f"flush_interval must be a positive number of seconds, not {flush_interval!r}")
        if not (isinstance(max_pending_frames, int) and max_pending_frames >= 1):
            raise ValueError(f"max_pending_frames must be a positive integer, not {max_pending_frames!r}")
        if not (isinstance(max_data_length, int) and STEREO_FRAME_BYTES <= max_data_length <= MAX_DATA_LENGTH):
            raise ValueError(f"max_data_length must be an integer in {STEREO_FRAME_BYTES}..{MAX_DATA_LENGTH}, "
                             f"not {max_data_length!r}")
        self._path = Path(path)
        self._format = WavFormat(encoding=encoding, channels=2)
        self._file = _RecordingFile(self._path, self._format)
        self._flush_interval = float(flush_interval)
        self._max_pending_frames = max_pending_frames
        self._limiter = limiter
        self._state = RecordingState.STARTING
        self._ran = False
        self._failure: str | None = None  # a failure seen on the event loop's side (disk too slow)
        self._silence = bytes((_SILENCE[encoding],)) * FRAME_BYTES
        self._pending: collections.deque[bytes] = collections.deque()
        self._stereo = bytearray(STEREO_FRAME_BYTES)  # reused by every bot frame
        # Audio not yet confirmed on disk; _buffer[0] is byte _buffer_offset of the data chunk.
        self._buffer = bytearray()
        self._buffer_offset = 0
        self._max_buffered = STEREO_FRAME_BYTES * math.ceil(
            max(MAX_BUFFERED_SECONDS, 3 * self._flush_interval) / FRAME_SECONDS)
        # Whole frames only: the last frame that fits ends at or before max_data_length.
        self._max_accepted = max_data_length - max_data_length % STEREO_FRAME_BYTES
        self._accepted = 0  # bytes of audio taken into the buffer so far
        self._caller_frames_dropped = 0
        self._frames_discarded = 0

    # -- the hot path: synchronous, no system call ------------------------------------

    def bot_frame(self, payload: bytes | memoryview) -> None:
        """Record the frame the bot just sent, beside the oldest caller frame waiting (or silence).

        The payload is copied at once (it may be a view into the memory-mapped cache).
        Raises :class:`ValueError` if it is not one frame (a bug of the sender).
        """
        if len(payload) != FRAME_BYTES:
            raise ValueError(f"a bot frame is {FRAME_BYTES} bytes, not {len(payload)}")
        if self._state not in _KEEPING:
            self._frames_discarded += 1
            return
        if self._accepted + STEREO_FRAME_BYTES > self._max_accepted:
            self._stop_full()
            self._frames_discarded += 1
            return
        if len(self._buffer) >= self._max_buffered:
            self._stop_behind()
            self._frames_discarded += 1
            return
        pending = self._pending
        interleave_into(self._stereo, pending.popleft() if pending else self._silence, payload)
        self._buffer += self._stereo
        self._accepted += STEREO_FRAME_BYTES

    def caller_frame(self, payload: bytes | memoryview) -> None:
        """Queue an in-order caller frame until the next bot frame; drop the oldest beyond the bound.

        Raises :class:`ValueError` if it is not one frame (the reorder core cuts frames).
        """
        if len(payload) != FRAME_BYTES:
            raise ValueError(f"a caller frame is {FRAME_BYTES} bytes, not {len(payload)}")
        if self._state not in _KEEPING:
            return
        pending = self._pending
        if len(pending) >= self._max_pending_frames:
            # The caller runs ahead of our sending (clock drift, a burst, or we stopped
            # sending): the oldest frame is the one furthest from its bot frame.
            pending.popleft()
            self._caller_frames_dropped += 1
        pending.append(bytes(payload))

    def _stop_full(self) -> None:
        self._stop()
        log.info("recording %s reached %d bytes of audio, the most it may hold; the rest of the call is not recorded",
                 self._path, self._accepted)

    def _stop_behind(self) -> None:
        self._failure = (f"cannot write {self._path} fast enough: "
                         f"{len(self._buffer) // STEREO_FRAME_BYTES * FRAME_SECONDS:.0f} s of audio wait for the disk")
        self._stop()
        log.error("recording stopped, the call goes on: %s", self._failure)

    def _stop(self) -> None:
        self._state = RecordingState.STOPPED
        self._pending.clear()

    # -- the shell ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the file, report started, flush every ``flush_interval`` until cancelled, finish the file.

        Returns normally when the recording stops by itself (disk error, full, disk
        too slow); never raises :class:`OSError`. Reports started even when the file
        could not be made, so that the call goes on without it.
        """
        if self._ran:
            raise RuntimeError(f"the recorder of {self._path} already ran")
        self._ran = True
        try:
            created = await self._in_thread(self._file.create)
            if created and self._state is RecordingState.STARTING:
                self._state = RecordingState.RECORDING
            elif not created:
                self._stop()
            task_status.started()
            await self._flush_every_interval()
        finally:
            with trio.move_on_after(FINAL_FLUSH_SECONDS, shield=True) as final:
                await self._finish()
            if final.cancelled_caught:
                log.warning("recording %s: the disk did not finish the file within %.0f s; "
                            "a worker thread completes it", self._path, FINAL_FLUSH_SECONDS)

    async def _flush_every_interval(self) -> None:
        # Absolute schedule: flush k is due at start + k * interval; a slow flush
        # skips the ticks it overran rather than bunching them.
        start = trio.current_time()
        tick = 0
        # Bounded by the call: its nursery cancels this loop, or the recording stops.
        while self._state is RecordingState.RECORDING:
            now = trio.current_time()
            tick = max(tick + 1, math.floor((now - start) / self._flush_interval) + 1)
            await trio.sleep_until(start + tick * self._flush_interval)
            await self._flush()
            if self._file.failure is not None:
                self._stop()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        # A copy: the buffer keeps growing while the thread writes, and keeps this
        # audio until the write is confirmed (a cancelled flush is redone by _finish).
        data = bytes(self._buffer)
        offset = self._buffer_offset
        await self._in_thread(self._file.write, offset, data)
        del self._buffer[: len(data)]
        self._buffer_offset = offset + len(data)

    async def _finish(self) -> None:
        self._stop()
        self._state = RecordingState.CLOSED  # before the await: the final write may be abandoned
        data = bytes(self._buffer)
        await self._in_thread(self._file.finish, self._buffer_offset, data)
        self._frames_discarded += (self._buffer_offset + len(data) - self._file.length) // STEREO_FRAME_BYTES
        self._buffer_offset += len(data)
        self._buffer.clear()

    async def _in_thread(self, function, *args):
        # abandon_on_cancel: a hung disk must not hold the call; _RecordingFile's
        # lock keeps an abandoned operation and the next one from overlapping.
        return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True, limiter=self._limiter)

    # -- what the call and the metrics read ---------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> RecordingState:
        return self._state

    @property
    def failed(self) -> str | None:
        """None while all is well, else why the recording stopped early (the text that was logged)."""
        return self._failure or self._file.failure

    @property
    def bytes_written(self) -> int:
        """Bytes of audio (header excluded) in the file and declared by its header."""
        return self._file.length

    @property
    def frames_written(self) -> int:
        """Stereo frames (20 ms of both sides) in the file and declared by its header."""
        return self._file.length // STEREO_FRAME_BYTES

    @property
    def caller_frames_dropped(self) -> int:
        """Caller frames dropped because more than ``max_pending_frames`` waited for a bot frame."""
        return self._caller_frames_dropped

    @property
    def frames_discarded(self) -> int:
        """Bot frames (each with its caller side) not recorded because the recording had stopped."""
        return self._frames_discarded


# -- names and retention ---------------------------------------------------------------

MAX_CALL_ID_CHARACTERS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
SECONDS_PER_DAY = 86400


def recording_path(directory: Path, *, call_id: str, started_at_unix: float) -> Path:
    """``directory/<UTC start>-<call id>.wav``, safe whatever the network put in the Call-ID.

    The call id keeps only ``[A-Za-z0-9._-]`` (anything else becomes ``_``), loses
    its leading dots, and at most :data:`MAX_CALL_ID_CHARACTERS` characters remain.
    When that changed it (or it was empty), 8 hex digits of its SHA-256 follow, so
    that distinct hostile ids do not collide on one name (a taken name means no
    recording: :class:`CallRecorder` never overwrites).
    """
    if not (isinstance(started_at_unix, (int, float)) and math.isfinite(started_at_unix)
            and 0 <= started_at_unix < 253402300800):  # before year 10000: four-digit years
        raise ValueError(f"started_at_unix must be a time between 1970 and 9999, not {started_at_unix!r}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at_unix))
    safe = _UNSAFE.sub("_", call_id).lstrip(".")[:MAX_CALL_ID_CHARACTERS]
    if safe != call_id or not safe:
        # surrogatepass: a Call-ID decoded with surrogateescape still hashes.
        digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe}-{digest}" if safe else digest
    return Path(directory) / f"{stamp}-{safe}.wav"


def sweep_recordings(directory: Path, *, retention_days: float, now_unix: float) -> int:
    """Delete the ``*.wav`` regular files directly in ``directory`` last modified over
    ``retention_days`` ago; return how many went.

    Symbolic links, subdirectories and other names are left alone. A file that
    cannot be examined or deleted is logged and skipped; a missing directory
    (nothing recorded yet) sweeps nothing; one that cannot be listed is logged and
    sweeps nothing. Blocking: run it in a worker thread.
    """
    if not (isinstance(retention_days, (int, float)) and math.isfinite(retention_days) and retention_days > 0):
        raise ValueError(f"retention_days must be a positive number of days, not {retention_days!r}")
    cutoff = now_unix - retention_days * SECONDS_PER_DAY
    removed = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0
    except OSError as error:
        log.error("cannot sweep the recordings in %s: %s", directory, _describe(error))
        return 0
    with entries:
        # Bounded by the directory's entries, listed once.
        for entry in entries:
            if not entry.name.endswith(".wav"):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)  # unlink never follows a link
            except FileNotFoundError:
                continue  # gone meanwhile: nothing to do
            except OSError as error:
                log.warning("cannot delete the old recording %s: %s", entry.path, _describe(error))
                continue
            removed += 1
    return removed
