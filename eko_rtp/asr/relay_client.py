"""The media process's end of the recognizer relay (``asr.relay = true``).

Theory of operation: a recognizer stream in the media process costs the media core
a websocket frame, a mask, a TCP send and a task switch for every 100 ms of a
caller's audio, and JSON for every reply: at a few hundred recognizing calls that is
the core's headroom for pacing. :class:`AsrRelay` keeps one child process
(eko_rtp/asr/relay_process.py, pinned to other CPUs) that runs those streams; here a
call's :class:`RelayStream` only appends its audio batches to one buffer, written to
the relay by one task at most every ``WRITE_INTERVAL`` (each write wakes the relay on
its CPU, so one write carries every batch queued meanwhile rather than one), and
reads back the stream's events and end
(eko_rtp/asr/relay_protocol.py). A :class:`RelayStream` is what
:class:`~eko_rtp.call.speech.CallSpeech` runs in place of a
:class:`~eko_rtp.asr.deepgram_client.DeepgramStream`: same ``run(audio)``, same
events, same typed failures.

Failures stay the call's own: a relay that is not up (starting, or restarting after
it died) fails new streams at once with :class:`AsrUnavailable`; a relay that dies
or breaks the protocol fails every open stream with :class:`AsrDropped`, and the
calls go on with DTMF as with any recognizer failure. The relay is started again
after ``restart_delay`` (doubling up to a minute while it keeps dying). Audio waiting
for the relay is bounded (``max_pending``): beyond it batches are dropped and counted.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from typing import Callable

import attrs
import trio

from eko_rtp.asr.deepgram_api import AsrSettings, audio_seconds
from eko_rtp.asr.errors import AsrDropped, AsrError, AsrUnavailable
from eko_rtp.asr.relay_protocol import (
    FROM_RELAY,
    Close,
    End,
    Event,
    Open,
    RelayProtocolError,
    RelayReader,
    encode,
    encode_audio,
)
from eko_rtp.config import parse_cpu_list
from eko_rtp.errors import UserError

log = logging.getLogger("eko_rtp.asr.relay")

READ_SIZE = 1 << 16
MAX_PENDING = 4 << 20  # octets waiting for the relay: 40 s of audio of 100 calls
CLOSE_WAIT = 3.0  # s for the relay to finish a stream after the call's last audio
MAX_RESTART_DELAY = 60.0
WRITE_INTERVAL = 0.010  # s at least between two writes to the relay (audio, opens, closes)


def relay_cpus(configured: str) -> str | None:
    """The CPUs for the relay: ``configured`` (``asr.relay_cpus``), else the machine's CPUs
    the server is not pinned to (none left: wherever the kernel likes)."""
    if configured:
        return configured
    ours = os.sched_getaffinity(0)
    others = sorted(set(range(os.cpu_count() or 1)) - ours)
    return ",".join(map(str, others)) if others else None


class RelayStream:
    """One call's recognizer stream, run by the relay: :meth:`run` once, like a DeepgramStream."""

    def __init__(self, relay: "AsrRelay", *, settings: AsrSettings, api_key: str,
                 on_event: Callable[[object], None]):
        self._relay = relay
        self.settings = settings
        self._api_key = api_key
        self._on_event = on_event
        self._bytes_sent = 0
        self._ended = trio.Event()
        self._error: AsrError | None = None
        self._scope = trio.CancelScope()
        self._relay_seconds: float | None = None  # what the relay says it streamed, at the end

    def __repr__(self) -> str:  # never the key
        return f"<RelayStream {self.settings.base_url} {self._bytes_sent} bytes sent>"

    @property
    def seconds_sent(self) -> float:
        """Audio streamed to the provider: the relay's own count once it ended the stream
        (what it sent, not what we queued: a batch it dropped is not billed), else ours."""
        if self._relay_seconds is not None:
            return self._relay_seconds
        return audio_seconds(self._bytes_sent)

    async def run(self, audio) -> None:
        """Hand ``audio`` (the call's :class:`~eko_rtp.call.ears.AsrAudio`) to the relay until it
        ends, then let the relay finish; AsrError on failure.

        The batches are diverted: the ears queue each for the relay from the receive
        hub's step (:class:`_RelaySink`), and this task only waits for the end.
        """
        relay = self._relay
        ident = relay.open(self, self.settings, self._api_key)  # AsrUnavailable when the relay is not up
        try:
            with self._scope:  # cancelled by the stream's end the relay reports
                sink = _RelaySink(self, ident)
                audio.divert(sink)
                await sink.ended.wait()
                relay.close(ident)  # the relay sends CloseStream and waits for the last results
                with trio.move_on_after(CLOSE_WAIT):
                    await self._ended.wait()
        finally:
            if not self._ended.is_set():
                relay.close(ident)  # cancelled (the call ended) or timed out: the relay finishes it
                relay.forget(ident)
        if self._error is not None:
            raise self._error

    def forward(self, ident: int, batch: bytes) -> bool:
        """Queue one of the call's batches for the relay; False when it was dropped (the
        relay is down or too far behind: counted there too)."""
        if not self._relay.send_audio(ident, batch):
            return False
        self._bytes_sent += len(batch)
        return True

    def event(self, event) -> None:
        self._on_event(event)

    def end(self, error: AsrError | None, seconds_sent: float | None = None) -> None:
        """The relay's stream ended: failed, or closed by the provider mid-call, or after our close.
        Whichever, ``run`` stops waiting for audio and returns (raising ``error`` if any), as a
        DeepgramStream in this process does when its connection ends. ``seconds_sent`` is the
        audio the relay streamed to the provider (None: unknown, the relay process died)."""
        self._error = error
        self._relay_seconds = seconds_sent
        self._ended.set()
        self._scope.cancel()


