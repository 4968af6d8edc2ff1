"""The bench's helper processes (the RTP media process, the fake ASR endpoint): their last words.

Each helper runs in a ``multiprocessing`` child and answers one final message on its
pipe with ``(kind, payload)``. Stopping one is the same for all: send the message, wait
a bounded time for the answer, kill the child if it says nothing, and tell apart a
child that answered, one that died, and one that hung.
"""

from __future__ import annotations

STOP_TIMEOUT = 30.0  # s a helper has to answer its stop message


def last_words(connection, process, message, *, what: str, timeout: float = STOP_TIMEOUT) -> tuple[str, object]:
    """Send ``message`` to the child and return its ``(kind, payload)`` answer; RuntimeError
    naming ``what`` when it hangs (it is then killed) or dies without answering."""
    try:
        connection.send(message)
    except OSError:
        pass  # the child is gone; what it said (if anything) is read below
    if not connection.poll(timeout):
        process.kill()
        raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
    try:
        kind, payload = connection.recv()
    except EOFError:
        raise RuntimeError(f"{what} died (exit status {process.exitcode})") from None
    process.join(timeout=timeout)
    return kind, payload
