"""A precise wake-up for the frame clock: a Linux timerfd that trio can wait on.

Why: trio sleeps through ``epoll_wait``, whose timeout is whole milliseconds (CPython
rounds it up), so a task asleep until ``t`` wakes anywhere in ``[t, t + 1 ms)``. For
the frame clock that rounding *is* the jitter: a frame sent 0.9 ms late after one
sent on time is a 0.9 ms deviation at the caller. A timerfd armed with an absolute
CLOCK_MONOTONIC deadline becomes readable at that instant (to the microsecond), and
trio wakes the waiting task as soon as the fd is readable.

Armed with an ``interval`` the timerfd keeps firing every interval after its first
expiry; a read returns how many expiries passed, which moves ``armed_at`` on to the
next one, and ``disarm`` stops it.

trio's clock is ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux) plus a random
offset; :meth:`PreciseTimer.arm` takes a trio time and removes that offset.
Python 3.11 has no ``os.timerfd_create`` (3.13 does), so this calls libc directly.

While trio's loop has nothing else to do before the expiry, :meth:`PreciseTimer.wait`
waits for it without a pass of that loop (:mod:`eko_rtp.media.idle_wait`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

import trio

from eko_rtp.media.idle_wait import IdleWait

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]


class PreciseTimer:
    """One timerfd, armed at absolute trio times, awaited with ``wait``."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"timerfd_create: {os.strerror(code)}")
        self.fd = fd
        self._spec = _Itimerspec()
        self.armed_at: float | None = None  # the next expiry, or None when nothing is armed
        self.interval = 0.0  # seconds between later expiries; 0: one-shot
        self.idle = IdleWait(fd)

    def arm(self, trio_deadline: float, *, interval: float = 0.0) -> None:
        """Fire at ``trio_deadline`` (a ``trio.current_time()`` value), then every
        ``interval`` seconds if one is given; re-arming replaces both."""
        monotonic = trio_deadline - (trio.current_time() - time.perf_counter())
        if monotonic <= 0:
            monotonic = 1e-9  # already due: an absolute time in the past fires at once
        seconds = int(monotonic)
        spec = self._spec
        spec.it_value.tv_sec = seconds
        spec.it_value.tv_nsec = int((monotonic - seconds) * 1e9)
        interval_seconds = int(interval)
        spec.it_interval.tv_sec = interval_seconds
        spec.it_interval.tv_nsec = int((interval - interval_seconds) * 1e9)
        self._settime()
        self.armed_at = trio_deadline
        self.interval = interval

    def disarm(self) -> None:
        """Stop firing (a periodic timer would otherwise wake its waiter for nothing)."""
        spec = self._spec
        spec.it_value.tv_sec = spec.it_value.tv_nsec = 0
        spec.it_interval.tv_sec = spec.it_interval.tv_nsec = 0
        self._settime()
        self.armed_at = None
        self.interval = 0.0

    def _settime(self) -> None:
        if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"timerfd_settime: {os.strerror(code)}")

    async def wait(self, now: float | None = None) -> None:
        """Return once the armed deadline (or the next periodic expiry) has passed.

        ``now``: trio's time, when the caller has just read it (else it is read here).
        """
        armed_at = self.armed_at
        if now is None:
            now = trio.current_time()
        if armed_at is not None and now < armed_at:
            # Not due yet: a read now would only fail (EAGAIN). Wait first, and spare the
            # frame clock a system call on every tick. With trio idle until then, the
            # wait skips its loop (idle_wait.py).
            if not self.idle.wait(armed_at):
                await trio.lowlevel.wait_readable(self.fd)
        while True:
            try:
                expiries = int.from_bytes(os.read(self.fd, 8), "little")
                # One-shot: nothing is armed any more. Periodic: the next expiry is
                # ``expiries`` intervals on (more than one when the reader was late).
                self.armed_at = self.armed_at + expiries * self.interval if self.interval else None
                return
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
            except OSError as error:  # pragma: no cover - EINTR is retried by Python itself
                if error.errno != errno.EINTR:
                    raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
