"""Media goes only where it should: the whole server in process, on trio's mock clock, over loopback.

127.0.0.2 and 127.0.0.3 are loopback addresses too: a victim and a stranger on
other "hosts" of the same machine, whose sockets count what reaches them.

- Reflection: an INVITE whose SDP names someone else (the victim), never ACKed,
  sends the victim nothing, and the call ends ``media.rtp_timeout_before_ack`` after
  the answer (the BYE itself waits for the 2xx's ACK timeout, RFC 3261 §15). ACKed,
  a victim on our own host (loopback outside ``trusted_networks``) still gets
  nothing, and the call ends at ``media.rtp_timeout`` whatever a stranger sends to
  keep it going.
- Hijack: a stranger's audio and RFC 4733 keys, once the caller's media is latched,
  neither take the caller's audio nor become digits; they are counted.
- NAT: a caller whose SDP names its private inside address hears us where its
  packets come from.
The real-time twins against a server process are in test_server_media_guard_process.py.
"""

from __future__ import annotations

import logging
import re
import struct

import pytest
import trio
import trio.testing

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.media.clock import FrameClock
from eko_rtp.server.server import EkoServer
from server_helpers import PHRASES, free_port, rtp_range

T1 = 0.5
HEADER = struct.Struct("!BBHII")
SILENCE = b"\xff" * 160
ONLY_THE_TRUNK = ["127.0.0.1/32"]  # 127.0.0.2 and 127.0.0.3 untrusted


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def answers_and_waits(call) -> None:
    await call.answer()
    await trio.sleep_forever()


def make_server(built_cache, script=answers_and_waits, **media) -> EkoServer:
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}"},
                           "media": {"rtp_ports": rtp_range(20), "max_call_duration": 600, **media}}, source=None)
    return EkoServer(config=config, cache=load_cache(built_cache, PHRASES), script=script, clock=FrameClock())


class Counter:
    """A UDP socket pair (RTP, RTCP) on ``host`` that notes every datagram that reaches it."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.rtp = self.rtcp = None
        self.packets: list[tuple[float, bytes]] = []
        self.rtcp_packets = 0

    async def bind(self) -> None:
        for _ in range(50):  # an even port with the next one free (RFC 3550 §11)
            rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            rtcp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await rtp.bind((self.host, 0))
            port = rtp.getsockname()[1]
            try:
                if port % 2 or port == 65535:
                    raise OSError
                await rtcp.bind((self.host, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            self.rtp, self.rtcp = rtp, rtcp
            return
        raise RuntimeError("no RTP/RTCP port pair free")

    @property
    def address(self) -> tuple[str, int]:
        return self.rtp.getsockname()

    async def count(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._count_rtcp)
            while True:
                data = await self.rtp.recv(2048)
                if len(data) >= 2 and 192 <= data[1] <= 223:
                    self.rtcp_packets += 1  # muxed RTCP
                else:
                    self.packets.append((trio.current_time(), data))

    async def _count_rtcp(self) -> None:
        while True:
            await self.rtcp.recv(2048)
            self.rtcp_packets += 1

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class Caller:
    """A SIP UA on 127.0.0.1 whose SDP names ``media`` (its own socket, a victim's, or a NAT's inside)."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.dialog: uac.Dialog | None = None
        self.ok: uac.Message | None = None
        self.our_rtp: tuple[str, int] | None = None  # the server's RTP address, from its answer

    async def invite(self, media: tuple[str, int]) -> None:
        await self.sip.bind(("127.0.0.1", 0))
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=self.sip.getsockname()[1],
                                target_host="127.0.0.1", target_port=self.server[1])
        self.dialog = uac.Dialog(endpoint=endpoint, call_id=f"guard-{uac.new_tag()}", from_tag=uac.new_tag(),
                                 caller="0612345678")
        offer = uac.sdp_offer(address=media[0], rtp_port=media[1], session_id=1)
        await self.sip.sendto(self.dialog.invite(branch=uac.new_branch(), sdp=offer), self.server)

    async def answered(self) -> float:
        """Wait for the 200 OK; when it came."""
        at, ok = await self.next_message(5)
        assert ok.status == 200, ok.status
        self.ok = ok
        self.dialog = self.dialog.confirmed(ok)
        answer = uac.parse_sdp_answer_untrusted(ok.body)
        self.our_rtp = (answer.address, answer.port)
        return at

    async def ack(self) -> None:
        await self.sip.sendto(self.dialog.ack(), self.server)

    async def bye(self) -> None:
        await self.sip.sendto(self.dialog.bye(branch=uac.new_branch()), self.server)

    async def next_message(self, timeout: float) -> tuple[float, uac.Message]:
        """The next message other than a provisional response or a 200 OK resent, and when it came."""
        with trio.fail_after(timeout):
            while True:
                message = uac.parse_message_untrusted(await self.sip.recv(65535))
                resent_ok = self.ok is not None and message.cseq[1] == "INVITE"
                if message.is_response and (message.status < 200 or resent_ok):
                    continue
                return trio.current_time(), message

    def close(self) -> None:
        self.sip.close()


