"""The bench's media side: one process, one epoll, every call's RTP in and out.

Theory of operation: at 1000 full-duplex calls the bench must send and receive
50 000 packets a second each way, which a coroutine per call cannot do in Python.
So media is a tight loop over ``select.epoll`` and non-blocking UDP sockets (one
RTP/RTCP pair per call, as a trunk's media gateway has), in a *child process*: a
thread would share the GIL with the SIP side, and every time the loop released it
for a system call the trio thread could hold it for the whole switch interval
(5 ms), which showed as 20 ms send lateness at 1000 calls with the CPU half idle.
The SIP side (trio, in the parent) binds each call's sockets, so it knows the port
for its SDP offer at once, and passes them to the child (SCM_RIGHTS) with commands
over a pipe: open, start sending to an address, stop. At the end the child sends
back what each call recorded.

Sending: each call's caller-side RTP frame n is due at ``t0 + n·20 ms``. Calls are
put in one of 20 one-millisecond slots by their start time, and the loop wakes on
a 1 ms grid and sends for the slot that is due, so the cost is per packet, not per
call per tick. Each call owns one preallocated 172-byte packet; a send rewrites
its 12-byte header in place (RFC 3550 §5.1) and copies the next 160-byte frame.
How late each slot was served is recorded: that is how the report knows when the
bench itself is saturated.

A caller that talks (``CallerTalk``, the listening scenario) starts at a random
phase (0 to 19 ms after the 200 OK: it has no reason to be in step with the
server's frames, and the barge-in latency depends on that phase), first sends
``lead_in_frames`` of silence, then its audio looped; the audio buffer holds the
lead-in before the loop, so a call's position steps through both and wraps to the
loop's start. When the frame just sent starts a talkspurt, its send time
(``time.time_ns()``, CLOCK_REALTIME like the arrival stamps) is recorded: a few
clock reads a call per loop, nothing per ordinary packet but a byte-table look-up.

With ``event_payload_type`` a call also sends an RFC 4733 event packet right after
each audio packet, in the same sequence space (100 packets a second, as a phone
does while a key is held): event 16 (flash: within the 0-16 the offer announces, and no DTMF key, so the
server's script sees no digit), a new event every second, its duration growing by
a frame per packet. That is the load a keying caller puts on the receive path.

Receiving: sockets have ``SO_TIMESTAMPNS``, so each packet's arrival is the
kernel's receive time (CLOCK_REALTIME, ns) from ``recvmsg`` ancillary data, not the
time Python got round to it. Where the kernel gives none, ``time.time_ns()`` is
used and counted as a fallback. Per packet the call records arrival, sequence
number, RTP timestamp and SSRC into ``array`` buffers; statistics come afterwards.
With ``classify_sound`` (the listening scenario) it also records whether each
payload was sound (any byte not the codec's zero codes) or silence, one byte a packet.

SRTP (``--srtp``): a call started with :class:`SrtpKeys` gets a ``CallSrtp``
(``eko_rtp.media.srtp``, libsrtp) in the media process. Each packet it sends is
protected on its way out of the preallocated packet (audio and event packets alike),
and each it receives is authenticated and decrypted *before* anything is recorded,
so the figures keep their clear-RTP definitions: the arrival stamp is the same
kernel stamp, and a packet that fails authentication or replay is not recorded
(it counts as lost, as the caller would not hear it) and is counted in
``srtp_dropped``. RTCP is counted, not read, so SRTCP is not unprotected. The
libsrtp work is the bench's own CPU, in the media process's figure.
"""

from __future__ import annotations

import array
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import os
import secrets
import select
import socket
import struct
import sys
import time

import attrs

from eko_bench.children import STOP_TIMEOUT, last_words
from eko_bench.caller_speech import CallerTalk
from eko_rtp.codec.g711 import ALAW_SILENCE, ULAW_SILENCE, ULAW_TO_ALAW
from eko_rtp.errors import UserError
from eko_rtp.media.mmsg import socket_address
from eko_rtp.media.sdes import SrtpKeys
from eko_rtp.media.srtp import CallSrtp

