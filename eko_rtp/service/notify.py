"""sd_notify without libsystemd: tell systemd we are ready, busy, alive or stopping.

Theory of operation. systemd (Type=notify) hands the service the path of a datagram
socket in ``$NOTIFY_SOCKET``; each datagram is a newline-separated list of
``VARIABLE=value`` assignments (sd_notify(3)). A path starting with ``@`` names a
socket in the abstract namespace (the ``@`` becomes a NUL byte). With
``WatchdogSec=`` set, systemd also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process the watchdog is meant for); the service must send ``WATCHDOG=1`` more
often than that or be killed. sd_watchdog_enabled(3) recommends pinging at half
the interval.

The pure half of this module formats messages and reads the environment; the
shell (:class:`Notifier`) sends datagrams without ever blocking the event loop,
and :func:`run_watchdog` pings from a trio task, on purpose: the point of the
watchdog is to notice a stalled event loop, so the pings must stop when the loop
stops (a thread would keep pinging for a dead server).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Mapping

import attrs
import trio

logger = logging.getLogger(__name__)

# sd_notify(3) assignments are VARIABLE=value lines: a variable name never holds
# '=' or a newline, a value never holds a newline (it would start a new variable).
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


class NotifyError(Exception):
    """``$NOTIFY_SOCKET`` or ``$WATCHDOG_USEC`` cannot be used as given."""


def format_message(fields: Mapping[str, str]) -> bytes:
    """One notification datagram from ordered ``VARIABLE=value`` fields."""
    if not fields:
        raise ValueError("a notification needs at least one VARIABLE=value field")
    lines = []
    for name, value in fields.items():
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"notification variable {name!r} is not an upper-case name")
        if "\n" in value or "\0" in value:
            raise ValueError(f"notification value of {name} contains a newline or NUL: {value!r}")
        lines.append(f"{name}={value}")
    return "\n".join(lines).encode("utf-8")


def _flag(name: str, status: str | None) -> bytes:
    fields = {name: "1"}
    if status is not None:
        fields["STATUS"] = status
    return format_message(fields)


def ready(status: str | None = None) -> bytes:
    """``READY=1``: start-up finished (cache loaded, SIP bound), with an optional status."""
    return _flag("READY", status)


def status(text: str) -> bytes:
    """``STATUS=...``: one line shown by ``systemctl status``."""
    return format_message({"STATUS": text})


def watchdog() -> bytes:
    """``WATCHDOG=1``: the keep-alive ping."""
    return format_message({"WATCHDOG": "1"})


def reloading(monotonic_usec: int) -> bytes:
    """``RELOADING=1``: a reload started; send :func:`ready` when it is done.

    ``MONOTONIC_USEC`` is CLOCK_MONOTONIC in microseconds when the reload began
    (systemd 253+ uses it to match the reload request; older versions ignore it).
    """
    if monotonic_usec < 0:
        raise ValueError(f"MONOTONIC_USEC must not be negative, got {monotonic_usec}")
    return format_message({"RELOADING": "1", "MONOTONIC_USEC": str(monotonic_usec)})


def stopping(status: str | None = None) -> bytes:
    """``STOPPING=1``: shutdown (drain) began, with an optional status."""
    return _flag("STOPPING", status)


def extend_timeout(usec: int) -> bytes:
    """``EXTEND_TIMEOUT_USEC=...``: ask for this much more time to start, reload or stop."""
    if usec <= 0:
        raise ValueError(f"EXTEND_TIMEOUT_USEC must be positive, got {usec}")
    return format_message({"EXTEND_TIMEOUT_USEC": str(usec)})


def socket_address(notify_socket: str) -> str | bytes:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value (path or ``@abstract``)."""
    if notify_socket.startswith("/"):
        return notify_socket
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        # The abstract namespace: a leading NUL instead of the '@' (unix(7)).
        return b"\0" + notify_socket[1:].encode("utf-8")
    raise NotifyError(
        f"NOTIFY_SOCKET={notify_socket!r} is neither an absolute path nor an @abstract name"
    )


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds, or None when no watchdog is asked of ``pid``."""
    value = environ.get("WATCHDOG_USEC")
    if not value:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    # sd_watchdog_enabled(3): a WATCHDOG_PID naming another process means the
    # variables were inherited and are not for us.
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    try:
        usec = int(value)
    except ValueError:
        raise NotifyError(f"WATCHDOG_USEC={value!r} is not an integer") from None
    if usec <= 0:
        raise NotifyError(f"WATCHDOG_USEC={value!r} must be positive")
    return usec / 1_000_000


@attrs.define
class Notifier:
    """Sends notification datagrams to ``$NOTIFY_SOCKET``; a no-op when there is none.

    Sending never blocks: if systemd's queue is full the datagram is dropped and
    counted (the next status or ping supersedes it). Failures are logged, never
    raised into the server.
    """

    address: str | bytes | None
    watchdog_seconds: float | None = None
    dropped: int = 0
    _socket: socket.socket | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        notify_socket = environ.get("NOTIFY_SOCKET")
        address = socket_address(notify_socket) if notify_socket else None
        return cls(address=address, watchdog_seconds=watchdog_interval(environ, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: bytes) -> bool:
        """Send one datagram; True if it was handed to the kernel."""
        if self.address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        try:
            self._socket.sendto(message, self.address)
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError as error:
            self.dropped += 1
            logger.warning("sd_notify to %r failed: %s", self.address, error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(ready(status))

    def status(self, text: str) -> bool:
        return self.send(status(text))

    def watchdog(self) -> bool:
        return self.send(watchdog())

    def reloading(self) -> bool:
        return self.send(reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))

    def stopping(self, status: str | None = None) -> bool:
        return self.send(stopping(status))

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(extend_timeout(math.ceil(seconds * 1_000_000)))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def run_watchdog(notifier: Notifier, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Ping ``WATCHDOG=1`` at half the watchdog interval, from the event loop.

    Returns at once (after ``started``) when no watchdog is configured. The
    schedule is absolute (``start + n * period``); after a stall the missed pings
    are not replayed in a burst: the next one goes out as soon as the loop runs
    again and the schedule restarts from there.
    """
    if notifier.watchdog_seconds is None or not notifier.enabled:
        task_status.started()
        return
    period = notifier.watchdog_seconds / 2
    start = trio.current_time()
    beat = 0
    task_status.started()
    while True:
        notifier.watchdog()
        beat += 1
        deadline = start + beat * period
        now = trio.current_time()
        if deadline <= now:
            # The loop was blocked past the next beat: restart the schedule from
            # the ping just sent rather than sending the missed ones back to back.
            start, beat = now, 1
            deadline = start + period
        await trio.sleep_until(deadline)
