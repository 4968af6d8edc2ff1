"""A minimal synchronous SIP caller for tests that need the RTP packets themselves.

Built on the benchmark's deliberately separate UAC messages (eko_bench.uac): it
sends an INVITE, ACKs the 200, sends 20 ms silence RTP like a phone, records every
RTP packet it receives with its arrival time, answers a BYE from the server, and
sends BYE itself after ``hold`` seconds. Loopback only; bounded in time.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time

import attrs

from eko_bench import uac


@attrs.define
class Packet:
    arrival: float
    sequence: int
    timestamp: int
    marker: bool
    payload_type: int
    payload: bytes


@attrs.define
class CallRecord:
    status: int = 0
    invite_sent: float = 0.0
    answered_at: float | None = None
    packets: list[Packet] = attrs.Factory(list)
    server_hung_up: bool = False
    responses: list[int] = attrs.Factory(list)
    answer: uac.Message | None = None  # the 200 OK to the INVITE, as received


# What the caller sends while it listens: G.711 silence in the codec it prefers.
SILENCE = {"PCMU": b"\xff" * 160, "PCMA": b"\xd5" * 160}


# Ephemeral RTP ports tried before giving up on one whose next port is free too.
PAIR_ATTEMPTS = 64


def bind_rtp_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """An RTP socket on an ephemeral port and an RTCP socket on the port after it.

    Our SDP offer names only the RTP port, so the server sends RTCP to the next one
    (RFC 3550 §11, RFC 4566 §5.14). Held by the caller like a phone holds it, that
    port cannot be handed to another socket of the test meanwhile (another caller's
    SIP socket once got the server's RTCP reports).
    """
    for _ in range(PAIR_ATTEMPTS):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((host, 0))
        port = rtp.getsockname()[1]
        if port < 65535:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((host, port + 1))
                return rtp, rtcp
            except OSError:
                rtcp.close()
        rtp.close()
    raise RuntimeError(f"no free RTP/RTCP port pair on {host} in {PAIR_ATTEMPTS} attempts")


def place_call(target: tuple[str, int], *, hold: float, caller: str = "0600000000", timeout: float = 30.0,
               codec: str = "PCMU") -> CallRecord:
    """One call; ``codec`` is the one offered first (the server answers with it unless configured otherwise)."""
    rtp, rtcp = bind_rtp_pair()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", 0))
        return _call(sip, rtp, target, hold=hold, caller=caller, timeout=timeout, codec=codec)
    finally:
        sip.close()
        rtp.close()
        rtcp.close()  # the server's RTCP reports queue there unread


def _call(sip, rtp, target, *, hold, caller, timeout, codec) -> CallRecord:
    endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=sip.getsockname()[1], target_host=target[0], target_port=target[1])
    dialog = uac.Dialog(endpoint=endpoint, call_id=secrets.token_hex(8), from_tag=uac.new_tag(), caller=caller)
    record = CallRecord()
    offer = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp.getsockname()[1], session_id=1)
    if codec == "PCMA":
        offer = offer.replace(b"RTP/AVP 0 8 ", b"RTP/AVP 8 0 ")
    payload_type = {"PCMU": 0, "PCMA": 8}[codec]
    record.invite_sent = time.monotonic()
    sip.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer), target)
    deadline = record.invite_sent + timeout
    remote_rtp = None
    hang_up_at = None
    sequence = 0
    next_rtp = None
    silence = SILENCE[codec]
    while time.monotonic() < deadline:
        now = time.monotonic()
        if hang_up_at is not None and now >= hang_up_at and not record.server_hung_up:
            sip.sendto(dialog.bye(branch=uac.new_branch()), target)
            _await_response(sip, record, 5.0)
            break
        if record.server_hung_up:
            break
        if remote_rtp is not None and now >= next_rtp:
            header = struct.pack("!BBHII", 0x80, payload_type, sequence & 0xFFFF, (sequence * 160) & 0xFFFFFFFF, 0x1234)
            rtp.sendto(header + silence, remote_rtp)
            sequence += 1
            next_rtp += 0.020
        readable, _, _ = select.select([sip, rtp], [], [], 0.002)
        for sock in readable:
            data, _ = sock.recvfrom(65535)
            arrival = time.monotonic()
            if sock is rtp:
                if len(data) >= 12 and 192 <= data[1] <= 223:
                    continue  # RTCP (muxed)
                if len(data) >= 12:
                    _, second, seq, ts = struct.unpack_from("!BBHI", data)
                    record.packets.append(Packet(arrival, seq, ts, bool(second & 0x80), second & 0x7F, data[12:]))
                continue
            message = uac.parse_message_untrusted(data)
            if message.is_response:
                record.responses.append(message.status)
                if message.status >= 200 and record.answered_at is None and message.cseq[1] == "INVITE":
                    record.status = message.status
                    if message.status >= 300:
                        return record
                    record.answered_at = arrival
                    record.answer = message
                    dialog = dialog.confirmed(message)
                    sip.sendto(dialog.ack(), target)
                    answer = uac.parse_sdp_answer_untrusted(message.body)
                    remote_rtp = (answer.address, answer.port)
                    next_rtp = arrival
                    hang_up_at = arrival + hold
            elif message.method == "BYE":
                sip.sendto(uac.response_to(message, 200, "OK"), target)
                record.server_hung_up = True
    return record


def _await_response(sip, record: CallRecord, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([sip], [], [], 0.05)[0]:
            message = uac.parse_message_untrusted(sip.recvfrom(65535)[0])
            if message.is_response:
                record.responses.append(message.status)
                if message.status >= 200:
                    return
