"""One call's RTP stream: the per-call state the frame clock and the receive hub drive.

Theory of operation: the stream owns the call's RTP/RTCP socket pair, its
:class:`RtpSender` header state and its :class:`PlayoutQueue`. On the 200 OK the
call calls :meth:`MediaStream.start`, which sends frame 0 at once and hands the
stream to the shared :class:`FrameClock`; from then on frame n leaves at
``t0 + n·20 ms`` whatever happens (silence between phrases, RFC 3551 §4.1
timestamps counting through holds). Sending is synchronous ``sendmsg`` of two
buffers, the preallocated header and a memoryview into the cached audio, so the
audio is never copied (PCMA is the exception: one 160-byte ``translate`` per
frame).

Inbound packets arrive through the :class:`ReceiveHub` handler :meth:`on_rtp`,
which reads them only through the ``media/`` cores, in place (no object per
packet): :func:`peek_rtp_untrusted` for every packet (the fixed header), and for
RFC 4733 telephone-events :func:`payload_bounds_untrusted` (CSRCs, header
extension and padding honoured) and :func:`peek_telephone_event_untrusted`, whose
fields :class:`DtmfDetector` turns into digits. Only the caller's packets count:
the stream's :class:`SourceLatch` (media/latch.py) says who the caller is (the
signalled address, or a NAT's face after the answer) and whether media may be
sent yet (reflection guard); each packet costs one compare of its source with the
latched one, and the rest are dropped and counted (``packets_stray``). The
caller's packets refresh the inactivity timer and feed the receive statistics
(loss for every packet, jitter for audio only, from the kernel's arrival time),
and our media goes where they come from (symmetric RTP, RFC 4961, so NATed
callers hear us). The caller's RTCP goes to :class:`QualityMonitor`, so our
reports echo its SRs (LSR/DLSR) and the call ends with its loss, jitter and
round trip.

SRTP (a plan with ``srtp_keys``, media/srtp.py): the stream keeps one
:class:`CallSrtp` while the keys stay the same (a re-INVITE that does not rekey
keeps it, and with it the rollover counters and replay windows) and makes a new
one only for new keys. A frame is protected by ``protect_frame`` straight from the
preallocated header and the memoryview of the cached audio into the context's
buffer, and the memoryview it returns goes out in one ``sendto``: the cipher's one
copy, no ``bytes`` per packet. Inbound, every datagram is unprotected before
anything reads it: the latch only ever sees a packet that authenticated (a forged
or replayed one, from the caller's own address or not, never moves it nor keeps
the call alive), and DTMF and the caller's audio see the plaintext. The plaintext
is a writable view of the thread's receive buffer (``unprotect_view``), valid
until the next datagram: everything here reads it at once, and ``on_audio`` must
copy what it keeps (the ears' reorder buffer copies writable buffers), so a call
nobody listens to copies nothing. Drops are
counted by reason in the call's :class:`CallSrtp` and the server's
:class:`SrtpCounters`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from eko_rtp.codec.frame import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE, SAMPLES_PER_FRAME
from eko_rtp.codec.g711 import ULAW_TO_ALAW
from eko_rtp.media.dtmf import DtmfDetector, DtmfError, peek_telephone_event_untrusted
from eko_rtp.media.latch import LatchPolicy, LatchState, SourceLatch
from eko_rtp.media.playout import PlayoutQueue
from eko_rtp.media.ports import PortPair
from eko_rtp.media.quality import QualityMonitor
from eko_rtp.media.rtcp import RtcpError, build_sender_report, ntp_from_unix
from eko_rtp.media.rtp import (
    PythonRtpSender,
    ReceiverStatistics,
    RtpError,
    RtpSender,
    is_rtcp,
    payload_bounds_untrusted,
    peek_rtp_untrusted,
)
from eko_rtp.media.srtp import CallSrtp, SrtpCounters, SrtpError

log = logging.getLogger(__name__)

# The receive hub reads the kernel's arrival time on one of the caller's RTP
# datagrams in this many (10 a second at 50 packets/s), the cheap read for the rest:
# A.8 jitter from the stamped ones (see media/receiver.py; cost in BENCHMARKS.md).
ARRIVAL_SAMPLING = 5
LATE_THRESHOLD = 0.002  # a frame sent more than 2 ms after its due time counts as late


class MediaCounters:
    """Server-wide media counters (read by metrics and the benchmark)."""

    def __init__(self) -> None:
        self.frames_sent = 0
        self.frames_late = 0
        self.max_lateness = 0.0
        self.send_drops = 0
        self.send_errors = 0
        self.packets_received = 0
        self.packets_invalid = 0
        self.receive_backlogs = 0  # drains that left a call's socket non-empty
        # RTP and RTCP from someone other than the caller (media/latch.py): dropped whole.
        self.packets_stray = 0


class PythonStreamCore:
    """What the per-packet paths read of a call's stream, and the paths: the frame
    loop (:meth:`send_due`) and the caller's packets (:meth:`on_rtp`).

    The base of :class:`MediaStream`; ``StreamCore`` is this or its compiled twin
    (media/_stream.c), which tests/test_stream.py holds to the same behaviour. What
    is not per packet is the subclass's, and the paths only call it: what a failed
    send or a late frame counts as (``_send_failed``, ``_count_late``), the latch
    (``_admit``), RTCP (``on_rtcp``) and telephone-events (``_on_telephone_event``).
    """

    __slots__ = ("t0", "frame_index", "queue", "sender", "_sendmsg", "_sendto", "remote_rtp", "_translate", "srtp",
                 "recorder", "counters", "sending", "closed", "caller_source", "last_inbound", "statistics",
                 "on_audio", "codec_name", "audio_pt", "telephone_event_pt", "caller_ssrc", "_rtcp_mux")

    def send_due(self, now: float) -> float | None:
        """Send every frame due at ``now``; the next due time, or ``None`` once closed.

        This runs for every frame of every call, so it is written flat: one call
        into the playout queue, one into the header writer, one ``sendmsg``.
        """
        if self.closed:
            return None
        t0 = self.t0
        index = self.frame_index
        due = t0 + index * FRAME_SECONDS
        try:
            while due <= now + 1e-9:
                if now - due > LATE_THRESHOLD:
                    self._count_late(now - due)
                if self.sending:
                    payload, marker = self.queue.next_frame()
                    if self._translate is not None:
                        payload = bytes(payload).translate(self._translate)
                    try:
                        if self.srtp is None:
                            self._sendmsg((self.sender.header_for_next_frame(marker), payload), (), 0, self.remote_rtp)
                        else:
                            # The cipher's one copy into the context's buffer; its view goes out as is.
                            self._sendto(self.srtp.protect_frame(self.sender.header_for_next_frame(marker), payload),
                                         self.remote_rtp)
                    except Exception as error:
                        self._send_failed(error)
                    else:
                        self.counters.frames_sent += 1
                    if self.recorder is not None:
                        self.recorder.bot_frame(payload)
                else:
                    self.sender.skip(SAMPLES_PER_FRAME)  # held: timestamps keep counting time
                index += 1
                due = t0 + index * FRAME_SECONDS
        finally:
            self.frame_index = index  # a frame that raised is the next one due, those before it are not
        return due

    def on_rtp(self, data: bytes, address: tuple, now: float, arrival: float | None) -> None:
        """A datagram on the RTP port (the hub's handler): ``arrival`` is the kernel's time,
        ``None`` on the datagrams the hub reads without it (they count for loss only)."""
        if self._rtcp_mux and is_rtcp(data):
            self.on_rtcp(data, address, now, arrival)
            return
        srtp = self.srtp
        if srtp is not None:
            # Before anything reads it: only an authenticated, fresh packet goes on.
            if self.closed:
                return  # the contexts are freed
            data = srtp.unprotect_view(data)  # valid until the next datagram: read now, copy to keep
            if data is None:
                return  # counted by reason in the call's CallSrtp and the server's SrtpCounters
        try:
            marker_and_type, sequence, timestamp, ssrc = peek_rtp_untrusted(data)
        except RtpError:
            self.counters.packets_invalid += 1
            return
        # The one per-packet check: the caller's source (a tuple compare); anything
        # else goes to the latch, which latches it or drops it.
        if address != self.caller_source and not self._admit(address, ssrc, now):
            return
        self.counters.packets_received += 1
        self.last_inbound = now
        self.caller_ssrc = ssrc
        payload_type = marker_and_type & 0x7F
        if payload_type == self.telephone_event_pt:
            self.statistics.feed(sequence, timestamp, None)  # counted for loss, not jitter
            self._on_telephone_event(data, timestamp)
            if self.on_audio is not None:
                # It takes its sequence number in the caller's stream (RFC 4733 §2.1):
                # the ears skip it instead of waiting for it as lost audio.
                self.on_audio(sequence, None, self.codec_name, now)
            return
        self.statistics.feed(sequence, timestamp, arrival)
        if self.on_audio is not None:
            # The caller's voice, or None for comfort noise and other types (no audio).
            self.on_audio(sequence, data if payload_type == self.audio_pt else None, self.codec_name, now)


# The compiled twin (media/_stream.c) when it was built, else the class above; both
# pass tests/test_stream.py. EKO_RTP_PURE_PYTHON=1 takes the Python one (to compare).
StreamCore: type = PythonStreamCore
if not os.environ.get("EKO_RTP_PURE_PYTHON"):
    try:
        from eko_rtp.media._stream import StreamCore  # noqa: F811
    except ImportError:
        pass

# What the start line says runs the per-packet paths: both compiled twins, or Python.
PER_PACKET_PATHS = ("compiled" if StreamCore is not PythonStreamCore and RtpSender is not PythonRtpSender
                    else "python")


class MediaStream(StreamCore):
    """Outgoing and incoming RTP of one call."""

    # One per call, kept for the call's life: slots keep it small (a plain instance
    # dict of this many attributes took 1.5 KiB a call, docs/BENCHMARKS.md). Those the
    # per-packet paths read are StreamCore's.
    __slots__ = ("pair", "plan", "on_dtmf", "cname", "dtmf", "quality", "_wall_clock", "remote_rtcp", "latch",
                 "next_due", "first_packet_time", "receive_backlogs", "srtp_counters", "_srtp_drops_before")

    def __init__(
        self,
        *,
        pair: PortPair,
        plan,
        queue: PlayoutQueue,
        counters: MediaCounters,
        on_dtmf: Callable[[str], None],
        cname: str,
        sender: RtpSender | None = None,
        wall_clock: Callable[[], float] | None = None,
        on_audio: Callable[[int, bytes | None, str, float], None] | None = None,
        recorder=None,
        latch_policy: LatchPolicy | None = None,
        srtp_counters: SrtpCounters | None = None,
    ):
        self.pair = pair
        self._sendmsg = pair.rtp.sendmsg
        self._sendto = pair.rtp.sendto
        self.srtp: CallSrtp | None = None  # the call's SRTP contexts while the plan has keys
        self.srtp_counters = srtp_counters  # server-wide drops (metrics), or None
        self._srtp_drops_before = 0  # drops under keys replaced by a rekey
        self.queue = queue
        self.counters = counters
        self.on_dtmf = on_dtmf
        self.cname = cname
        self.sender = sender or RtpSender(payload_type=plan.codec.payload_type)
        self.dtmf = DtmfDetector()
        self.statistics = ReceiverStatistics()
        self.quality = QualityMonitor(statistics=self.statistics, our_ssrc=self.sender.ssrc)
        self._wall_clock = wall_clock
        # The caller's audio packets (sequence, the datagram or None when it carries no
        # audio, codec name, now): the call's ears (eko_rtp/call/ears.py), which read the
        # payload through the RTP core when they need it; None: the audio is only counted.
        self.on_audio = on_audio
        self.recorder = recorder  # eko_rtp/call/recording.CallRecorder: each frame we send (None: off)
        self.remote_rtp: tuple | None = None
        self.remote_rtcp: tuple | None = None
        # Who the caller is and whether we may send yet; caller_source mirrors its
        # latched source for the per-packet compare (None: nothing latched).
        self.latch = SourceLatch(policy=latch_policy if latch_policy is not None else LatchPolicy())
        self.caller_source: tuple | None = None
        self.caller_ssrc: int | None = None  # of the caller's last packet: a move must carry it
        self.last_inbound: float | None = None
        self.apply_plan(plan)
        self.t0: float | None = None
        self.frame_index = 0
        self.next_due = 0.0
        self.closed = False
        self.first_packet_time: float | None = None
        self.receive_backlogs = 0

    # -- negotiation -------------------------------------------------------------

    def apply_plan(self, plan) -> None:
        """Take a (re)negotiated media plan: codec, destination, direction."""
        self.plan = plan
        self.sender.set_payload_type(plan.codec.payload_type)
        self.audio_pt = plan.codec.payload_type
        self.codec_name = plan.codec.name.upper()
        self._translate = ULAW_TO_ALAW if plan.codec.name.upper() == "PCMA" else None
        self.telephone_event_pt = plan.telephone_event_payload_type
        self._rtcp_mux = bool(plan.rtcp_mux)
        self._key(plan.srtp_keys)
        # A re-INVITE that moves the remote address moves our sending (RFC 3264 §8.3.1)
        # and starts a new latch; the same address again (hold, resume) keeps it.
        if self.latch.signal(plan.remote_rtp, plan.remote_rtcp):
            log.info("media moved by the SDP to %s; latching again", plan.remote_rtp)
        # A shared port (media/shared_port.py) routes by the signalled address, latched or
        # not yet; another call may hold the new one.
        if plan.remote_rtp is not None and not self.pair.follow(plan.remote_rtp, plan.remote_rtcp):
            log.warning("media cannot follow the caller to %s on the shared port: another call signalled it",
                        plan.remote_rtp)
        self._route()

    def _key(self, keys) -> None:
        """Keep the SRTP contexts for the same keys; new ones (the old freed) for new keys."""
        current = self.srtp
        if current is not None and current.keys == keys:
            return
        if current is not None:
            self._srtp_drops_before += _drops(current)
            current.close()
            log.info("SRTP rekeyed" if keys is not None else "SRTP off")
        self.srtp = CallSrtp(keys, counters=self.srtp_counters) if keys is not None else None

    @property
    def srtp_dropped(self) -> int:
        """This call's SRTP and SRTCP packets dropped: failed authentication, replayed, malformed."""
        return self._srtp_drops_before + (_drops(self.srtp) if self.srtp is not None else 0)

    def _route(self) -> None:
        """Point our sending at the latched source (else the signalled address), if allowed yet."""
        plan = self.plan
        latch = self.latch
        source = self.caller_source = latch.source
        if source is not None:
            self.remote_rtp = source
            self.remote_rtcp = source if self._rtcp_mux else (source[0], source[1] + 1)
        else:
            self.remote_rtp = plan.remote_rtp
            self.remote_rtcp = plan.remote_rtcp
        # Not allowed yet (reflection guard): the stream plays nothing and the audio
        # waits, as on hold; timestamps keep counting.
        self.sending = bool(plan.send_audio and plan.remote_rtp is not None and latch.may_send)

    def on_ack(self) -> None:
        """The caller's ACK came: media may go to a public signalled address (media/latch.py)."""
        self.latch.acknowledge()
        self._route()

    @property
    def packets_stray(self) -> int:
        """This call's RTP and RTCP packets dropped as not the caller's."""
        return self.latch.strays + self.latch.rtcp_strays

    # -- sending -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send frame 0 now; the frame clock sends the rest (call ``schedule`` on it next)."""
        self.t0 = now
        self.frame_index = 0
        self.latch.answer()
        sent_before = self.counters.frames_sent
        self.next_due = self.send_due(now)
        self.pair.flush()  # on a shared port frame 0 leaves now, not with the next tick's batch
        if self.counters.frames_sent > sent_before:
            self.first_packet_time = now

    def start_talkspurt(self, now: float) -> bool:
        """Send the first frame of a live talkspurt now rather than at the next slot.

        When live audio arrives while the stream plays silence, waiting for the next
        20 ms slot only adds latency (up to a frame). The stream re-phases instead:
        this frame leaves now with the marker bit, its timestamp is the sampling
        instant (the last frame's plus the samples elapsed, not a whole frame), and
        every later frame follows 20 ms apart from it. The frame clock notices the
        new phase at the stream's old slot and moves it (a slot it reaches before the
        new schedule's first due time). Returns whether it did.
        """
        if self.closed or self.t0 is None or not self.sending or not self.queue.talkspurt_ready():
            return False
        previous_due = self.t0 + (self.frame_index - 1) * FRAME_SECONDS
        elapsed = now - previous_due
        if not 0 <= elapsed < FRAME_SECONDS - 0.001:
            return False  # the slot is about due anyway (or the clock is behind): keep it
        self.sender.rewind(SAMPLES_PER_FRAME - int(elapsed / FRAME_SECONDS * SAMPLES_PER_FRAME))
        self.t0 = now - self.frame_index * FRAME_SECONDS
        self.next_due = self.send_due(now)
        self.pair.flush()
        return True

    def shift_schedule(self, seconds: float) -> None:
        """Move every frame still to come ``seconds`` later (see FrameClock.balancing_shift).

        The timestamps count the pause (RFC 3551 §4.1: they follow the sampling
        instant), so a receiver sees a late start of the next frame, not a late packet.
        """
        if seconds < 0:
            raise ValueError(f"a schedule moves only later, not by {seconds!r} s")
        self.t0 += seconds
        self.next_due += seconds
        self.sender.skip(round(seconds * SAMPLE_RATE))

    def _send_failed(self, error: Exception) -> None:
        """A frame's send raised ``error`` (from the frame loop): counted, or raised on."""
        if isinstance(error, BlockingIOError):
            self.counters.send_drops += 1  # the socket's buffer is full: this frame is lost
        elif isinstance(error, (OSError, SrtpError)):
            self.counters.send_errors += 1
            log.debug("RTP send to %s failed: %s", self.remote_rtp, error)
        else:
            raise error

    def _count_late(self, lateness: float) -> None:
        counters = self.counters
        counters.frames_late += 1
        if lateness > counters.max_lateness:
            counters.max_lateness = lateness

    def rtp_timestamp_at(self, now: float) -> int:
        """Our RTP clock at ``now`` (for RTCP SR §6.4.1), from the frame schedule."""
        elapsed_frames = (now - self.next_due) / FRAME_SECONDS
        return (self.sender.next_timestamp + int(elapsed_frames * SAMPLES_PER_FRAME)) & 0xFFFFFFFF

    def sender_report(self, now: float, unix_now: float) -> bytes:
        block = ()
        if self.statistics.expected:
            # DLSR on the wall clock, the one the caller's SR arrival was stamped with.
            block = (self.statistics.report_block(now=unix_now),)
        return build_sender_report(
            ssrc=self.sender.ssrc,
            ntp_time=ntp_from_unix(unix_now),
            rtp_timestamp=self.rtp_timestamp_at(now),
            packet_count=self.sender.packets_sent,
            octet_count=self.sender.octets_sent,
            report_blocks=block,
            cname=self.cname,
        )

    def send_rtcp(self, now: float, unix_now: float) -> None:
        destination = self.remote_rtp if self.plan.rtcp_mux else self.remote_rtcp
        if destination is None or self.closed or not self.latch.may_send:
            return
        sock = self.pair.rtp if self.plan.rtcp_mux else self.pair.rtcp
        try:
            report = self.sender_report(now, unix_now)
            if self.srtp is not None:
                report = self.srtp.protect_rtcp(report)  # SRTCP (RFC 3711 §3.4)
            sock.sendto(report, destination)
        except (OSError, SrtpError) as error:
            log.debug("RTCP send to %s failed: %s", destination, error)

    # -- receiving ---------------------------------------------------------------

    def _admit(self, address: tuple, ssrc: int, now: float) -> bool:
        """A packet not from the latched source: latch to it (symmetric RTP) or drop it, counted."""
        latch = self.latch
        if not latch.admit(address, ssrc, now, last_heard=self.last_inbound, caller_ssrc=self.caller_ssrc):
            self.counters.packets_stray += 1
            if latch.strays == 1:  # the first one says from where; the rest are only counted
                log.debug("RTP from %s:%d dropped: not the caller's (latch %s, ssrc %08x)", address[0], address[1],
                          latch.state.value, ssrc)
            return False
        self._route()
        if latch.state is LatchState.LEARNED or latch.relatches:
            # Not the SDP's address, or a second latch: worth a line (at most one per
            # relatch_after, since a live latch is never taken).
            log.info("media latched to %s:%d (%s, ssrc %08x)", address[0], address[1], latch.state.value, ssrc)
        else:
            log.debug("media latched to %s:%d (signalled, ssrc %08x)", address[0], address[1], ssrc)
        return True

    def _on_telephone_event(self, data: bytes, timestamp: int) -> None:
        # A held key sends 50 of these a second: read in place, no objects per packet.
        try:
            start, end = payload_bounds_untrusted(data)
            event, ended, duration = peek_telephone_event_untrusted(data, start, end)
        except (RtpError, DtmfError) as error:
            self.counters.packets_invalid += 1
            log.debug("bad telephone-event packet: %s", error)
            return
        digit = self.dtmf.feed_fields(event, ended, duration, timestamp)
        if digit is not None:
            self.on_dtmf(digit)

    def on_backlog(self) -> None:
        """The receive hub could not empty our socket in one drain: the caller outpaces us."""
        self.receive_backlogs += 1
        self.counters.receive_backlogs += 1

    def on_rtcp(self, data: bytes, address: tuple, now: float, arrival: float | None) -> None:
        """A datagram on the RTCP port (or RTCP on a muxed RTP port): the caller's reports."""
        srtp = self.srtp
        if srtp is not None:
            if self.closed:
                return
            data = srtp.unprotect_rtcp(data)
            if data is None:
                return  # forged SRTCP must not keep the call alive either
        if not self.latch.accepts_rtcp(address[0]):
            self.counters.packets_stray += 1  # a stranger's RTCP must not keep the call alive
            if self.latch.rtcp_strays == 1:
                log.debug("RTCP from %s:%d dropped: not from the caller's address", address[0], address[1])
            return
        self.last_inbound = now
        if arrival is None:
            # Muxed RTCP the hub read without a timestamp (it samples the RTP port):
            # the wall clock now is late by at most one drain, a few ms of the RTT.
            arrival = (self._wall_clock or time.time)()
        try:
            self.quality.receive(data, arrival)
        except RtcpError as error:
            self.counters.packets_invalid += 1
            log.debug("bad RTCP packet from %s: %s", address, error)

    def close(self) -> None:
        self.closed = True
        if self.srtp is not None:
            self.srtp.close()  # libsrtp zeroes the session keys now, not at garbage collection


def _drops(srtp: CallSrtp) -> int:
    return sum(srtp.rtp_drops.values()) + sum(srtp.rtcp_drops.values())


def silence_frame() -> bytes:
    return b"\xff" * FRAME_BYTES