FRAME_BYTES = 160  # 20 ms of 8 kHz G.711 (RFC 3551 §4.5.14)
FRAME_NS = 20_000_000
_TICK_NS = 1_000_000
_SLOTS = FRAME_NS // _TICK_NS
_HEADER = struct.Struct("!BBHII")  # V=2,P,X,CC | M,PT | sequence | timestamp | SSRC
_SEQUENCE_AND_STAMP = struct.Struct("!HI")
_SEQUENCE_STAMP_SOURCE = struct.Struct("!HII")
_EVENT_PACKET = struct.Struct("!BBHIIBBH")  # RTP header, then RFC 4733 §2.3: event | E R volume | duration
_EVENT_CODE = 16  # RFC 4733 table 3: flash, within the offered 0-16 and not a DTMF key
_EVENT_FRAMES = 50  # packets per event: a new one every second
_TIMESPEC = struct.Struct("@qq")
# linux/include/uapi/asm-generic/socket.h; Python's socket module does not export it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_RECEIVE_SIZE = 2048
_SILENCE_BYTES = {0: bytes((ULAW_SILENCE, 0x7F)), 8: bytes((ALAW_SILENCE, 0x55))}
_STOP_TIMEOUT = STOP_TIMEOUT


def _udp_socket(host: str, port: int) -> socket.socket:
    made = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        made.setblocking(False)
        made.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        made.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        made.bind((host, port))
    except OSError:
        made.close()
        raise
    return made


class PythonMediaCore:
    """What the per-packet paths read and write of one call: the base of
    :class:`CallMedia`. ``MediaCore`` is this or its compiled twin (eko_bench/_engine.c),
    whose ``send_slot`` and ``receive`` do :meth:`MediaLoop._send_one` and
    :meth:`MediaLoop._receive` for calls without SRTP or events."""

    __slots__ = ("packet", "remote_name", "srtp", "event_payload_type", "arrivals", "sequences", "timestamps",
                 "sources", "onsets_ns", "sound", "first_packet_ns", "first_sound_ns", "due_ns", "sent",
                 "send_errors", "malformed", "fallback_clock", "rtcp_received", "position", "fd", "payload_type",
                 "sequence", "timestamp")


# The compiled twin (eko_bench/_engine.c) when it was built, else the Python paths;
# EKO_RTP_PURE_PYTHON=1 takes those (to compare). tests/test_bench_engine.py runs both.
MediaCore: type = PythonMediaCore
_engine = None
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_bench import _engine
    except ImportError:
        pass
    else:
        MediaCore = _engine.MediaCore


class CallMedia(MediaCore):
    """One call's RTP and RTCP sockets, its outgoing stream and what it received.

    RFC 3550 §11: RTP goes to an even port and RTCP to the next one. The far end
    sends its RTCP to our port + 1 (the offer has no a=rtcp-mux), so that port is
    ours too; were it another call's RTP socket, that call would read RTCP as RTP.
    """

    __slots__ = ("socket", "control", "remote", "event_packet", "event_timestamp", "event_frames", "ssrc",
                 "srtp_dropped", "closed")

    def __init__(self, rtp: socket.socket, rtcp: socket.socket):
        self.socket = rtp
        self.fd = rtp.fileno()
        self.control = rtcp
        self.rtcp_received = 0
        self.remote: tuple | None = None
        self.remote_name: bytes | None = None  # the same as a socket address (mmsg.socket_address)
        self.due_ns = 0
        self.payload_type = 0
        self.event_payload_type: int | None = None
        self.event_packet = bytearray(_EVENT_PACKET.size)
        self.event_timestamp = 0
        self.event_frames = 0
        self.packet = bytearray(12 + FRAME_BYTES)
        self.position = 0  # the next frame of the audio buffer (lead-in, then the loop)
        self.onsets_ns = array.array("q")  # send times of talkspurt onsets (CallerTalk)
        self.sound = array.array("B")  # per recorded packet: 1 sound, 0 silence (classify_sound)
        self.sequence = secrets.randbelow(1 << 16)
        self.timestamp = secrets.randbelow(1 << 32)
        self.ssrc = secrets.randbits(32)
        self.sent = 0
        self.send_errors = 0
        self.arrivals = array.array("q")
        self.sequences = array.array("H")
        self.timestamps = array.array("L")
        self.sources = array.array("L")  # SSRC per packet: statistics are per source (RFC 3550 §6.4.1)
        self.first_packet_ns: int | None = None
        self.first_sound_ns: int | None = None
        self.malformed = 0
        self.fallback_clock = 0
        self.srtp: CallSrtp | None = None
        self.srtp_dropped = 0  # received packets that failed SRTP authentication or replay
        self.closed = False

    def results(self) -> dict:
        return {name: getattr(self, name) for name in _RESULT_FIELDS}


