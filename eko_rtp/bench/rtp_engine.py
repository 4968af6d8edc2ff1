"""The bench's media side: one thread, one epoll, every call's RTP in and out.

Theory of operation: at 1000 full-duplex calls the bench must send and receive
50 000 packets a second each way, which a coroutine per call cannot do in Python.
So media is a tight loop in a dedicated thread over ``select.epoll`` and
non-blocking UDP sockets (one per call, as a trunk's media gateway has). The SIP
side (trio) only hands it commands through a deque: open a socket, start sending
to an address, stop.

Sending: each call's caller-side RTP frame n is due at ``t0 + n·20 ms``. Calls are
put in one of 20 one-millisecond slots by their start time, and the loop wakes on
a 1 ms grid and sends for the slot that is due, so the cost is per packet, not per
call per tick. Each call owns one preallocated 172-byte packet; a send rewrites
its 12-byte header in place (RFC 3550 §5.1) and copies the next 160-byte frame.
How late each slot was served is recorded: that is how the report knows when the
bench itself is saturated.

Receiving: sockets have ``SO_TIMESTAMPNS``, so each packet's arrival is the
kernel's receive time (CLOCK_REALTIME, ns) from ``recvmsg`` ancillary data, not the
time Python got round to it. Where the kernel gives none, ``time.time_ns()`` is
used and counted as a fallback. Per packet the call records arrival, sequence
number and RTP timestamp into ``array`` buffers; statistics come afterwards.
"""

from __future__ import annotations

import array
import collections
import secrets
import select
import socket
import struct
import sys
import threading
import time

from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE, ULAW_TO_ALAW

FRAME_BYTES = 160  # 20 ms of 8 kHz G.711 (RFC 3551 §4.5.14)
FRAME_NS = 20_000_000
_TICK_NS = 1_000_000
_SLOTS = FRAME_NS // _TICK_NS
_HEADER = struct.Struct("!BBHII")  # V=2,P,X,CC | M,PT | sequence | timestamp | SSRC
_SEQUENCE_AND_STAMP = struct.Struct("!HI")
_TIMESPEC = struct.Struct("@qq")
# linux/include/uapi/asm-generic/socket.h; Python's socket module does not export it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_RECEIVE_SIZE = 2048
_SILENCE_BYTES = {0: bytes((ULAW_SILENCE, 0x7F)), 8: bytes((ALAW_SILENCE, 0x55))}


class CallMedia:
    """One call's RTP socket, its outgoing stream and what it received."""

    def __init__(self, host: str):
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_timestamps = True
        except OSError:
            self.kernel_timestamps = False
        self.socket.bind((host, 0))
        self.port: int = self.socket.getsockname()[1]
        self.remote: tuple | None = None
        self.due_ns = 0
        self.payload_type = 0
        self.packet = bytearray(12 + FRAME_BYTES)
        self.frame_index = 0
        self.sequence = secrets.randbelow(1 << 16)
        self.timestamp = secrets.randbelow(1 << 32)
        self.ssrc = secrets.randbits(32)
        self.sent = 0
        self.send_errors = 0
        self.arrivals = array.array("q")
        self.sequences = array.array("H")
        self.timestamps = array.array("L")
        self.first_packet_ns: int | None = None
        self.first_sound_ns: int | None = None
        self.malformed = 0
        self.fallback_clock = 0
        self.closed = False


