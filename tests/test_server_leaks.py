"""No task, socket, port or mapping outlives its call.

The server runs in this process (``EkoServer`` inside trio, the real config, cache,
sockets and frame clock) so its insides can be counted. A bounded raw UDP SIP client
drives 200 calls through it in concurrent batches, in four shapes: answered and hung
up by the caller after some RTP both ways, cancelled before the answer, hung up by
the server (the script sends BYE), and refused (an offer with no common codec, 488).
Afterwards every count is back to its value before the first call: open file
descriptors, live trio tasks, calls, RTP ports, media sockets in the receive hub,
streams in the frame clock, dialogs in the SIP core, TCP connections.
"""

from __future__ import annotations

import gc
import os
import struct

import trio

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.server.server import EkoServer
from raw_caller import bind_rtp_pair
from server_helpers import PHRASES, free_port, rtp_range
from test_server_torture import no_common_codec_offer

CALLS = 200
BATCH = 25
RTP_PACKETS = 5
STEP_TIMEOUT = 5.0  # any single SIP exchange on loopback
SHAPES = ("caller_bye", "cancel", "server_bye", "refused")


async def leak_script(call) -> None:
    """What the server does, chosen by the caller's user part (the shape of the call)."""
    shape = call.caller.from_user
    if shape == "cancel":
        await trio.sleep(30)  # ring until the CANCEL comes (answer_timeout is raised below)
    elif shape == "server_bye":
        await call.answer()
        await trio.sleep(0.2)  # a few frames of the stream, then our BYE
        await call.hangup()
    else:
        await call.answer()
        await trio.sleep_forever()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    def count(task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count(trio.lowlevel.current_root_task())


class Caller:
    """One call's client side: its own SIP and RTP sockets, closed when the call is over."""

    def __init__(self, shape: str, index: int, server_port: int):
        self.shape = shape
        self.sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.server = ("127.0.0.1", server_port)
        self.index = index

    async def run(self) -> None:
        rtp, rtcp = bind_rtp_pair()  # the port after RTP too: the server's RTCP goes there
        self.rtp = trio.socket.from_stdlib_socket(rtp)
        with self.sip, self.rtp, rtcp:
            await self.sip.bind(("127.0.0.1", 0))
            endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=self.sip.getsockname()[1],
                                    target_host="127.0.0.1", target_port=self.server[1])
            self.dialog = uac.Dialog(endpoint=endpoint, call_id=f"leak-{self.index}-{uac.new_tag()}",
                                     from_tag=uac.new_tag(), caller=self.shape)
            await getattr(self, self.shape)()

    async def send(self, data: bytes, to: tuple = None) -> None:
        await self.sip.sendto(data, to or self.server)

    async def expect(self, want) -> uac.Message:
        """The next message ``want`` accepts; others (100 Trying, retransmissions) are skipped."""
        with trio.fail_after(STEP_TIMEOUT):
            for _ in range(50):
                data, _ = await self.sip.recvfrom(65535)
                message = uac.parse_message_untrusted(data)
                if want(message):
                    return message
        raise AssertionError(f"call {self.index} ({self.shape}): too many unexpected messages")

    def final(self, method: str):
        return lambda m: m.is_response and m.status >= 200 and m.cseq[1] == method

    async def invite(self, sdp: bytes) -> tuple[bytes, uac.Message]:
        branch = uac.new_branch()
        await self.send(self.dialog.invite(branch=branch, sdp=sdp))
        return branch, await self.expect(self.final("INVITE"))

    def offer(self) -> bytes:
        return uac.sdp_offer(address="127.0.0.1", rtp_port=self.rtp.getsockname()[1], session_id=self.index)

    async def answered(self) -> uac.MediaAnswer:
        _, ok = await self.invite(self.offer())
        assert ok.status == 200, (self.shape, ok.status, ok.reason)
        self.dialog = self.dialog.confirmed(ok)
        await self.send(self.dialog.ack())
        media = uac.parse_sdp_answer_untrusted(ok.body)
        header = struct.Struct("!BBHII")
        for sequence in range(RTP_PACKETS):
            packet = header.pack(0x80, 0, sequence, sequence * 160, 0x1000 + self.index) + b"\xff" * 160
            await self.rtp.sendto(packet, (media.address, media.port))
        with trio.fail_after(STEP_TIMEOUT):
            await self.rtp.recv(2048)  # the greeting (or silence) reaches our SDP port
        return media

    async def caller_bye(self) -> None:
        await self.answered()
        await self.send(self.dialog.bye(branch=uac.new_branch()))
        assert (await self.expect(self.final("BYE"))).status == 200

    async def server_bye(self) -> None:
        await self.answered()
        bye = await self.expect(lambda m: m.method == "BYE")
        await self.send(uac.response_to(bye, 200, "OK"))

    async def refused(self) -> None:
        branch, answer = await self.invite(no_common_codec_offer(self.rtp.getsockname()[1]))
        assert answer.status == 488, (answer.status, answer.reason)
        await self.send(self.dialog.ack_failure(answer, branch=branch))

    async def cancel(self) -> None:
        branch = uac.new_branch()
        invite = self.dialog.invite(branch=branch, sdp=self.offer())
        await self.send(invite)
        await self.expect(lambda m: m.status == 100)
        # §9.1: the CANCEL copies the INVITE's Request-URI, top Via (branch), From, To, Call-ID, CSeq number.
        head = invite.split(b"\r\n\r\n")[0].decode().split("\r\n")
        kept = [line for line in head[1:] if line.split(":")[0].lower() in ("via", "from", "to", "call-id")]
        cancel = "\r\n".join([head[0].replace("INVITE", "CANCEL", 1), *kept, "CSeq: 1 CANCEL", "Max-Forwards: 70",
                              "Content-Length: 0", "", ""]).encode()
        await self.send(cancel)
        terminated = await self.expect(self.final("INVITE"))
        assert terminated.status == 487, (terminated.status, terminated.reason)
        await self.send(self.dialog.ack_failure(terminated, branch=branch))


