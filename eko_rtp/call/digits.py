"""The digits a caller presses, on their way from the media or SIP side to the script.

Made before the call's media stream (which delivers RFC 4733 digits into it) and
given to both the stream and the :class:`~eko_rtp.call.call.Call`, so neither needs
the other to exist first. Bounded: a script that does not read digits loses the
newest ones, counted and logged, and never blocks the receive path.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from eko_rtp.service.logs import call_context

log = logging.getLogger("eko_rtp.call")

CAPACITY = 32  # more than any number a script asks for


class DigitQueue:
    """A bounded queue of pressed keys; ``receive`` is the script's end.

    Its channel is opened by the first key or the first look at ``receive``, not with
    the call: most callers speak and never press one, and a call's set-up stands
    between its INVITE and its 200 OK.
    """

    # One per call, kept for its life: no instance dict (docs/BENCHMARKS.md, sixth session).
    __slots__ = ("call_id", "_on_digit", "dropped", "_capacity", "_closed", "_send", "_receive")

    def __init__(self, *, call_id: str, capacity: int = CAPACITY, on_digit: Callable[[], None] | None = None):
        """``on_digit`` hears every key as it is delivered (barge-in: a key stops a question)."""
        self.call_id = call_id
        self._on_digit = on_digit
        self._capacity = capacity
        self._closed = False
        self._send: trio.MemorySendChannel[str] | None = None
        self._receive: trio.MemoryReceiveChannel[str] | None = None
        self.dropped = 0

    @property
    def receive(self) -> trio.MemoryReceiveChannel[str]:
        """The script's end: the keys in the order they were pressed; it ends after :meth:`close`."""
        if self._receive is None:
            self._open()
        return self._receive

    def _open(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str](self._capacity)
        if self._closed:
            self._send.close()

    def deliver(self, digit: str) -> None:
        """A key was pressed (from the receive hub or a SIP INFO): never blocks."""
        if self._on_digit is not None:
            self._on_digit()
        if self._send is None:
            self._open()
        try:
            self._send.send_nowait(digit)
        except trio.WouldBlock:
            self.dropped += 1
            with call_context(self.call_id):  # RFC 4733 digits arrive on the receive hub's task, outside the call's
                log.warning("DTMF digit %r dropped (script is not reading digits)", digit)
        except trio.ClosedResourceError:
            pass  # the call has ended: a key pressed after the BYE is nobody's

    @property
    def pending(self) -> int:
        """Digits delivered and not read yet."""
        return 0 if self._receive is None else self._receive.statistics().current_buffer_used

    def close(self) -> None:
        """No more digits: the script's ``async for`` ends after those already queued."""
        self._closed = True
        if self._send is not None:
            self._send.close()
