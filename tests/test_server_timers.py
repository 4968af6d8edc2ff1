"""The server's SIP timers, in process on trio's mock clock, at their exact times.

The whole server runs here (SIP transport, user agent, frame clock, receive hub)
with a frame clock that sleeps on trio's clock instead of a timerfd, so trio's
``MockClock`` drives every timer; the caller is a UDP socket on loopback. Checked:
- RFC 3261 §13.3.1.4: an unacknowledged 2xx is sent again at T1, 2·T1, 4·T1, then
  every T2, and after 64·T1 without an ACK the session ends with a BYE;
- RFC 4028 §10: a session the caller was to refresh and did not ends with a BYE at
  ``interval - min(32, interval/3)``; a session we refresh gets our UPDATE at half
  the interval, and when that UPDATE goes unanswered the session ends at whichever
  comes first, its expiry or the UPDATE's timer F (64·T1).
The real-time twins of the first check against a server process are in
``test_server_retransmit.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.media.clock import FrameClock
from eko_rtp.server.server import EkoServer
from server_helpers import PHRASES, free_port, rtp_range

T1 = 0.5  # sip.t1's default
T2 = 4.0  # RFC 3261 §17.1.2.2


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def answers_and_waits(call) -> None:
    await call.answer()
    await trio.sleep_forever()


class Caller:
    """A UDP caller on loopback that notes when each SIP message reached it."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.dialog: uac.Dialog | None = None

    async def bind(self) -> None:
        await self.sip.bind(("127.0.0.1", 0))
        await self.rtp.bind(("127.0.0.1", 0))
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=self.sip.getsockname()[1],
                                target_host="127.0.0.1", target_port=self.server[1])
        self.dialog = uac.Dialog(endpoint=endpoint, call_id=f"timers-{uac.new_tag()}", from_tag=uac.new_tag(),
                                 caller="0612345678")

    async def invite(self, extra_headers: str = "") -> None:
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=self.rtp.getsockname()[1], session_id=1)
        data = self.dialog.invite(branch=uac.new_branch(), sdp=offer)
        if extra_headers:
            data = data.replace(b"Content-Type:", extra_headers.encode() + b"Content-Type:", 1)
        await self.sip.sendto(data, self.server)

    async def next_message(self, timeout: float) -> tuple[float, uac.Message]:
        """The next message other than a provisional response, and when it came (mock time)."""
        with trio.fail_after(timeout):
            while True:
                message = uac.parse_message_untrusted(await self.sip.recv(65535))
                if message.is_response and message.status < 200:
                    continue
                return trio.current_time(), message

    async def send(self, data: bytes) -> None:
        await self.sip.sendto(data, self.server)

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


def make_server(built_cache, **sip) -> EkoServer:
    # No RTP from the caller for the whole test: the inactivity watchdog must stay out of the way.
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}", **sip},
                           "media": {"rtp_ports": rtp_range(20), "rtp_timeout": 3600, "rtp_timeout_before_ack": 3600,
                                     "max_call_duration": 7200}},
                          source=None)
    return EkoServer(config=config, cache=load_cache(built_cache, PHRASES), script=answers_and_waits,
                     clock=FrameClock())


async def test_an_unacknowledged_200_is_resent_on_the_rfc_schedule_then_ended_by_bye(built_cache, autojump_clock):
    server = make_server(built_cache)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        caller = Caller(bound["udp"][1])
        try:
            await caller.bind()
            await caller.invite()
            first_at, ok = await caller.next_message(5)
            assert ok.status == 200
            times = []
            while True:  # every retransmission until the BYE; 64·T1 = 32 s bounds it
                at, message = await caller.next_message(64 * T1 + 5)
                if message.method == "BYE":
                    bye_at = at
                    break
                assert message.status == 200 and message.call_id == ok.call_id
                times.append(round(at - first_at, 6))
            await caller.send(uac.response_to(message, 200, "OK"))
            with trio.fail_after(5):
                while server.calls:
                    await trio.sleep(0.1)
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    # T1, 2·T1, 4·T1 after each other (0.5, 1.5, 3.5 s), then T2 apart, until 64·T1.
    expected, interval, at = [], T1, 0.0
    while at + interval < 64 * T1:
        at += interval
        expected.append(at)
        interval = min(2 * interval, T2)
    assert times == expected
    assert round(bye_at - first_at, 6) == 64 * T1
    assert server.counters.calls_by_outcome == {"no_ack": 1}


async def test_a_session_the_caller_never_refreshes_ends_with_bye_before_it_expires(built_cache, autojump_clock):
    server = make_server(built_cache)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        caller = Caller(bound["udp"][1])
        try:
            await caller.bind()
            await caller.invite("Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")
            answered_at, ok = await caller.next_message(5)
            assert (ok.status, ok.header("session-expires")) == (200, "90;refresher=uac"), ok.reason
            await caller.send(caller.dialog.confirmed(ok).ack())
            bye_at, bye = await caller.next_message(120)
            assert bye.method == "BYE"
            await caller.send(uac.response_to(bye, 200, "OK"))
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    # §10: 90 - min(32, 90/3) = 60 s after the session was set up (the 200 OK's time).
    assert round(bye_at - answered_at, 6) == 60.0
    assert list(server.counters.calls_by_outcome) == ["session_expired"]


@pytest.mark.parametrize(("interval", "bye_after_answer", "outcome"), [
    (90, 60.0, "session_expired"),  # expiry (90 - 30 s) comes before timer F (45 + 32 s)
    (1800, 900.0 + 64 * T1, "refresh_failed"),  # timer F (900 + 32 s) comes first (§10)
])
async def test_we_refresh_at_half_the_interval_and_an_unanswered_refresh_ends_the_session(
        built_cache, autojump_clock, interval, bye_after_answer, outcome):
    server = make_server(built_cache, session_expires=interval)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        caller = Caller(bound["udp"][1])
        try:
            await caller.bind()
            await caller.invite("Supported: timer, update\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n"
                                f"Session-Expires: {interval};refresher=uas\r\n")
            answered_at, ok = await caller.next_message(5)
            assert (ok.status, ok.header("session-expires")) == (200, f"{interval};refresher=uas"), ok.reason
            await caller.send(caller.dialog.confirmed(ok).ack())
            update_at, update = await caller.next_message(interval)
            assert update.method == "UPDATE"
            resent = []
            while True:  # the caller never answers: the UPDATE is resent until timer F (64·T1)
                at, message = await caller.next_message(64 * T1 + 5)
                if message.method == "BYE":
                    bye_at = at
                    break
                assert message.method == "UPDATE" and message.cseq == update.cseq
                resent.append(round(at - update_at, 6))
            await caller.send(uac.response_to(message, 200, "OK"))
        finally:
            caller.close()
        nursery.cancel_scope.cancel()
    assert round(update_at - answered_at, 6) == interval / 2  # §10
    assert resent[:4] == [0.5, 1.5, 3.5, 7.5]  # timer E: T1 doubling up to T2 (§17.1.2.2)
    assert round(bye_at - answered_at, 6) == bye_after_answer
    assert list(server.counters.calls_by_outcome) == [outcome]