_RESULT_FIELDS = ("arrivals", "sequences", "timestamps", "sources", "first_packet_ns", "first_sound_ns", "malformed",
                  "fallback_clock", "rtcp_received", "sent", "send_errors", "onsets_ns", "sound", "srtp_dropped")


@attrs.define
class MediaHandle:
    """The parent's view of one call's media: its port now, what was recorded after ``RtpEngine.close``."""

    key: int
    port: int
    arrivals: array.array = attrs.field(factory=lambda: array.array("q"))
    sequences: array.array = attrs.field(factory=lambda: array.array("H"))
    timestamps: array.array = attrs.field(factory=lambda: array.array("L"))
    sources: array.array = attrs.field(factory=lambda: array.array("L"))
    onsets_ns: array.array = attrs.field(factory=lambda: array.array("q"))
    sound: array.array = attrs.field(factory=lambda: array.array("B"))
    first_packet_ns: int | None = None
    first_sound_ns: int | None = None
    malformed: int = 0
    fallback_clock: int = 0
    rtcp_received: int = 0
    sent: int = 0
    send_errors: int = 0
    srtp_dropped: int = 0


class MediaLoop:
    """The child process's loop: the calls it was handed, their send slots, one epoll."""

    def __init__(self, connection: multiprocessing.connection.Connection, caller_audio: bytes,
                 talk: CallerTalk | None = None, classify_sound: bool = False):
        usable = len(caller_audio) - len(caller_audio) % FRAME_BYTES
        lead_in = talk.lead_in_frames if talk is not None else 0
        audio = bytes([ULAW_SILENCE]) * (lead_in * FRAME_BYTES) + bytes(caller_audio[:usable])
        self._audio = {0: audio, 8: audio.translate(ULAW_TO_ALAW)}
        self._frames = len(audio) // FRAME_BYTES  # positions in the buffer; after the last comes the loop's first
        self._loop_start = lead_in
        onsets = bytearray(self._frames)
        for frame in talk.onset_frames if talk is not None else ():
            onsets[lead_in + frame] = 1
        self._onsets = bytes(onsets)
        self._classify_sound = classify_sound
        self._random_phase = talk is not None
        self._connection = connection
        self._raw = socket.socket(fileno=os.dup(connection.fileno()), family=socket.AF_UNIX, type=socket.SOCK_STREAM)
        self._calls: dict[int, CallMedia] = {}
        self._by_fd: dict[int, CallMedia] = {}
        self._slots: list[list[CallMedia]] = [[] for _ in range(_SLOTS)]
        self._epoll = select.epoll()
        self._epoll.register(connection.fileno(), select.EPOLLIN)
        self._running = True
        self.lateness_ns = array.array("q")  # per served slot: now - due

    def results(self, key: int) -> dict:
        """What call ``key`` recorded, for the parent."""
        return self._calls[key].results()

    def _open(self, key: int) -> None:
        # The descriptors follow their "open" command in one SCM_RIGHTS message (see RtpEngine.open_call).
        rtp_fd, rtcp_fd = multiprocessing.reduction.recvfds(self._raw, 2)
        rtp, rtcp = socket.socket(fileno=rtp_fd), socket.socket(fileno=rtcp_fd)
        media = CallMedia(rtp, rtcp)
        self._calls[key] = media
        for sock in (rtp, rtcp):
            self._by_fd[sock.fileno()] = media
            self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _close_media(self, media: CallMedia) -> None:
        if media.closed:
            return
        media.closed = True
        if media.remote is not None:
            slot = self._slots[(media.due_ns // _TICK_NS) % _SLOTS]
            if media in slot:
                slot.remove(media)
        for sock in (media.socket, media.control):
            fd = sock.fileno()
            self._by_fd.pop(fd, None)
            self._epoll.unregister(fd)
            sock.close()
        if media.srtp is not None:
            media.srtp.close()  # libsrtp zeroes the keys now

    def _commands(self, now_ns: int) -> None:
        while self._connection.poll(0):
            kind, key, remote, payload_type, event_payload_type, keys = self._connection.recv()
            if kind == "open":
                self._open(key)
            elif kind == "send":
                media = self._calls[key]
                if media.closed:
                    continue
                media.remote = remote
                media.remote_name = socket_address(remote)
                media.payload_type = payload_type
                media.event_payload_type = event_payload_type
                if keys is not None:
                    media.srtp = CallSrtp(keys)
                _HEADER.pack_into(media.packet, 0, 0x80, 0x80 | payload_type, media.sequence, media.timestamp, media.ssrc)
                media.due_ns = now_ns - now_ns % _TICK_NS + _TICK_NS
                if self._random_phase:
                    # A phone's frames keep no phase with the far end's: without this every
                    # caller would send 1 ms after the server's frame (it starts on the 200 OK).
                    media.due_ns += secrets.randbelow(_SLOTS) * _TICK_NS
                self._slots[(media.due_ns // _TICK_NS) % _SLOTS].append(media)
            elif kind == "stop":
                self._close_media(self._calls[key])
            else:  # "close"
                self._running = False
                return

    def _send_slot(self, slot: list[CallMedia]) -> None:
        if _engine is not None:
            _engine.send_slot(slot, self._audio, self._frames, self._loop_start, self._onsets, self._send_one)
            return
        for media in slot:
            self._send_one(media)

    def _send_one(self, media: CallMedia) -> None:
        """The call's next frame (and its event packet), due now."""
        position = media.position
        offset = position * FRAME_BYTES
        packet = media.packet
        packet[12:] = self._audio[media.payload_type][offset:offset + FRAME_BYTES]
        srtp = media.srtp
        try:
            media.socket.sendto(packet if srtp is None else srtp.protect_frame(packet, b""), media.remote)
            media.sent += 1
        except OSError:
            media.send_errors += 1
        if self._onsets[position]:
            media.onsets_ns.append(time.time_ns())
        position += 1
        media.position = self._loop_start if position == self._frames else position
        media.sequence = (media.sequence + 1) & 0xFFFF
        if media.event_payload_type is not None:
            self._send_event(media)
        media.timestamp = (media.timestamp + FRAME_BYTES) & 0xFFFFFFFF
        # RFC 3551 §4.1: the marker goes on the first packet of a talkspurt only.
        packet[1] = media.payload_type
        _SEQUENCE_AND_STAMP.pack_into(packet, 2, media.sequence, media.timestamp)
        media.due_ns += FRAME_NS

    @staticmethod
    def _send_event(media: CallMedia) -> None:
        """The event packet beside the audio packet just sent (same SSRC, next sequence)."""
        marker = 0
        if media.event_frames % _EVENT_FRAMES == 0:
            # RFC 4733 §2.5.1.2: an event's packets carry its start timestamp; the first has the marker.
            media.event_timestamp = media.timestamp
            media.event_frames = 0
            marker = 0x80
        media.event_frames += 1
        _EVENT_PACKET.pack_into(media.event_packet, 0, 0x80, marker | media.event_payload_type, media.sequence,
                                media.event_timestamp, media.ssrc, _EVENT_CODE, 10,
                                media.event_frames * FRAME_BYTES)
        srtp = media.srtp
        try:
            packet = media.event_packet
            media.socket.sendto(packet if srtp is None else srtp.protect_frame(packet, b""), media.remote)
            media.sent += 1
        except OSError:
            media.send_errors += 1
        media.sequence = (media.sequence + 1) & 0xFFFF

    def _receive_control(self, media: CallMedia, buffer: bytearray) -> None:
        while True:
            try:
                media.control.recv_into(buffer)
            except OSError:  # BlockingIOError when drained
                return
            media.rtcp_received += 1

    # Whether plain calls' packets are read by the compiled engine, which reads the
    # socket's descriptor itself (a loop that wraps the socket object turns it off).
    compiled_receive = True

    def _receive(self, media: CallMedia, buffer: bytearray, view: memoryview) -> None:
        if _engine is not None and media.srtp is None and self.compiled_receive:
            _engine.receive(media, self._classify_sound)
            return
        receive = media.socket.recvmsg_into
        buffers = [buffer]
        classify = self._classify_sound
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
            if 192 <= buffer[1] <= 223:  # RFC 5761 §4: RTCP packet types 192-223 on the RTP port
                media.rtcp_received += 1
                continue
            if media.srtp is not None:
                plain = media.srtp.unprotect(view[:size])
                if plain is None:
                    media.srtp_dropped += 1
                    continue
                size = len(plain)
                buffer[:size] = plain  # the same length as the slice: the buffer never resizes
            sequence, stamp, source = _SEQUENCE_STAMP_SOURCE.unpack_from(buffer, 2)
            media.arrivals.append(arrival)
            media.sequences.append(sequence)
            media.timestamps.append(stamp)
            media.sources.append(source)
            if classify or media.first_sound_ns is None:
                if media.first_packet_ns is None:
                    media.first_packet_ns = arrival
                # RFC 3550 §5.1: payload follows 12 bytes plus 4 per CSRC (extensions: not from our peers).
                start = 12 + 4 * (buffer[0] & 0x0F)
                silence = _SILENCE_BYTES.get(buffer[1] & 0x7F, _SILENCE_BYTES[0])
                sound = bool(view[start:size].tobytes().strip(silence))
                if sound and media.first_sound_ns is None:
                    media.first_sound_ns = arrival
                if classify:
                    media.sound.append(sound)

    def run(self) -> None:
        buffer = bytearray(_RECEIVE_SIZE)
        view = memoryview(buffer)
        slots = self._slots
        lateness = self.lateness_ns
        by_fd = self._by_fd
        poll = self._epoll.poll
        control = self._connection.fileno()
        next_tick = time.monotonic_ns()
        next_tick -= next_tick % _TICK_NS
        while self._running:
            now = time.monotonic_ns()
            while next_tick <= now:
                slot = slots[(next_tick // _TICK_NS) % _SLOTS]
                if slot:
                    lateness.append(now - next_tick)
                    self._send_slot(slot)
                next_tick += _TICK_NS
                now = time.monotonic_ns()
            timeout = max(0.0, (next_tick - time.monotonic_ns()) / 1e9)
            for fd, _events in poll(timeout):
                if fd == control:
                    self._commands(time.monotonic_ns())
                    continue
                media = by_fd.get(fd)
                if media is None:
                    continue
                if fd == media.control.fileno():
                    self._receive_control(media, buffer)
                else:
                    self._receive(media, buffer, view)
        for media in self._calls.values():
            self._close_media(media)


def _child(connection: multiprocessing.connection.Connection, caller_audio: bytes, talk: CallerTalk | None = None,
           classify_sound: bool = False) -> None:
    started_cpu = time.process_time()
    started_wall = time.monotonic()
    loop = MediaLoop(connection, caller_audio, talk, classify_sound)
    try:
        loop.run()
    except BaseException as error:  # reported to the parent, which raises it from close()
        connection.send(("error", repr(error)))
        raise
    connection.send(("results", {
        "calls": {key: loop.results(key) for key in loop._calls},
        "lateness_ns": loop.lateness_ns,
        "busy_seconds": time.process_time() - started_cpu,
        "wall_seconds": time.monotonic() - started_wall,
    }))


class RtpEngine:
    """The parent's side: binds each call's sockets, drives the media process, collects its records."""

    def __init__(self, *, host: str, caller_audio: bytes, ports: range, talk: CallerTalk | None = None,
                 classify_sound: bool = False):
        if len(caller_audio) < FRAME_BYTES:
            raise ValueError(f"caller audio has {len(caller_audio)} bytes, less than one {FRAME_BYTES}-byte frame")
        self._host = host
        self._ports = range(ports.start + ports.start % 2, ports.stop - 1, 2)
        self._next_port = 0
        self._caller_audio = caller_audio
        self._handles: dict[int, MediaHandle] = {}
        self._connection, child_end = multiprocessing.Pipe(duplex=True)
        self._process = multiprocessing.get_context("spawn").Process(
            target=_child, args=(child_end, caller_audio, talk, classify_sound), name="eko-bench-rtp", daemon=True)
        self._child_end = child_end
        self.lateness_ns = array.array("q")
        self.busy_seconds = 0.0
        self.wall_seconds = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> None:
        self._process.start()
        self._child_end.close()
        self._raw = socket.socket(fileno=os.dup(self._connection.fileno()), family=socket.AF_UNIX, type=socket.SOCK_STREAM)

    def _bind_pair(self) -> tuple[int, socket.socket, socket.socket]:
        for _ in range(len(self._ports)):
            port = self._ports[self._next_port]
            self._next_port = (self._next_port + 1) % len(self._ports)
            try:
                rtp = _udp_socket(self._host, port)
            except OSError:
                continue  # in use (by another program, or a call still closing): try the next pair
            try:
                return port, rtp, _udp_socket(self._host, port + 1)
            except OSError:
                rtp.close()
        raise UserError(f"no free RTP/RTCP port pair on {self._host} in {self._ports.start}-{self._ports.stop}",
                        key="--bench-rtp-ports")

    def open_call(self) -> MediaHandle:
        """Bind a call's RTP/RTCP pair and hand it to the media process; it records from now on."""
        port, rtp, rtcp = self._bind_pair()
        handle = MediaHandle(key=len(self._handles), port=port)
        self._handles[handle.key] = handle
        try:
            # Command then both descriptors back to back, so the child (which reads the
            # descriptors right after the command) waits as little as possible.
            self._connection.send(("open", handle.key, None, None, None, None))
            multiprocessing.reduction.sendfds(self._raw, [rtp.fileno(), rtcp.fileno()])
        finally:
            rtp.close()  # the child has its own descriptors now
            rtcp.close()
        return handle

    def start_sending(self, media: MediaHandle, remote: tuple, payload_type: int, *,
                      event_payload_type: int | None = None, srtp: SrtpKeys | None = None) -> None:
        """Begin caller-side RTP to ``remote`` in ``payload_type`` (0 PCMU, 8 PCMA), with an
        RFC 4733 event packet beside each audio packet when ``event_payload_type`` is given;
        with ``srtp``, SRTP both ways under those keys (ours to send, the answer's to receive)."""
        self._connection.send(("send", media.key, remote, payload_type, event_payload_type, srtp))

    def stop(self, media: MediaHandle) -> None:
        """Stop sending and receiving for the call and close its sockets."""
        self._connection.send(("stop", media.key, None, None, None, None))

    def close(self) -> None:
        """Stop the media process and fill every handle with what its call recorded."""
        if self._process.pid is None:
            return
        kind, payload = last_words(self._connection, self._process, ("close", None, None, None, None, None),
                                   what="the RTP media process", timeout=_STOP_TIMEOUT)
        self._raw.close()
        if kind == "error":
            raise RuntimeError(f"the RTP media process failed: {payload}")
        for key, fields in payload["calls"].items():
            for name, value in fields.items():
                setattr(self._handles[key], name, value)
        self.lateness_ns = payload["lateness_ns"]
        self.busy_seconds = payload["busy_seconds"]
        self.wall_seconds = payload["wall_seconds"]


def open_wav_as_ulaw(path: str) -> bytes:
    """Read a WAV (8 kHz, mono, 16-bit PCM) as µ-law caller audio."""
    import wave

    from eko_rtp.codec.g711 import linear16_to_ulaw

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
