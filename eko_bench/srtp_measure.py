"""What SRTP costs a frame, measured: ``python -m eko_bench.srtp_measure``.

Theory of operation: one 20 ms G.711 frame as the frame clock sends it, the
preallocated 12-octet header from :class:`~eko_rtp.media.rtp.RtpSender` (its
sequence number moving on each packet, as libsrtp's outbound replay check wants)
and a 160-octet memoryview into a memory map (the cached audio), so a 172-octet
RTP packet. For each suite of ``media/sdes.py`` it times:

- the plain send path's alternatives without SRTP: nothing (``sendmsg`` of the
  two buffers, the zero-copy path today) and joining them into one ``bytes``;
- pylibsrtp's public API: ``Session.protect(b"".join(...))``, ``Session.unprotect``;
- ours (``media/srtp.py``): ``CallSrtp.protect_frame(header, payload)`` (a view
  of the thread's send buffer for ``sendto``), ``CallSrtp.protect(packet)``,
  ``CallSrtp.unprotect_view(datagram)`` (a view of the receive buffer, what the
  stream reads) and ``CallSrtp.unprotect(datagram)`` (a new ``bytes``), on fresh
  datagrams, each once: no replay drops;
- the stream around them (``media/stream.py``), clear and with each suite:
  ``MediaStream.send_due`` for one frame (its socket's send replaced by a no-op,
  so no system call) and ``MediaStream.on_rtp`` for one of the caller's audio
  packets (the ears idle: nobody listens).

Figures are µs per packet (``time.perf_counter``): the median of repeated runs
of many packets each, the variants interleaved within each repeat, and the
fastest run (the floor when the machine is shared). Nothing touches the
network; a run takes a few seconds.
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
import sys
import time
from typing import Callable

import attrs

from pylibsrtp import Policy, Session

from eko_rtp.media.playout import CachedSource, PlayoutQueue
from eko_rtp.media.ports import PortPair
from eko_rtp.media.rtp import RtpSender
from eko_rtp.media.sdes import DEFAULT_PREFERENCE, SrtpKeys
from eko_rtp.media.sdp import Codec, MediaPlan
from eko_rtp.media.srtp import SUITE_PROFILES, CallSrtp
from eko_rtp.media.stream import MediaCounters, MediaStream

__all__ = ["main", "measure"]

PAYLOAD_BYTES = 160
PACKETS = 5_000
REPEATS = 31


def measure(*, packets: int = PACKETS, repeats: int = REPEATS) -> list[tuple[str, str, float, float]]:
    """(suite, what, median µs per packet, fastest run's µs per packet) rows.

    Every repeat runs each variant once, in turn, so a neighbour's burst of CPU
    (the machine has two cores) lands on all of them alike rather than on one.
    """
    audio_map = mmap.mmap(-1, PAYLOAD_BYTES * 2)
    audio_map.write(os.urandom(PAYLOAD_BYTES * 2))
    payload = memoryview(audio_map)[PAYLOAD_BYTES:]
    variants: list[tuple[str, str, Callable[[int], None]]] = []
    sender = RtpSender(payload_type=0)

    def nothing(count: int) -> None:
        for _ in range(count):
            sender.header_for_next_frame(False)

    def joined(count: int) -> None:
        for _ in range(count):
            b"".join((sender.header_for_next_frame(False), payload))

    variants.append(("-", "header only (sendmsg of header + cached view: no copy)", nothing))
    variants.append(("-", "b''.join(header, payload) (one bytes per packet)", joined))
    calls = []
    for suite in DEFAULT_PREFERENCE:
        suite_variants = _suite_variants(suite, payload, packets * repeats, calls)
        variants.extend((suite.value, what, run) for what, run in suite_variants)
    streams = []
    for suite in (None, *DEFAULT_PREFERENCE):
        stream_variants = _stream_variants(suite, audio_map, packets * repeats, streams)
        variants.extend((suite.value if suite else "- (clear)", what, run) for what, run in stream_variants)
    timings: dict[int, list[float]] = {index: [] for index in range(len(variants))}
    for _ in range(repeats):
        for index, (_suite, _what, run) in enumerate(variants):
            started = time.perf_counter()
            run(packets)
            timings[index].append((time.perf_counter() - started) / packets * 1e6)
    for call in calls:
        call.close()
    for stream in streams:
        stream.close()
        stream.pair.close()
    return [(suite, what, statistics.median(timings[index]), min(timings[index]))
            for index, (suite, what, _run) in enumerate(variants)]


def _suite_variants(suite, payload: memoryview, total: int, calls: list):
    ours_key, peer_key = os.urandom(suite.master_length), os.urandom(suite.master_length)
    profile = SUITE_PROFILES[suite]
    call = CallSrtp(SrtpKeys(suite=suite, send_master=ours_key, receive_master=peer_key))
    calls.append(call)
    public = Session(Policy(key=ours_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    public_inbound = Session(Policy(key=peer_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    # Each sender its own SSRC and sequence, so no context sees an index twice.
    public_sender, frame_sender, packet_sender = (RtpSender(payload_type=0) for _ in range(3))

    def public_protect(count: int) -> None:
        for _ in range(count):
            public.protect(b"".join((public_sender.header_for_next_frame(False), payload)))

    def ours_protect_frame(count: int) -> None:
        for _ in range(count):
            call.protect_frame(frame_sender.header_for_next_frame(False), payload)

    def ours_protect(count: int) -> None:
        for _ in range(count):
            call.protect(b"".join((packet_sender.header_for_next_frame(False), payload)))

    def peer_stream():
        # Each receiver takes a stream from its start: one joining in the middle
        # would guess the rollover counter wrong after the sequence wrapped.
        peer = Session(Policy(key=peer_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        peer_sender = RtpSender(payload_type=0)
        return iter([peer.protect(b"".join((peer_sender.header_for_next_frame(False), payload)))
                     for _ in range(total)])

    public_feed, our_feed = peer_stream(), peer_stream()

    def public_unprotect(count: int) -> None:
        for _ in range(count):
            public_inbound.unprotect(next(public_feed))

    def ours_unprotect(count: int) -> None:
        for _ in range(count):
            if call.unprotect(next(our_feed)) is None:
                raise AssertionError("a fresh datagram was dropped")

    view_call = CallSrtp(SrtpKeys(suite=suite, send_master=ours_key, receive_master=peer_key))
    calls.append(view_call)
    view_feed = peer_stream()

    def ours_unprotect_view(count: int) -> None:
        for _ in range(count):
            if view_call.unprotect_view(next(view_feed)) is None:
                raise AssertionError("a fresh datagram was dropped")

    return [
        ("pylibsrtp Session.protect(b''.join(...))", public_protect),
        ("CallSrtp.protect_frame(header, view)", ours_protect_frame),
        ("CallSrtp.protect(b''.join(...)) -> bytes", ours_protect),
        ("pylibsrtp Session.unprotect(datagram)", public_unprotect),
        ("CallSrtp.unprotect_view(datagram) -> view", ours_unprotect_view),
        ("CallSrtp.unprotect(datagram) -> bytes", ours_unprotect),
    ]


def _stream_variants(suite, audio_map: mmap.mmap, total: int, streams: list):
    """A call's MediaStream as the frame clock and the receive hub drive it, sending nowhere."""
    keys = None
    plan = MediaPlan(codec=Codec(name="PCMU", payload_type=0), telephone_event_payload_type=101,
                     remote_rtp=("127.0.0.1", 9), remote_rtcp=None, rtcp_mux=True, send_audio=True,
                     receive_audio=True)
    if suite is not None:
        keys = SrtpKeys(suite=suite, send_master=os.urandom(suite.master_length),
                        receive_master=os.urandom(suite.master_length))
        plan = attrs.evolve(plan, srtp_keys=keys)
    pair = PortPair(port=0, rtp=socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                    rtcp=socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    stream = MediaStream(pair=pair, plan=plan, queue=PlayoutQueue(b"\xff" * PAYLOAD_BYTES),
                         counters=MediaCounters(), on_dtmf=lambda digit: None, cname="measure",
                         on_audio=lambda sequence, datagram, codec, now: None)
    streams.append(stream)
    stream._sendto = lambda data, address: None  # the CPU around the system call, not the call
    stream._sendmsg = lambda buffers, ancillary, flags, address: None
    # Frames of audio for the whole measurement, then silence (the same path).
    stream.queue.enqueue(CachedSource(memoryview(audio_map)))
    stream.start(0.0)
    clock = [0.0]
    caller = RtpSender(payload_type=0)
    plain = (bytes(caller.header_for_next_frame(False)) + os.urandom(PAYLOAD_BYTES) for _ in range(total))
    if suite is None:
        feed = iter(list(plain))
    else:
        peer = Session(Policy(key=keys.receive_master, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=SUITE_PROFILES[suite]))
        feed = iter([peer.protect(packet) for packet in plain])

    def send_due(count: int) -> None:
        now = clock[0]
        for _ in range(count):
            now += 0.020
            stream.send_due(now)
        clock[0] = now

    def on_rtp(count: int) -> None:
        address = plan.remote_rtp
        for _ in range(count):
            stream.on_rtp(next(feed), address, 1.0, None)

    return [("MediaStream.send_due (one frame, no syscall)", send_due),
            ("MediaStream.on_rtp (one audio packet, nobody listens)", on_rtp)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eko_bench.srtp_measure", description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=PACKETS, help="packets per timed run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="timed runs; the median is shown (default %(default)s)")
    arguments = parser.parse_args(argv)
    print(f"172-octet RTP packets (12 + {PAYLOAD_BYTES}), µs per packet over {arguments.repeats} interleaved runs "
          f"of {arguments.packets} packets: the median run and the fastest")
    print(f"{'suite':<26} {'what':<58} {'median':>6} {'best':>6}")
    for suite, what, median, best in measure(packets=arguments.packets, repeats=arguments.repeats):
        print(f"{suite:<26} {what:<58} {median:6.2f} {best:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
