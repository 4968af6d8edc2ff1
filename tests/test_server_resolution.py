"""A name in a caller's Contact is resolved off the event loop, and live calls keep their pace.

The server runs in this process with trio's resolver replaced by a slow one (1.5 s,
as a DNS server far away or timing out would be). One caller listens to its frames
while another caller, whose Contact names a host, is hung up on by the server: the
BYE must reach it once the name resolves, and the first caller's frames must keep
arriving every 20 ms meanwhile. Also: a listen address that is a name is refused
when the config is read.
"""

from __future__ import annotations

import pytest
import trio

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.errors import UserError
from eko_rtp.server.server import EkoServer
from server_helpers import PHRASES, free_port, rtp_range

SLOW_NAME = "slow.eko.test"
RESOLVE_SECONDS = 1.5


class SlowResolver(trio.abc.HostnameResolver):
    """Answers 127.0.0.1 for SLOW_NAME after RESOLVE_SECONDS; refuses every other name."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.asked.append(name)
        await trio.sleep(RESOLVE_SECONDS)
        if name != SLOW_NAME:
            raise trio.socket.gaierror(-2, "Name or service not known")
        return [(trio.socket.AF_INET, trio.socket.SOCK_DGRAM, 17, "", ("127.0.0.1", int(port)))]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


async def by_caller(call) -> None:
    await call.answer()
    if call.caller.from_user == "hangs_up":
        await trio.sleep(0.2)
        await call.hangup()
    await trio.sleep_forever()


class Caller:
    def __init__(self, name: str, host: str, server_port: int):
        self.name = name
        self.host = host
        self.server = ("127.0.0.1", server_port)
        self.sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.arrivals: list[float] = []
        self.bye_at: float | None = None

    async def call(self) -> None:
        await self.sip.bind(("127.0.0.1", 0))
        await self.rtp.bind(("127.0.0.1", 0))
        endpoint = uac.Endpoint(local_host=self.host, local_port=self.sip.getsockname()[1],
                                target_host="127.0.0.1", target_port=self.server[1])
        dialog = uac.Dialog(endpoint=endpoint, call_id=f"{self.name}-{uac.new_tag()}", from_tag=uac.new_tag(),
                            caller=self.name)
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=self.rtp.getsockname()[1], session_id=1)
        await self.sip.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer), self.server)
        while True:
            message = uac.parse_message_untrusted(await self.sip.recv(65535))
            if message.is_response and message.status == 200:
                await self.sip.sendto(dialog.confirmed(message).ack(), self.server)
                return

    async def listen(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            while True:
                data = await self.rtp.recv(2048)
                if len(data) >= 12 and not 192 <= data[1] <= 223:
                    self.arrivals.append(trio.current_time())

    async def wait_for_bye(self) -> None:
        while True:
            message = uac.parse_message_untrusted(await self.sip.recv(65535))
            if message.method == "BYE":
                self.bye_at = trio.current_time()
                await self.sip.sendto(uac.response_to(message, 200, "OK"), self.server)
                return

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


async def test_a_slow_name_delays_only_its_own_bye(built_cache):
    resolver = SlowResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}"},
                           "media": {"rtp_ports": rtp_range(20)}}, source=None)
    server = EkoServer(config=config, cache=load_cache(built_cache, PHRASES), script=by_caller)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(server.run)
                port = bound["udp"][1]
                listener = Caller("listens", "127.0.0.1", port)
                named = Caller("hangs_up", SLOW_NAME, port)
                await listener.call()
                await named.call()
                hung_up_from = trio.current_time()
                async with trio.open_nursery() as both:
                    both.start_soon(listener.listen, RESOLVE_SECONDS + 1.0)
                    both.start_soon(named.wait_for_bye)
                nursery.cancel_scope.cancel()
    finally:
        trio.socket.set_custom_hostname_resolver(None)
        listener.close()
        named.close()
    assert set(resolver.asked) == {SLOW_NAME}  # the BYE (and its retransmissions while it resolved)
    assert named.bye_at is not None and named.bye_at - hung_up_from >= RESOLVE_SECONDS
    gaps = [later - earlier for earlier, later in zip(listener.arrivals, listener.arrivals[1:])]
    assert len(gaps) > 100 and max(gaps) < 0.060, max(gaps)  # 20 ms frames; a stalled loop would show seconds
    assert server.transport.resolution_failures == 0


@pytest.mark.parametrize("listen", ["localhost:5060", "sip.example.org:5060"])
def test_a_listen_address_by_name_is_refused_with_the_key(listen):
    with pytest.raises(UserError) as caught:
        build_config({"sip": {"listen": listen}}, source="/etc/eko-rtp/eko-rtp.toml")
    host = listen.rpartition(":")[0]
    assert str(caught.value) == (f"/etc/eko-rtp/eko-rtp.toml, key 'sip.listen': {host!r} is not an IP address "
                                 "(write 127.0.0.1 or ::1 for localhost)")
