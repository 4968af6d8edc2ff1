"""Retransmissions against a real ``eko-rtp serve``: a repeated INVITE and the 2xx schedule.

RFC 3261 §17.2.1: a retransmitted INVITE is absorbed by its server transaction,
which repeats its last provisional response; it never starts a second call.
§13.3.1.4: the UAS core retransmits its 2xx, from T1 doubling up to T2, until the
ACK comes (and gives up after 64·T1). The server runs the script
``ring_then_greet``, which answers 1.5 s after the INVITE, so the repeated INVITE
surely arrives before the answer. Real clock (the server is another process), with
generous tolerances.
"""

from __future__ import annotations

import re
import time

import pytest

from eko_bench import uac
from server_helpers import ServerProcess
from test_server_torture import (
    UdpPeer,
    collect,
    describe,
    final_for,
    in_dialog,
    receive_rtp,
    rtp_socket,  # noqa: F401 (a fixture)
    sip_request,
    unique,
)

T1 = 0.5  # the server's default sip.t1


@pytest.fixture(scope="module")
def server(built_cache):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:ring_then_greet") as process:
        yield process


def invite_for(peer: UdpPeer, rtp_port: int) -> bytes:
    offer = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp_port, session_id=1)
    return sip_request("INVITE", port=peer.port, call_id=unique("retransmit"), body=offer)


def hang_up(server: ServerProcess, peer: UdpPeer, invite: uac.Message, ok: uac.Message) -> list[uac.Message]:
    """BYE; return what came before its 200 (stray 200s to the INVITE would show here)."""
    peer.send(in_dialog("BYE", invite, ok, port=peer.port, transport="UDP", cseq=invite.cseq[0] + 1))
    *before, bye_ok = collect(peer, final_for(invite.call_id, "BYE"))
    assert bye_ok.status == 200, describe(bye_ok)
    server.wait_for_log(rf"\[call={re.escape(invite.call_id)}\]: ended \(remote_bye\)")
    return before


def test_repeated_invite_gets_100_twice_and_starts_one_call(server, rtp_socket):
    with UdpPeer(server.address) as peer:
        data = invite_for(peer, rtp_socket.getsockname()[1])
        invite = uac.parse_message_untrusted(data)
        peer.send(data)
        [first] = collect(peer, lambda m: m.status == 100, timeout=1.0)
        peer.send(data)  # same branch, before the answer (which comes at 1.5 s)
        [second] = collect(peer, lambda m: m.status == 100, timeout=1.0)
        assert first.cseq == second.cseq == (1, "INVITE")
        # The 200 and, since we hold the ACK back, its first retransmission T1 later.
        oks = collect(peer, final_for(invite.call_id, "INVITE"), timeout=4.0)
        oks += collect(peer, final_for(invite.call_id, "INVITE"), timeout=2 * T1 + 1.0)
        assert [m.status for m in oks] == [200, 200], [describe(m) for m in oks]
        assert oks[0] == oks[1]  # a retransmission: the same response, same To tag
        peer.send(in_dialog("ACK", invite, oks[0], port=peer.port, transport="UDP", cseq=1))
        # 2 s of greeting: the retransmission due 1.5 s after the first 200 must not come.
        receive_rtp(rtp_socket, 100, timeout=5.0)
        assert hang_up(server, peer, invite, oks[0]) == []
    started = [line for line in server.lines if f"[call={invite.call_id}]: INVITE received" in line]
    assert len(started) == 1, started
    assert len([line for line in server.lines if f"[call={invite.call_id}]: 200 OK sent" in line]) == 1


def test_200_is_retransmitted_at_t1_then_doubling_until_ack(server, rtp_socket):
    with UdpPeer(server.address) as peer:
        data = invite_for(peer, rtp_socket.getsockname()[1])
        invite = uac.parse_message_untrusted(data)
        peer.send(data)
        collect(peer, lambda m: m.status == 100, timeout=1.0)
        arrivals, oks = [], []
        for _ in range(3):  # the 200 at 1.5 s, then at +0.5 s and +1.5 s (§13.3.1.4: T1, 2·T1, ...)
            [ok] = collect(peer, final_for(invite.call_id, "INVITE"), timeout=4.0)
            arrivals.append(time.monotonic())
            oks.append(ok)
        assert oks[0] == oks[1] == oks[2]
        offsets = [round(t - arrivals[0], 3) for t in arrivals]
        assert abs(offsets[1] - T1) < 0.2 and abs(offsets[2] - 3 * T1) < 0.3, offsets
        peer.send(in_dialog("ACK", invite, oks[0], port=peer.port, transport="UDP", cseq=1))
        receive_rtp(rtp_socket, 110, timeout=5.0)  # past +3.5 s: no more 200s after the ACK
        assert hang_up(server, peer, invite, oks[0]) == []
