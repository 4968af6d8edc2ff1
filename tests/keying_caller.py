"""A caller that keys DTMF digits the way baresip does, for the inbound RTP tests.

While a key is down it sends a 20 ms audio packet and an RFC 4733 event packet side
by side (about 100 packets a second), on one absolute schedule (packet n of the audio
at ``t0 + n·20 ms``), sharing one SSRC and one sequence space (RFC 4733 §2.1). Each
event repeats its start timestamp with a growing duration and ends with three end
packets (§2.5.1.4). It records when it sent each digit's first event packet
(``time.monotonic``, comparable with the server's on the same machine), the A.8
jitter of its own audio as it left, and the RTCP report blocks the server sends
back. Loopback only; bounded in time; synchronous (one thread, ``select``).
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time

import attrs

from eko_bench import uac
from raw_caller import bind_rtp_pair

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")
_EVENT_PAYLOAD_TYPE = uac.TELEPHONE_EVENT_PAYLOAD_TYPE  # as uac.sdp_offer offers it
_AUDIO = b"\xff" * 160
# An RFC 8285 one-byte-header extension block: profile 0xBEDE, one word, one element
# (id 1, one octet), padded. Phones put audio levels and such here.
_EXTENSION = bytes.fromhex("BEDE0001") + bytes.fromhex("10AA0000")
DIGIT_EVENTS = {digit: code for code, digit in enumerate("0123456789*#ABCD")}


@attrs.define
class KeyingRecord:
    status: int = 0
    first_event_sent: dict[int, float] = attrs.Factory(dict)  # digit index -> monotonic time
    bye_sent: float | None = None
    bye_status: int | None = None
    sent_jitter: float = 0.0  # A.8 jitter of our audio as it left, in timestamp units
    report_jitters: list[int] = attrs.Factory(list)  # from the server's RTCP report blocks
    audio_packets: int = 0


@attrs.frozen(kw_only=True)
class Keying:
    digits: str
    first_at: float = 0.5  # s after the answer
    spacing: float = 0.3  # s between key presses
    held: float = 0.1  # s a key stays down
    bye_after: float = 0.2  # s after the last key goes down
    extension: bool = False  # put a header extension on event packets
    talk_until: float | None = None  # s of audio before the first key (RTCP needs a few)


def key_digits(target: tuple[str, int], keying: Keying, *, caller: str = "0600000000",
               timeout: float = 30.0) -> KeyingRecord:
    """Call ``target``, key the digits, send BYE; what was sent and seen."""
    rtp, rtcp = bind_rtp_pair()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", 0))
        return _call(sip, rtp, rtcp, target, keying, caller=caller, timeout=timeout)
    finally:
        sip.close()
        rtp.close()
        rtcp.close()


def _event_schedule(keying: Keying, start: float) -> list[tuple[float, int, int, int, bool]]:
    """(send time, digit index, event code, duration, end) for every event packet."""
    packets = []
    lead = keying.talk_until or 0.0
    for index, digit in enumerate(keying.digits):
        down = start + lead + keying.first_at + index * keying.spacing
        updates = max(1, round(keying.held / 0.020))
        for step in range(updates):
            packets.append((down + step * 0.020, index, DIGIT_EVENTS[digit], (step + 1) * 160, False))
        for repeat in range(3):  # §2.5.1.4: the end packet three times
            packets.append((down + updates * 0.020, index, DIGIT_EVENTS[digit], updates * 160, True))
    return packets


def _call(sip, rtp, rtcp, target, keying: Keying, *, caller: str, timeout: float) -> KeyingRecord:
    endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=sip.getsockname()[1],
                            target_host=target[0], target_port=target[1])
    dialog = uac.Dialog(endpoint=endpoint, call_id=secrets.token_hex(8), from_tag=uac.new_tag(), caller=caller)
    record = KeyingRecord()
    offer = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp.getsockname()[1], session_id=1)
    sip.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer), target)
    deadline = time.monotonic() + timeout
    ssrc = secrets.randbits(32)
    sequence = secrets.randbits(16)
    base_timestamp = secrets.randbits(32)
    remote_rtp = None
    start = None
    events: list = []
    audio_index = 0
    transit = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if start is not None:
            # Audio first, then the events due at the same instant: side by side.
            while start + audio_index * 0.020 <= now:
                timestamp = (base_timestamp + audio_index * 160) & 0xFFFFFFFF
                rtp.sendto(_HEADER.pack(0x80, 0, sequence, timestamp, ssrc) + _AUDIO, remote_rtp)
                left = time.monotonic()
                # RFC 3550 A.8 on our own send times: what the wire shows, give or take the kernel.
                this_transit = left * 8000 - audio_index * 160
                if transit is not None:
                    record.sent_jitter += (abs(this_transit - transit) - record.sent_jitter) / 16
                transit = this_transit
                sequence = (sequence + 1) & 0xFFFF
                audio_index += 1
                record.audio_packets += 1
            while events and events[0][0] <= now:
                due, index, code, duration, end = events.pop(0)
                down = start + (keying.talk_until or 0.0) + keying.first_at + index * keying.spacing
                event_timestamp = (base_timestamp + round((down - start) / 0.020) * 160) & 0xFFFFFFFF
                first = index not in record.first_event_sent
                flags = 0x80 if end else 0
                header = _HEADER.pack(0x90 if keying.extension else 0x80,
                                      (0x80 if first else 0) | _EVENT_PAYLOAD_TYPE,
                                      sequence, event_timestamp, ssrc)
                extension = _EXTENSION if keying.extension else b""
                rtp.sendto(header + extension + _EVENT.pack(code, flags | 10, duration), remote_rtp)
                if first:
                    record.first_event_sent[index] = time.monotonic()
                sequence = (sequence + 1) & 0xFFFF
            last_down = max(record.first_event_sent.values(), default=None)
            if (len(record.first_event_sent) == len(keying.digits) and record.bye_sent is None
                    and now >= last_down + keying.bye_after):
                sip.sendto(dialog.bye(branch=uac.new_branch()), target)
                record.bye_sent = now
        wait = 0.002 if start is not None else 0.05
        for sock in select.select([sip, rtp, rtcp], [], [], wait)[0]:
            data, _ = sock.recvfrom(65535)
            if sock is rtcp or (sock is rtp and len(data) >= 8 and 200 <= data[1] <= 201):
                _note_report(data, record)
                continue
            if sock is rtp:
                continue
            message = uac.parse_message_untrusted(data)
            if message.is_response:
                if message.cseq[1] == "INVITE" and message.status >= 200 and start is None:
                    record.status = message.status
                    if message.status >= 300:
                        return record
                    dialog = dialog.confirmed(message)
                    sip.sendto(dialog.ack(), target)
                    answer = uac.parse_sdp_answer_untrusted(message.body)
                    remote_rtp = (answer.address, answer.port)
                    start = time.monotonic()
                    events = _event_schedule(keying, start)
                elif message.cseq[1] == "BYE" and message.status >= 200:
                    record.bye_status = message.status
                    return record
            elif message.method == "BYE":
                sip.sendto(uac.response_to(message, 200, "OK"), target)
                return record
    return record


def _note_report(data: bytes, record: KeyingRecord) -> None:
    """The jitter field of the first report block of an SR (200) or RR (201), RFC 3550 §6.4."""
    packet_type = data[1]
    count = data[0] & 0x1F
    first_block = 28 if packet_type == 200 else 8
    if count and len(data) >= first_block + 24:
        record.report_jitters.append(struct.unpack_from("!I", data, first_block + 12)[0])