class RtpEngine:
    """The media thread. ``open_call`` / ``start_sending`` / ``stop`` are safe from any thread."""

    def __init__(self, *, host: str, caller_audio: bytes):
        if len(caller_audio) < FRAME_BYTES:
            raise ValueError(f"caller audio has {len(caller_audio)} bytes, less than one {FRAME_BYTES}-byte frame")
        usable = len(caller_audio) - len(caller_audio) % FRAME_BYTES
        self._host = host
        self._audio = {0: bytes(caller_audio[:usable]), 8: bytes(caller_audio[:usable]).translate(ULAW_TO_ALAW)}
        self._frames = usable // FRAME_BYTES
        self._commands: collections.deque = collections.deque()
        self._by_fd: dict[int, CallMedia] = {}
        self._slots: list[list[CallMedia]] = [[] for _ in range(_SLOTS)]
        self._epoll = select.epoll()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="eko-bench-rtp", daemon=True)
        self.lateness_ns = array.array("q")  # per served slot: now - due
        self.busy_seconds = 0.0
        self.wall_seconds = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def open_call(self) -> CallMedia:
        """A bound socket for a new call; it records whatever arrives from now on."""
        media = CallMedia(self._host)
        self._by_fd[media.socket.fileno()] = media
        self._epoll.register(media.socket.fileno(), select.EPOLLIN)
        return media

    def start_sending(self, media: CallMedia, remote: tuple, payload_type: int) -> None:
        """Begin caller-side RTP to ``remote`` in ``payload_type`` (0 PCMU, 8 PCMA)."""
        self._commands.append(("send", media, remote, payload_type))

    def stop(self, media: CallMedia) -> None:
        """Stop sending and receiving for the call and close its socket."""
        self._commands.append(("stop", media, None, None))

    def close(self) -> None:
        """Stop the thread (calls still open are stopped) and wait for it."""
        self._running = False
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for media in list(self._by_fd.values()):
            self._close_media(media)
        self._epoll.close()
        if self.error is not None:
            raise RuntimeError(f"RTP engine thread failed: {self.error!r}") from self.error

    def _close_media(self, media: CallMedia) -> None:
        if media.closed:
            return
        media.closed = True
        fd = media.socket.fileno()
        self._by_fd.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        media.socket.close()

    def _apply(self, command, now_ns: int) -> None:
        kind, media, remote, payload_type = command
        if kind == "send":
            if media.closed:
                return
            media.remote = remote
            media.payload_type = payload_type
            _HEADER.pack_into(media.packet, 0, 0x80, 0x80 | payload_type, media.sequence, media.timestamp, media.ssrc)
            media.due_ns = now_ns - now_ns % _TICK_NS + _TICK_NS
            self._slots[(media.due_ns // _TICK_NS) % _SLOTS].append(media)
        else:
            if media.remote is not None:
                slot = self._slots[(media.due_ns // _TICK_NS) % _SLOTS]
                if media in slot:
                    slot.remove(media)
            self._close_media(media)

    def _send_slot(self, slot: list[CallMedia]) -> None:
        audio_by_type = self._audio
        frames = self._frames
        for media in slot:
            offset = (media.frame_index % frames) * FRAME_BYTES
            packet = media.packet
            packet[12:] = audio_by_type[media.payload_type][offset:offset + FRAME_BYTES]
            try:
                media.socket.sendto(packet, media.remote)
                media.sent += 1
            except OSError:
                media.send_errors += 1
            media.frame_index += 1
            media.sequence = (media.sequence + 1) & 0xFFFF
            media.timestamp = (media.timestamp + FRAME_BYTES) & 0xFFFFFFFF
            # RFC 3551 §4.1: the marker goes on the first packet of a talkspurt only.
            packet[1] = media.payload_type
            _SEQUENCE_AND_STAMP.pack_into(packet, 2, media.sequence, media.timestamp)
            media.due_ns += FRAME_NS

    def _receive(self, media: CallMedia, buffer: bytearray, view: memoryview) -> None:
        receive = media.socket.recvmsg_into
        buffers = [buffer]
        while True:
            try:
                size, ancillary, _flags, _source = receive(buffers, _ANCILLARY_SIZE)
            except BlockingIOError:
                return
            except OSError:
                return
            if ancillary:
                seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
                arrival = seconds * 1_000_000_000 + nanoseconds
            else:
                arrival = time.time_ns()
                media.fallback_clock += 1
            if size < 12 or buffer[0] >> 6 != 2:
                media.malformed += 1
                continue
            sequence, stamp = _SEQUENCE_AND_STAMP.unpack_from(buffer, 2)
            media.arrivals.append(arrival)
            media.sequences.append(sequence)
            media.timestamps.append(stamp)
            if media.first_sound_ns is None:
                if media.first_packet_ns is None:
                    media.first_packet_ns = arrival
                # RFC 3550 §5.1: payload follows 12 bytes plus 4 per CSRC (extensions: not from our peers).
                start = 12 + 4 * (buffer[0] & 0x0F)
                silence = _SILENCE_BYTES.get(buffer[1] & 0x7F, _SILENCE_BYTES[0])
                if view[start:size].tobytes().strip(silence):
                    media.first_sound_ns = arrival

    def _run(self) -> None:
        started_cpu = time.thread_time()
        started_wall = time.monotonic()
        buffer = bytearray(_RECEIVE_SIZE)
        view = memoryview(buffer)
        commands = self._commands
        slots = self._slots
        lateness = self.lateness_ns
        by_fd = self._by_fd
        poll = self._epoll.poll
        next_tick = time.monotonic_ns()
        next_tick -= next_tick % _TICK_NS
        try:
            while self._running:
                now = time.monotonic_ns()
                while commands:
                    self._apply(commands.popleft(), now)
                while next_tick <= now:
                    slot = slots[(next_tick // _TICK_NS) % _SLOTS]
                    if slot:
                        lateness.append(now - next_tick)
                        self._send_slot(slot)
                    next_tick += _TICK_NS
                    now = time.monotonic_ns()
                timeout = max(0.0, (next_tick - time.monotonic_ns()) / 1e9)
                for fd, _events in poll(timeout):
                    media = by_fd.get(fd)
                    if media is not None:
                        self._receive(media, buffer, view)
        except BaseException as error:  # reported to the SIP side by close()
            self.error = error
            print(f"eko-bench: RTP engine stopped: {error!r}", file=sys.stderr)
        finally:
            self.busy_seconds = time.thread_time() - started_cpu
            self.wall_seconds = time.monotonic() - started_wall


def open_wav_as_ulaw(path: str) -> bytes:
    """Read a WAV (8 kHz, mono, 16-bit PCM) as µ-law caller audio."""
    import wave

    from eko_rtp.codec.g711 import linear16_to_ulaw
    from eko_rtp.errors import UserError

    try:
        with wave.open(path, "rb") as reader:
            shape = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
            if shape != (8000, 1, 2):
                raise UserError(
                    f"WAV is {shape[0]} Hz, {shape[1]} channel(s), {8 * shape[2]}-bit; the bench sends 8000 Hz mono 16-bit"
                    f" (convert with: sox IN.wav -r 8000 -c 1 -b 16 OUT.wav)", path=path)
            pcm = reader.readframes(reader.getnframes())
    except (OSError, wave.Error, EOFError) as error:
        raise UserError(f"cannot read WAV: {error}", path=path) from None
    if sys.byteorder != "little":
        swapped = array.array("h", pcm)
        swapped.byteswap()
        pcm = swapped.tobytes()
    ulaw = linear16_to_ulaw(pcm)
    if len(ulaw) < FRAME_BYTES:
        raise UserError(f"WAV has {len(ulaw)} samples, less than one 20 ms frame", path=path)
    return ulaw


SILENCE = bytes([ULAW_SILENCE]) * FRAME_BYTES
