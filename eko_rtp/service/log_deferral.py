"""Log lines written when the trio loop has nothing to run, not in the middle of a call's step.

Theory of operation. Writing one line costs the masking filters, the formatter and a
``write`` to stderr: tens of microseconds, many more when that code has left the CPU's
caches, as it has between two calls. A call's set-up logs a few lines between its
INVITE and its 200 OK; written there, they delay the answer (docs/BENCHMARKS.md,
sixteenth session). :class:`DeferringHandler` sits on the root logger in front of the
service's stream handler. While :meth:`DeferringHandler.hold_until_idle` runs in the
trio loop, an INFO or DEBUG record made on the loop's thread is stamped with what it
must take from the moment (the call's id, which lives in the task's context; its
message, formatted from its arguments as they are now; its time, as always) and held.
The holding task wakes when the loop has no task left to run, or after ``max_hold``
at the latest when it never idles, and hands the held records, in order, to the
stream handler.

What never waits: a WARNING or worse, a record carrying a traceback or a stack, a
record made on another thread, and any record while no loop holds them. Each first
writes whatever is held, so the lines stay in order. At most ``limit`` records are
held; the one that reaches it writes them all at once. ``flush`` (the logging module
calls it at exit) and the end of ``hold_until_idle`` write what is left, so a record
is lost only if the process is killed before the loop next idles.
"""

from __future__ import annotations

import logging
import threading

import trio
import trio.testing

HOLD_LIMIT = 1000  # records held at most; the one that reaches it writes them all
MAX_HOLD = 0.05  # s a held record waits at most, on a loop that never idles


class DeferringHandler(logging.Handler):
    """Hands records to ``target`` at once, or at the trio loop's next idle moment."""

    def __init__(self, target: logging.Handler, *, limit: int = HOLD_LIMIT, max_hold: float = MAX_HOLD):
        super().__init__()
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if max_hold <= 0:
            raise ValueError(f"max_hold must be positive, got {max_hold}")
        self.target = target
        self.limit = limit
        self.max_hold = max_hold
        self._held: list[logging.LogRecord] = []
        self._loop_thread: int | None = None  # set while hold_until_idle runs
        self._wake: trio.Event | None = None

    @property
    def held(self) -> int:
        """Records waiting for the loop's next idle moment."""
        return len(self._held)

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):  # this handler's filters run now: the call's id is in this task's context
            return False
        if (self._loop_thread is None or record.levelno >= logging.WARNING or record.exc_info
                or record.stack_info or threading.get_ident() != self._loop_thread):
            self.write_held()
            return self.target.handle(record)
        try:
            message = record.getMessage()  # its arguments as they are now, not at the write
        except Exception:
            self.write_held()
            return self.target.handle(record)  # whose Sanitizer writes it as an "unformattable" line
        record.msg, record.args = message, None
        with self.lock:
            held = self._held
            held.append(record)
            count = len(held)
        if count >= self.limit:
            self.write_held()
        elif count == 1 and self._wake is not None:
            self._wake.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:  # Handler's contract; handle() does not call it
        self.target.handle(record)

    def write_held(self) -> None:
        """Hand every held record to the target, in the order they were made."""
        with self.lock:
            held, self._held = self._held, []
        for record in held:
            self.target.handle(record)

    def flush(self) -> None:
        self.write_held()
        self.target.flush()

    def close(self) -> None:
        self.write_held()
        self.target.close()
        super().close()

    async def hold_until_idle(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold this loop's INFO and DEBUG records until it idles; write them then. Until cancelled."""
        if self._loop_thread is not None:
            raise RuntimeError("records are already held for a trio loop")
        self._wake = trio.Event()
        self._loop_thread = threading.get_ident()
        try:
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                with trio.move_on_after(self.max_hold):
                    await trio.testing.wait_all_tasks_blocked()
                self.write_held()
        finally:
            self._loop_thread = None
            self._wake = None
            self.write_held()


def installed() -> DeferringHandler | None:
    """The root logger's deferring handler, if :func:`~eko_rtp.service.logs.configure_logging` put one there."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, DeferringHandler):
            return handler
    return None


async def hold_logs_until_idle(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the installed handler's :meth:`~DeferringHandler.hold_until_idle`; return at once without one."""
    handler = installed()
    if handler is None:
        task_status.started()
        return
    await handler.hold_until_idle(task_status=task_status)
