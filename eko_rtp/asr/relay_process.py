"""The recognizer relay: the calls' Deepgram streams, in a process of their own.

Started by the server (eko_rtp/asr/relay_client.py) with ``asr.relay = true``:

    python -m eko_rtp.asr.relay_process --fd N [--cpus LIST]

It reads the media process's messages (eko_rtp/asr/relay_protocol.py) from the Unix
socket ``N`` it inherited, runs one :class:`~eko_rtp.asr.deepgram_client.DeepgramStream`
per OPEN, fed from a bounded channel (a stream that falls behind loses the oldest
audio, counted, never the media process's time), and writes back each stream's
events and its end. It pins itself to ``--cpus`` (away from the media core). When
the media process closes the socket (it exited or gave up on us) every stream is
cancelled and the relay exits; a message that breaks the protocol ends it too, with
one log line on stderr, which the server's journal keeps.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import trio

from eko_rtp.asr.deepgram_client import DeepgramStream
from eko_rtp.asr.errors import AsrError
from eko_rtp.asr.relay_protocol import (
    EVENT_TYPES,
    TO_RELAY,
    Audio,
    Close,
    End,
    Event,
    Open,
    RelayProtocolError,
    RelayReader,
    encode,
)

log = logging.getLogger("eko_rtp.asr.relay")

AUDIO_BATCHES_KEPT = 50  # per stream: 5 s of 100 ms batches waiting for a slow connection
READ_SIZE = 1 << 16
MAX_STREAMS = 10_000


class Relay:
    """The relay's state: the open streams and what waits to be written to the media process."""

    def __init__(self, connection: trio.abc.Stream, *, stream_factory=DeepgramStream):
        self._connection = connection
        self._stream_factory = stream_factory
        self._reader = RelayReader(TO_RELAY)
        self._streams: dict[int, trio.MemorySendChannel] = {}
        self._pending = bytearray()
        self._wake = trio.Event()
        self.audio_dropped = 0

    async def run(self) -> None:
        """Serve until the media process closes the connection (or breaks the protocol)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            try:
                while True:
                    data = await self._connection.receive_some(READ_SIZE)
                    if not data:
                        break  # the media process is gone: nobody to transcribe for
                    for message in self._reader.feed(data):
                        self._handle(message, nursery)
            except RelayProtocolError as error:
                log.error("recognizer relay: the media process broke the protocol: %s", error)
            except trio.BrokenResourceError:
                pass
            nursery.cancel_scope.cancel()

    def _handle(self, message, nursery: trio.Nursery) -> None:
        if isinstance(message, Audio):
            channel = self._streams.get(message.stream)
            if channel is None:
                return  # the stream ended (failed) already: its last audio has nowhere to go
            try:
                channel.send_nowait(message.audio)
            except trio.WouldBlock:
                self.audio_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._streams.pop(message.stream, None)
        elif isinstance(message, Open):
            if message.stream in self._streams or len(self._streams) >= MAX_STREAMS:
                raise RelayProtocolError(f"stream {message.stream} opened twice, or over {MAX_STREAMS} streams")
            send, receive = trio.open_memory_channel(AUDIO_BATCHES_KEPT)
            self._streams[message.stream] = send
            nursery.start_soon(self._run_stream, message, receive)
        elif isinstance(message, Close):
            channel = self._streams.pop(message.stream, None)
            if channel is not None:
                channel.close()  # the stream sends CloseStream and finishes

    async def _run_stream(self, message: Open, audio: trio.MemoryReceiveChannel) -> None:
        ident = message.stream

        def on_event(event) -> None:
            if type(event).__name__ in EVENT_TYPES:
                self._emit(Event(stream=ident, event=event))

        stream = self._stream_factory(settings=message.settings, api_key=message.api_key, on_event=on_event)
        error = None
        try:
            await stream.run(audio)
        except AsrError as failure:
            error = failure
        finally:
            channel = self._streams.pop(ident, None)
            if channel is not None:
                channel.close()
            self._emit(End(stream=ident, error=error, seconds_sent=stream.seconds_sent))

    def _emit(self, message) -> None:
        self._pending += encode(message)
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = bytes(self._pending)
            self._pending.clear()
            try:
                await self._connection.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees the end too


def _pin(cpus: str | None) -> None:
    if not cpus:
        return
    from eko_rtp.config import parse_cpu_list
    from eko_rtp.errors import UserError

    try:
        os.sched_setaffinity(0, set(parse_cpu_list(cpus, what="--cpus")))
    except (OSError, UserError) as error:
        log.warning("recognizer relay: cannot pin to CPUs %s: %s", cpus, error)


async def _serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    connection = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    try:
        await Relay(connection).run()
    finally:
        await connection.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eko_rtp.asr.relay_process", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the Unix socket inherited from the server")
    parser.add_argument("--cpus", help="CPUs to run on (a list like 1 or 2-3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    _pin(args.cpus)
    try:
        trio.run(_serve, args.fd)
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