class _RelaySink:
    """A call's recognizer batches, queued for the relay as the ears make them."""

    __slots__ = ("_stream", "_ident", "ended")

    def __init__(self, stream: RelayStream, ident: int):
        self._stream = stream
        self._ident = ident
        self.ended = trio.Event()

    def send_nowait(self, batch: bytes) -> None:
        if not self._stream.forward(self._ident, batch):
            raise trio.WouldBlock  # dropped: the ears count it

    def close(self) -> None:
        self.ended.set()


class AsrRelay:
    """The relay process, kept running, and the streams it carries for this process's calls."""

    def __init__(self, *, cpus: str | None = None, restart_delay: float = 1.0,
                 command: tuple[str, ...] | None = None):
        self._cpus = cpus
        self._restart_delay = restart_delay
        self._command = command or (sys.executable, "-m", "eko_rtp.asr.relay_process")
        self._streams: dict[int, RelayStream] = {}
        self._ids = itertools.count(1)
        self._pending = bytearray()
        self._wake = trio.Event()
        self.up = False
        self.starts = 0
        self.audio_dropped = 0  # batches not sent: the relay was not up or too far behind

    # -- what a call's stream uses ---------------------------------------------------------

    def stream(self, *, settings: AsrSettings, api_key: str, on_event: Callable[[object], None]) -> RelayStream:
        """A stream for one call: :class:`~eko_rtp.call.speech.CallSpeech`'s ``stream_factory``."""
        return RelayStream(self, settings=settings, api_key=api_key, on_event=on_event)

    def open(self, stream: RelayStream, settings: AsrSettings, api_key: str) -> int:
        if not self.up:
            raise AsrUnavailable("the recognizer relay is not running (starting, or restarting after a failure)")
        ident = next(self._ids)
        self._streams[ident] = stream
        self._queue(encode(Open(stream=ident, settings=settings, api_key=api_key)))
        return ident

    def send_audio(self, ident: int, batch: bytes) -> bool:
        """Queue a batch for the relay; False when it was dropped (counted)."""
        if not self.up or len(self._pending) > MAX_PENDING:
            self.audio_dropped += 1
            return False
        self._queue(encode_audio(ident, batch))
        return True

    def close(self, ident: int) -> None:
        if self.up and ident in self._streams:
            self._queue(encode(Close(stream=ident)))

    def forget(self, ident: int) -> None:
        self._streams.pop(ident, None)

    def _queue(self, data: bytes) -> None:
        self._pending += data
        self._wake.set()

    # -- the process -----------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep a relay process running until cancelled; ``started()`` once the first one is up.

        A relay that dies is started again after ``restart_delay``, doubled for each
        death that follows a short life (up to a minute), and back to ``restart_delay``
        once one has lived longer than that minute.
        """
        delay = self._restart_delay
        started = False
        while True:
            process = await self._start()
            if not started:
                task_status.started()
                started = True
            born = trio.current_time()
            if process is not None:
                try:
                    reason = await self._serve(process.connection)
                finally:  # the server stopping too: the relay is reaped, not left behind
                    status = await self._stop(process.process)
                log.warning("recognizer relay ended: %s, %s; calls in progress go on with DTMF, another starts"
                            " in %g s", reason, _exit_status(status), delay)
            if trio.current_time() - born > MAX_RESTART_DELAY:
                delay = self._restart_delay
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _start(self) -> "_Started | None":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [*self._command, "--fd", str(theirs.fileno())]
        if self._cpus:
            command += ["--cpus", self._cpus]
        try:
            process = await trio.lowlevel.open_process(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as error:
            ours.close()
            log.error("cannot start the recognizer relay (%s): %s", " ".join(command), error)
            return None
        finally:
            theirs.close()
        if self._cpus:
            # At once, from here: the relay pins itself too, but only once its imports are done.
            try:
                os.sched_setaffinity(process.pid, parse_cpu_list(self._cpus, what="asr.relay_cpus"))
            except (OSError, UserError) as error:
                log.warning("cannot pin the recognizer relay to CPUs %s: %s", self._cpus, error)
        self.starts += 1
        log.info("recognizer relay started (pid %d%s)", process.pid, f", CPUs {self._cpus}" if self._cpus else "")
        ours.setblocking(False)
        return _Started(process=process, connection=trio.SocketStream(trio.socket.from_stdlib_socket(ours)))

    async def _serve(self, connection: trio.SocketStream) -> str:
        """Talk to one relay process until it goes; why it went."""
        self.up = True
        reason = "it closed its end"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, connection, nursery.cancel_scope)
                reader = RelayReader(FROM_RELAY)
                try:
                    while True:
                        data = await connection.receive_some(READ_SIZE)
                        if not data:
                            break
                        for message in reader.feed(data):
                            self._deliver(message)
                except RelayProtocolError as error:
                    reason = f"it broke the protocol ({error})"
                except trio.BrokenResourceError as error:
                    reason = f"its connection broke ({error})"
                nursery.cancel_scope.cancel()
        finally:
            self.up = False
            self._pending.clear()
            streams, self._streams = self._streams, {}
            for stream in streams.values():
                stream.end(AsrDropped("the recognizer relay process ended mid-call"))
            with trio.CancelScope(shield=True):
                await connection.aclose()
        return reason

    def _deliver(self, message) -> None:
        if isinstance(message, Event):
            stream = self._streams.get(message.stream)
            if stream is not None:
                try:
                    stream.event(message.event)
                except Exception:
                    log.exception("a call's speech handler failed")
        elif isinstance(message, End):
            stream = self._streams.pop(message.stream, None)
            if stream is not None:
                stream.end(message.error, message.seconds_sent)

    async def _write(self, connection: trio.SocketStream, scope: trio.CancelScope) -> None:
        last_write = -math.inf
        while True:
            await self._wake.wait()
            await trio.sleep_until(last_write + WRITE_INTERVAL)  # what comes meanwhile goes in the same write
            last_write = trio.current_time()
            self._wake = trio.Event()
            data = bytes(self._pending)
            self._pending.clear()
            try:
                await connection.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()
                return

    async def _stop(self, process: trio.Process) -> int:
        """Wait for the relay to go (it does once its socket closed), killing it after 2 s."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2.0):
                return await process.wait()
            process.kill()
            return await process.wait()


@attrs.frozen
class _Started:
    process: trio.Process
    connection: trio.SocketStream


def _exit_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
