"""The bench's --hostile-sip flood (issue 17): exact datagrams, an absolute schedule, flag errors."""

from __future__ import annotations

import re
import socket

import pytest
import trio
import trio.testing

from eko_bench import campaign
from eko_bench.cli import build_parser
from eko_bench.hostile_sip import HostileSip, flooding, parse_hostile_sip, stuffed_options
from eko_bench.run import Plan
from eko_rtp.errors import UserError
from eko_rtp.sip.message import parse_message_untrusted
from eko_rtp.sip.errors import SipParseError


@pytest.mark.parametrize("size", [512, 1001, 8000, 60000, 65507])
def test_the_stuffed_options_has_exactly_the_size_asked(size):
    data = stuffed_options(size, target=("127.0.0.1", 5060), source=("127.0.0.2", 40000))
    assert len(data) == size
    head = data.split(b"\r\n")
    assert head[0] == b"OPTIONS sip:eko@127.0.0.1:5060 SIP/2.0"
    assert head[1].startswith(b"Via: SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bK-hostile-00000000;rport;a;a")
    assert data.endswith(b"Call-ID: hostile-00000000\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_the_server_refuses_the_stuffed_via_for_its_length():
    with pytest.raises(SipParseError, match="513 header line 'Via' of 59"):
        parse_message_untrusted(stuffed_options(60000, target=("127.0.0.1", 5060), source=("127.0.0.2", 1)),
                                transport="udp")


@pytest.mark.parametrize("text, expected", [("30:60000", HostileSip(rate=30.0, size=60000)),
                                            ("0.5:512", HostileSip(rate=0.5, size=512))])
def test_the_flag_reads_rate_and_size(text, expected):
    assert parse_hostile_sip(text) == expected
    assert build_parser().parse_args(["--hostile-sip", text]).hostile_sip == expected


@pytest.mark.parametrize("text", ["30", "30:", "x:600", "0:600", "1001:600", "30:511", "30:65508"])
def test_the_flag_refuses_what_it_cannot_send(text):
    with pytest.raises(UserError) as caught:
        parse_hostile_sip(text)
    assert caught.value.key == "--hostile-sip"
    assert "RATE" in str(caught.value)


def test_the_flood_is_for_the_server_only():
    with pytest.raises(UserError, match="--hostile-sip floods the server beside its calls"):
        campaign.Options(target="peer", address=None, spawn=False, server_cpus=None, server_pid=None,
                         cache_dir="/tmp/cache", rtp_ports="30000-39999", server_args=(), plan=Plan(calls=1, concurrency=1, rate=1.0, hold=1.0),
                         ramp=False, hostile_sip=HostileSip(rate=1.0, size=600))


def test_the_flood_sends_on_an_absolute_schedule_with_a_fresh_branch_each():
    received: list[bytes] = []

    async def main():
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
            await target.bind(("127.0.0.1", 0))
            address = target.getsockname()

            async def receive():
                while True:
                    data, source = await target.recvfrom(65536)
                    received.append(data)
                    await target.sendto(b"SIP/2.0 400 Bad Request\r\n\r\n", source)  # counted, not read

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                async with flooding(HostileSip(rate=100.0, size=2000), target=address) as flood:
                    await trio.sleep(0.095)  # datagrams 0..9 are due at 0, 10, ..., 90 ms
                    await trio.sleep(0.001)  # (and the target's answers have come back)
                nursery.cancel_scope.cancel()
        return flood

    flood = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (flood.sent, flood.bytes_sent, flood.responses, flood.send_errors) == (10, 20000, 10, 0)
    assert flood.source[0] == "127.0.0.2" and flood.max_lateness == 0.0
    assert [re.findall(rb"(?:branch=|Call-ID: )\S+?(?=;|\r)", data) for data in received[:2]] == [
        [b"branch=z9hG4bK-hostile-00000000", b"Call-ID: hostile-00000000"],
        [b"branch=z9hG4bK-hostile-00000001", b"Call-ID: hostile-00000001"]]
    assert all(len(data) == 2000 for data in received)
    assert flood.summary()["achieved_rate"] is not None