def audio(sequence: int, ssrc: int) -> bytes:
    return HEADER.pack(0x80, 0, sequence & 0xFFFF, (sequence * 160) & 0xFFFFFFFF, ssrc) + SILENCE


def key_end(event: int, sequence: int, ssrc: int) -> bytes:
    """An RFC 4733 end-of-event packet (§2.5.1.4: sent three times), payload type 101."""
    return HEADER.pack(0x80, 101, sequence, 8000, ssrc) + struct.pack("!BBH", event, 0x80 | 10, 800)


async def talk(sock, destination: tuple[str, int], *, until: float, ssrc: int = 0xCA11E4,
               first_sequence: int = 0) -> None:
    """A phone's 20 ms RTP from ``sock`` to ``destination``, on the absolute schedule, until ``until``."""
    start = trio.current_time()
    index = 0
    while start + index * 0.020 < until:
        await sock.sendto(audio(first_sequence + index, ssrc), destination)
        index += 1
        await trio.sleep_until(start + index * 0.020)


def ended_line(caplog) -> str:
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("ended (")]
    assert len(lines) == 1, lines
    return lines[0]


async def test_an_unacknowledged_invite_naming_a_victim_sends_it_nothing_and_ends_after_5_s(
        built_cache, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    server = make_server(built_cache, trusted_networks=ONLY_THE_TRUNK)
    victim = Counter("127.0.0.2")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        await victim.bind()
        nursery.start_soon(victim.count)
        attacker = Caller(bound["udp"][1])
        try:
            await attacker.invite(victim.address)
            answered_at = await attacker.answered()
            bye_at, bye = await attacker.next_message(64 * T1 + 5)  # never ACKed: the BYE waits for timer H
            assert not server.calls
            await trio.sleep(10)
        finally:
            attacker.close()
        nursery.cancel_scope.cancel()
    victim.close()
    assert bye.method == "BYE" and round(bye_at - answered_at, 6) == 64 * T1
    assert (len(victim.packets), victim.rtcp_packets) == (0, 0)  # was ~1,600 RTP packets, 275 KB
    assert server.counters.calls_by_outcome == {"rtp_timeout": 1}
    assert re.match(r"ended \(rtp_timeout\) after 5000 ms", ended_line(caplog))
    assert "no ACK and no RTP for 5.0 s after the answer; hanging up" in caplog.text


async def test_acknowledged_a_victim_on_our_own_host_gets_nothing_and_no_stranger_keeps_the_call_up(
        built_cache, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    server = make_server(built_cache, trusted_networks=ONLY_THE_TRUNK, rtp_timeout=10)
    victim, stranger = Counter("127.0.0.2"), Counter("127.0.0.3")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        for counter in (victim, stranger):
            await counter.bind()
            nursery.start_soon(counter.count)
        attacker = Caller(bound["udp"][1])
        try:
            await attacker.invite(victim.address)
            await attacker.answered()
            await trio.sleep(0.5)
            await attacker.ack()
            acked_at = trio.current_time()

            async def keep_alive() -> None:
                # The stranger's RTP and RTCP (a receiver report) on the call's ports, every second.
                report = struct.pack("!BBHI", 0x80, 201, 1, 0xBAD)
                await trio.sleep(0.25)  # at 0.25 s, 1.25 s ... 9.25 s after the ACK: 10 of each
                while True:
                    await stranger.rtp.sendto(audio(7, 0xBAD), attacker.our_rtp)
                    await stranger.rtcp.sendto(report, (attacker.our_rtp[0], attacker.our_rtp[1] + 1))
                    await trio.sleep(1.0)

            nursery.start_soon(keep_alive)
            bye_at, bye = await attacker.next_message(60)
            await attacker.sip.sendto(uac.response_to(bye, 200, "OK"), attacker.server)
            await trio.sleep(1)
        finally:
            attacker.close()
        nursery.cancel_scope.cancel()
    victim.close()
    stranger.close()
    assert bye.method == "BYE" and round(bye_at - acked_at, 6) == 10.0
    assert server.counters.calls_by_outcome == {"rtp_timeout": 1}
    # 127.0.0.2 is loopback outside trusted_networks: no caller can mean it for us, and
    # the ACK does not change that (a public address would get media from the ACK to
    # the BYE, test_stream_guard.py). Nothing to the stranger either.
    assert (len(victim.packets), victim.rtcp_packets) == (0, 0)
    assert (len(stranger.packets), stranger.rtcp_packets) == (0, 0)
    assert "stray_packets=20" in ended_line(caplog)  # 10 RTP and 10 RTCP


def digits_and_greeting(digits: list):
    async def script(call) -> None:
        await call.answer()
        async with trio.open_nursery() as nursery:
            async def read_digits() -> None:
                async for digit in call.dtmf:
                    digits.append(digit)
            nursery.start_soon(read_digits)
            await call.say("greet")
            await trio.sleep_forever()
    return script


@pytest.mark.parametrize("trusted", [["127.0.0.0/8", "::1/128"], ONLY_THE_TRUNK], ids=["default", "trunk-only"])
@pytest.mark.parametrize("stranger_sends", ["one-packet-while-the-phone-is-quiet", "a-stream-between-the-phones"])
async def test_a_strangers_packets_and_keys_neither_take_the_greeting_nor_become_digits(
        built_cache, autojump_clock, caplog, trusted, stranger_sends):
    caplog.set_level(logging.INFO)
    digits: list[str] = []
    server = make_server(built_cache, digits_and_greeting(digits), trusted_networks=trusted)
    phone, stranger = Counter("127.0.0.1"), Counter("127.0.0.2")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        for counter in (phone, stranger):
            await counter.bind()
            nursery.start_soon(counter.count)
        caller = Caller(bound["udp"][1])
        try:
            await caller.invite(phone.address)
            answered_at = await caller.answered()
            await caller.ack()
            if stranger_sends == "one-packet-while-the-phone-is-quiet":
                # The phone is quiet from 0.5 s to 3.5 s (silence suppression, longer than
                # relatch_after); one packet from elsewhere at 3 s took the greeting before.
                async def phone_talks() -> None:
                    await talk(phone.rtp, caller.our_rtp, until=answered_at + 0.5)
                    await trio.sleep_until(answered_at + 3.5)
                    await talk(phone.rtp, caller.our_rtp, until=answered_at + 5.0, first_sequence=25)

                nursery.start_soon(phone_talks)
                await trio.sleep_until(answered_at + 3.0)
                await stranger.rtp.sendto(audio(1000, 0x5EED), caller.our_rtp)
                strays = 1
            else:
                # A stream of its own, 10 ms behind each of the phone's packets, for a second.
                nursery.start_soon(lambda: talk(phone.rtp, caller.our_rtp, until=answered_at + 5.0))
                await trio.sleep_until(answered_at + 1.01)
                await talk(stranger.rtp, caller.our_rtp, until=answered_at + 2.0, ssrc=0x5EED)
                strays = 50
            for sequence in (1001, 1002, 1003):  # then a "5" keyed
                await stranger.rtp.sendto(key_end(5, sequence, 0x5EED), caller.our_rtp)
            await trio.sleep_until(answered_at + 5.0)
            await caller.bye()
            await trio.sleep(1)
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    phone.close()
    stranger.close()
    assert stranger.packets == [] and digits == []
    # Every frame of the 5 s reached the phone, in sequence: none went elsewhere.
    sequences = [HEADER.unpack_from(data)[2] for _, data in phone.packets]
    assert 250 <= len(sequences) <= 251  # the frame due at 5.0 s may leave before the BYE is read
    assert all((later - earlier) & 0xFFFF == 1 for earlier, later in zip(sequences, sequences[1:]))
    assert f"stray_packets={strays + 3}" in ended_line(caplog)
    assert server.media_counters.packets_stray == strays + 3


async def test_a_caller_behind_a_nat_hears_the_greeting_where_its_packets_come_from(
        built_cache, autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="eko_rtp")
    server = make_server(built_cache, digits_and_greeting([]))
    phone = Counter("127.0.0.1")  # the NAT's outside face
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        await phone.bind()
        face = phone.address
        nursery.start_soon(phone.count)
        caller = Caller(bound["udp"][1])
        try:
            await caller.invite(("10.0.0.5", 4000))  # its SDP names its inside address
            answered_at = await caller.answered()
            nursery.start_soon(lambda: talk(phone.rtp, caller.our_rtp, until=answered_at + 2.0))
            await trio.sleep(0.1)
            await caller.ack()
            await trio.sleep_until(answered_at + 2.0)
            await caller.bye()
            await trio.sleep(1)
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    phone.close()
    # Nothing before its first packet (10.0.0.5 is not ours to send to), then every frame to its face.
    assert 99 <= len(phone.packets) <= 100
    assert phone.packets[0][1][1] & 0x80  # the greeting starts whole, with its marker
    assert f"media latched to 127.0.0.1:{face[1]} (learned" in caplog.text
    assert server.media_counters.send_errors == 0  # nothing was sent to 10.0.0.5


async def test_a_caller_that_sends_media_before_its_ack_is_kept_until_it_stops(built_cache, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    server = make_server(built_cache)
    phone = Counter("127.0.0.1")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        await phone.bind()
        nursery.start_soon(phone.count)
        caller = Caller(bound["udp"][1])
        try:
            await caller.invite(phone.address)
            answered_at = await caller.answered()
            # Its ACKs are all lost; its media flows for 8 s, more than rtp_timeout_before_ack.
            nursery.start_soon(lambda: talk(phone.rtp, caller.our_rtp, until=answered_at + 8.0))
            with trio.fail_after(20):
                while server.calls:
                    await trio.sleep(0.01)
            ended_at = trio.current_time()
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    phone.close()
    # Ended 5 s after its last packet (read by the receive hub within a drain, 10-20 ms).
    assert answered_at + 8.0 + 5.0 - 0.03 <= ended_at <= answered_at + 8.0 + 5.0 + 0.03
    assert server.counters.calls_by_outcome == {"rtp_timeout": 1}
