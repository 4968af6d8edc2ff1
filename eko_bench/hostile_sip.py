"""Hostile signalling beside the calls: ``--hostile-sip RATE:SIZE`` (issue 17).

Why: a SIP parser that spends Python per byte of header parameters lets anyone who
can reach the port take the server's CPU, and with it the frame clock of every call
in progress. This floods the target, while the bench's calls run, with ``RATE``
datagrams a second of an OPTIONS of exactly ``SIZE`` bytes whose top Via is stuffed
with header parameters (``;a;a;a...``), from another loopback source (127.0.0.2
beside a target on 127.0.0.1, so the server's log and any per-source limit tell it
from the bench's trunk). The run's figures (deviation p99 of the calls above all)
then say what the flood cost; run the same command without the flag for the
baseline.

Each datagram has its own branch and Call-ID (the server must treat each as new),
written into a fixed-width field of one template, so sending costs no parse or build
on our side. The schedule is absolute (datagram n at ``start + n / RATE``); a sender
that falls behind sends what is due at once rather than drifting. Responses (a 400
or 513 when the target can address one) are counted, never parsed.
"""

from __future__ import annotations

import contextlib
import socket

import attrs
import trio

from eko_rtp.errors import UserError

__all__ = ["HostileSip", "Flood", "parse_hostile_sip", "stuffed_options", "flooding"]

MAX_RATE = 1000.0  # datagrams a second
MAX_SIZE = 65507  # the largest UDP payload over IPv4
MIN_SIZE = 512  # room for the OPTIONS itself (about 300 bytes) and some parameters
_SERIAL_DIGITS = 8
_SERIAL = "0" * _SERIAL_DIGITS  # the template's field, overwritten per datagram


@attrs.frozen(kw_only=True)
class HostileSip:
    """``rate`` datagrams a second of ``size`` bytes each."""

    rate: float = attrs.field(validator=[attrs.validators.gt(0), attrs.validators.le(MAX_RATE)])
    size: int = attrs.field(validator=[attrs.validators.ge(MIN_SIZE), attrs.validators.le(MAX_SIZE)])

    def __str__(self) -> str:
        return f"{self.rate:g}:{self.size}"


def parse_hostile_sip(text: str) -> HostileSip:
    """'30:60000' -> HostileSip(rate=30.0, size=60000); UserError naming the flag otherwise."""
    rate_text, colon, size_text = text.partition(":")
    try:
        rate, size = float(rate_text), int(size_text)
    except ValueError:
        raise UserError(f"expected RATE:SIZE like 30:60000, got {text!r}", key="--hostile-sip") from None
    if not colon or not 0 < rate <= MAX_RATE or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"RATE must be in (0, {MAX_RATE:g}] datagrams a second and SIZE in [{MIN_SIZE}, {MAX_SIZE}]"
                        f" bytes, got {text!r}", key="--hostile-sip")
    return HostileSip(rate=rate, size=size)


def _head(target_host: str, target_port: int, source_host: str, source_port: int) -> tuple[str, str]:
    """The OPTIONS before and after the stuffed parameters of its Via."""
    before = (f"OPTIONS sip:eko@{target_host}:{target_port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP {source_host}:{source_port};branch=z9hG4bK-hostile-{_SERIAL};rport")
    after = (f"\r\nMax-Forwards: 70\r\nFrom: <sip:hostile@{source_host}>;tag=h\r\nTo: <sip:eko@{target_host}>\r\n"
             f"Call-ID: hostile-{_SERIAL}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    return before, after


def stuffed_options(size: int, *, target: tuple[str, int], source: tuple[str, int]) -> bytes:
    """An OPTIONS of exactly ``size`` bytes, its top Via padded with ``;a`` flags (and one ``;ab``)."""
    before, after = _head(target[0], target[1], source[0], source[1])
    room = size - len(before) - len(after)
    if room < 0:
        raise ValueError(f"an OPTIONS needs at least {len(before) + len(after)} bytes, not {size}")
    padding = ";a" * (room // 2)
    if room % 2:
        padding = padding[:-2] + ";ab" if padding else ""
    data = (before + padding + after).encode()
    if len(data) != size:  # only when room is 1: no parameter fits in one byte
        raise ValueError(f"cannot make an OPTIONS of exactly {size} bytes")
    return data


@attrs.define
class Flood:
    """What the sender did: datagrams and bytes sent, responses received, how late it ran."""

    hostile: HostileSip
    source: tuple[str, int] = ("", 0)
    sent: int = 0
    bytes_sent: int = 0
    send_errors: int = 0
    responses: int = 0
    seconds: float = 0.0
    max_lateness: float = 0.0  # s behind the schedule at the worst datagram

    def summary(self) -> dict:
        return {"rate": self.hostile.rate, "size": self.hostile.size, "source": f"{self.source[0]}:{self.source[1]}",
                "sent": self.sent, "bytes_sent": self.bytes_sent, "send_errors": self.send_errors,
                "responses": self.responses, "seconds": round(self.seconds, 3),
                "achieved_rate": round(self.sent / self.seconds, 1) if self.seconds else None,
                "max_lateness_ms": round(self.max_lateness * 1000, 1)}


def _source_host(target_host: str) -> str:
    """Another loopback address than the bench's when there is one (IPv4 has 127/8; IPv6 only ::1)."""
    return "127.0.0.2" if target_host == "127.0.0.1" else target_host


async def _send(flood: Flood, sock, template: bytes, target: tuple[str, int]) -> None:
    data = bytearray(template)
    field = f"hostile-{_SERIAL}".encode()
    offsets = sorted({template.find(field) + 8, template.rfind(field) + 8})  # the branch's and the Call-ID's
    period = 1.0 / flood.hostile.rate
    start = trio.current_time()
    try:
        while True:
            due = start + flood.sent * period
            await trio.sleep_until(due)
            flood.max_lateness = max(flood.max_lateness, trio.current_time() - due)
            serial = b"%0*d" % (_SERIAL_DIGITS, flood.sent % 10**_SERIAL_DIGITS)
            for offset in offsets:
                data[offset:offset + _SERIAL_DIGITS] = serial
            try:
                flood.bytes_sent += await sock.sendto(data, target)
            except OSError:
                flood.send_errors += 1  # a full socket buffer: the target is not reading fast enough
            flood.sent += 1
    finally:
        flood.seconds = trio.current_time() - start


async def _count_responses(flood: Flood, sock) -> None:
    while True:
        await sock.recv(MAX_SIZE)
        flood.responses += 1


@contextlib.asynccontextmanager
async def flooding(hostile: HostileSip, *, target: tuple[str, int]):
    """``async with flooding(...) as flood:`` sends for the length of the block; ``flood`` counts."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind((_source_host(target[0]), 0))
        source = sock.getsockname()[:2]
        template = stuffed_options(hostile.size, target=target, source=source)
        flood = Flood(hostile=hostile, source=source)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send, flood, sock, template, target)
            nursery.start_soon(_count_responses, flood, sock)
            try:
                yield flood
            finally:
                nursery.cancel_scope.cancel()