def snapshot(server: EkoServer) -> dict:
    return {
        "calls": len(server.calls),
        "ports in use": server.ports.in_use,
        "hub sockets": server.hub.sockets,
        "clock streams": server.clock.streams,
        "SIP dialogs": len(server.ua.call_ids),
        "TCP connections": len(server.transport.connections),
    }


async def test_200_calls_leave_nothing_behind(built_cache):
    config = build_config({
        "sip": {"listen": f"127.0.0.1:{free_port()}", "answer_timeout": 30.0},
        "media": {"rtp_ports": rtp_range(200)},
    }, source=None)
    cache = load_cache(built_cache, PHRASES)
    server = EkoServer(config=config, cache=cache, script=leak_script)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run)
            port = bound["udp"][1]
            idle = snapshot(server)
            # Earlier tests' objects (a subprocess's pipes, a socket) may still await the
            # collector, which would close their descriptors in the middle of this count.
            gc.collect()
            fds, tasks = open_fds(), live_tasks()
            for start in range(0, CALLS, BATCH):
                async with trio.open_nursery() as batch:
                    for index in range(start, start + BATCH):
                        batch.start_soon(Caller(SHAPES[index % len(SHAPES)], index, port).run)
            # The server finishes each call after its last message; the clock drops a
            # closed stream at its next due frame (20 ms): give both a bounded moment.
            with trio.fail_after(5):
                while snapshot(server) != idle or live_tasks() != tasks:
                    await trio.sleep(0.02)
            gc.collect()
            assert open_fds() <= fds  # more is a leak; fewer, someone else's late close
            outcomes = dict(server.counters.calls_by_outcome)
            nursery.cancel_scope.cancel()
    assert idle == {"calls": 0, "ports in use": 0, "hub sockets": 0, "clock streams": 0, "SIP dialogs": 0,
                    "TCP connections": 0}
    per_shape = CALLS // len(SHAPES)
    assert outcomes == {"remote_bye": per_shape, "cancelled": per_shape, "local_bye": per_shape}, outcomes
    assert server.counters.calls_rejected == per_shape
    assert server.counters.internal_errors == 0
