"""SIP over TCP under abuse, on a real ``eko-rtp serve`` over loopback (issue 17).

A TCP connection holds one of the server's descriptors for as long as the peer keeps
it, so the server keeps none for free: an idle connection is closed after
``sip.tcp_idle_timeout`` (keepalives count), a message whose headers trickle in is cut
off after ``sip.tcp_header_timeout``, connections beyond ``sip.tcp_max_connections``
(all) or ``sip.tcp_max_connections_per_source`` (one IP address) are closed as soon as
accepted, a message too large is answered 513 before the close, and running out of
descriptors altogether neither floods the log nor stops SIP over UDP.

Time here is real (the server is another process): the timeouts are short, and each
assertion on a moment allows a margin.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import time

import pytest
import trio

from eko_bench import uac
from eko_rtp.config import build_config
from eko_rtp.errors import UserError
from eko_rtp.server.transport import SipTransport, TcpLimits
from server_helpers import ServerProcess
from test_server_torture import (RESPONSE_TIMEOUT, Closed, TcpPeer, UdpPeer, collect, final_for, probe, sip_request,
                                 unique)

IDLE_TIMEOUT = 2.0
HEADER_TIMEOUT = 0.7
MAX_MESSAGE_SIZE = 4096


class SourcedPeer(TcpPeer):
    """A TCP client from a chosen loopback address (any 127.0.0.0/8 address reaches the server)."""

    def __init__(self, server_address: tuple[str, int], source: str = "127.0.0.1"):
        self.sock = socket.create_connection(server_address, timeout=RESPONSE_TIMEOUT, source_address=(source, 0))
        self.port = self.sock.getsockname()[1]
        self.buffer = b""
        self.pongs = 0


def serve(built_cache, tmp_path, **sip) -> ServerProcess:
    config = tmp_path / "eko.toml"
    config.write_text("[sip]\n" + "".join(f"{key} = {value!r}\n" for key, value in sip.items()))
    return ServerProcess(built_cache, "--config", str(config))


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it is still open after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - started
    return None


def warnings_about(server: ServerProcess, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if needle in line and " WARNING " in line]


@pytest.fixture(scope="module")
def timed_server(built_cache, tmp_path_factory):
    with serve(built_cache, tmp_path_factory.mktemp("tcp-timeouts"), tcp_idle_timeout=IDLE_TIMEOUT,
               tcp_header_timeout=HEADER_TIMEOUT, max_message_size=MAX_MESSAGE_SIZE) as server:
        yield server
        assert server.process.poll() is None, f"the server died:\n{server.log()}"
    assert "Traceback" not in server.log(), server.log()


def test_an_idle_connection_is_closed_and_keepalives_keep_one_open(timed_server):
    with TcpPeer(timed_server.address) as silent, TcpPeer(timed_server.address) as pinging:
        pinging.send(b"\r\n\r\n")  # RFC 5626 §3.5.1 pings, more often than the idle timeout
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 2 * IDLE_TIMEOUT:
            if closed_after is not None:
                time.sleep(0.4)
            elif closed_within(silent.sock, 0.4) is not None:
                closed_after = time.monotonic() - started
            pinging.send(b"\r\n\r\n")
        assert closed_after is not None, f"an idle connection was still open after {2 * IDLE_TIMEOUT} s"
        assert IDLE_TIMEOUT - 0.5 <= closed_after <= IDLE_TIMEOUT + 1.0, closed_after
        assert probe(pinging) == []  # still open, still served
        assert pinging.pongs >= 4


def test_a_slowloris_is_closed_after_the_header_timeout(timed_server):
    request = sip_request("OPTIONS", port=5060, transport="TCP", extra=(("X-Padding", "x" * 2000),))
    with TcpPeer(timed_server.address) as slow:
        slow.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        closed_after = None
        for index in range(len(request)):  # a byte every 20 ms: complete after 40 s
            try:
                slow.send(request[index:index + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            if closed_within(slow.sock, 0.02) is not None:
                closed_after = time.monotonic() - started
                break
            if time.monotonic() - started > 3 * HEADER_TIMEOUT + 1:
                break
    assert closed_after is not None, f"the slowloris was still served after {3 * HEADER_TIMEOUT + 1} s"
    assert HEADER_TIMEOUT - 0.2 <= closed_after <= HEADER_TIMEOUT + 1.0, closed_after
    timed_server.wait_for_log(f"127.0.0.1:{slow.port}: headers not complete")  # the log is read in a thread
    [line] = warnings_about(timed_server, f"127.0.0.1:{slow.port}")
    assert re.search(r"headers not complete 0\.7 s after the message began \(sip\.tcp_header_timeout\), \d+ bytes "
                     r"discarded; closing the connection$", line), line


def test_a_message_too_large_is_answered_513_then_the_connection_closed(timed_server):
    call_id = unique("toolarge")
    body = b"v=0\r\n" * 2000  # 10000 bytes: with the headers, over the 4096-byte limit
    request = sip_request("OPTIONS", port=5060, transport="TCP", call_id=call_id, body=body,
                          content_type="application/sdp")
    with TcpPeer(timed_server.address) as peer:
        peer.send(request[:len(request) - len(body) + 2000])  # the headers and a part of the body
        [answer] = collect(peer, final_for(call_id, "OPTIONS"))
        peer.wait_closed(RESPONSE_TIMEOUT)
    assert (answer.status, answer.reason) == (513, f"message of {len(request)} bytes exceeds the 4096-byte limit")
    assert answer.call_id == call_id


@pytest.fixture
def capped_server(built_cache, tmp_path):
    with serve(built_cache, tmp_path, tcp_max_connections=5, tcp_max_connections_per_source=3) as server:
        yield server
        assert server.process.poll() is None, f"the server died:\n{server.log()}"
    assert "Traceback" not in server.log(), server.log()


def served(peer: TcpPeer) -> bool:
    try:
        return probe(peer) == []
    except (Closed, ConnectionError):
        return False


def test_connections_beyond_the_per_source_cap_are_closed_at_once(capped_server):
    address = capped_server.address
    kept = [SourcedPeer(address) for _ in range(3)]
    try:
        assert all(served(peer) for peer in kept)
        refused = [SourcedPeer(address) for _ in range(3)]
        for peer in refused:
            assert closed_within(peer.sock, 2.0) is not None, "a connection beyond the per-source cap stayed open"
            peer.close()
        with SourcedPeer(address, "127.0.0.2") as other:
            assert served(other)  # another address has its own allowance
        kept.pop().close()
        assert_place_given_back(address, "127.0.0.1")  # the server notices the close, and the address may connect again
    finally:
        for peer in kept:
            peer.close()
    capped_server.wait_for_log("connection closed at once")
    lines = warnings_about(capped_server, "connection closed at once")
    assert len(lines) == 1, lines  # once per 10 s at most, however many
    assert re.search(r"SIP TCP from 127\.0\.0\.1:\d+: connection closed at once: 3 connections open from "
                     r"127\.0\.0\.1 \(sip\.tcp_max_connections_per_source\)$", lines[0]), lines[0]


def assert_place_given_back(address, source: str) -> None:
    """A connection from ``source`` is served again once a kept one closed, within RESPONSE_TIMEOUT."""
    deadline = time.monotonic() + RESPONSE_TIMEOUT
    while True:
        with SourcedPeer(address, source) as again:
            if served(again):
                return
        assert time.monotonic() < deadline, "the freed place was never given back"
        time.sleep(0.05)


def test_connections_beyond_the_global_cap_are_closed_at_once(capped_server):
    address = capped_server.address
    kept = [SourcedPeer(address, f"127.0.0.{10 + index}") for index in range(5)]
    try:
        assert all(served(peer) for peer in kept)
        with SourcedPeer(address, "127.0.0.20") as refused:
            assert closed_within(refused.sock, 2.0) is not None, "a connection beyond the global cap stayed open"
        kept.pop().close()
        assert_place_given_back(address, "127.0.0.20")
    finally:
        for peer in kept:
            peer.close()
    capped_server.wait_for_log("connection closed at once")
    [line] = warnings_about(capped_server, "connection closed at once")
    assert line.endswith(": connection closed at once: 5 connections open (sip.tcp_max_connections)"), line


def test_out_of_descriptors_the_server_backs_off_quietly_serves_udp_and_recovers(built_cache, tmp_path):
    with serve(built_cache, tmp_path, tcp_max_connections=10000, tcp_max_connections_per_source=10000) as server:
        pid = server.process.pid
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 12, hard))
        clients = []
        try:
            for _ in range(40):  # the kernel completes the handshakes; the server runs out
                clients.append(socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT))
            server.wait_for_log(r"SIP TCP: cannot accept a connection: Too many open files \(EMFILE; \d+ SIP TCP "
                                r"connections open, RLIMIT_NOFILE \d+\); retrying in [\d.]+ s$")
            before = len(server.log())
            time.sleep(2.0)
            flood = server.log()[before:]
            assert len(flood) < 2000 and "Traceback" not in flood, flood  # trio's own loop: a traceback every 100 ms

            with UdpPeer(server.address) as udp:  # UDP needs no new descriptor
                call_id = unique("options")
                udp.send(sip_request("OPTIONS", port=udp.port, call_id=call_id))
                [answer] = collect(udp, final_for(call_id, "OPTIONS"))
                assert answer.status in (200, 503), answer.status
                call_id = unique("invite")
                udp.send(sip_request("INVITE", port=udp.port, call_id=call_id,
                                     body=uac.sdp_offer(address="127.0.0.1", rtp_port=4000, session_id=1)))
                first = udp.receive(RESPONSE_TIMEOUT)
                assert first is not None and first.status in (100, 503), first
        finally:
            for client in clients:
                client.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with TcpPeer(server.address) as peer:
                    if probe(peer) == []:
                        break
            except (Closed, ConnectionError, AssertionError, socket.timeout):
                pass
            assert time.monotonic() < deadline, f"TCP never served again:\n{server.log()[-3000:]}"
            time.sleep(0.2)
        server.wait_for_log(r"SIP TCP: accepting connections again, after \d+ attempts failed for want of a descriptor")


@pytest.mark.parametrize("key, value", [("tcp_idle_timeout", 0), ("tcp_header_timeout", -1.0),
                                        ("tcp_max_connections", 0), ("tcp_max_connections_per_source", 0)])
def test_the_limits_must_be_positive(key, value):
    with pytest.raises(UserError) as caught:
        build_config({"sip": {key: value}}, source="f.toml")
    assert str(caught.value) == f"f.toml, key 'sip.{key}': must be positive"


def test_a_transport_made_without_limits_has_the_configured_defaults():
    transport = SipTransport(host="127.0.0.1", port=0, transports=["tcp"], max_message_size=65536,
                             deliver=lambda *message: None)
    assert transport.tcp_limits == TcpLimits(idle_timeout=180.0, header_timeout=10.0, max_connections=512,
                                             max_connections_per_source=50)


async def test_a_closed_connection_frees_its_places_before_the_peer_sees_the_close():
    """A peer told "closed" may connect again at once: its old connection must not count any more.

    In process, so the moment the peer reads EOF can be checked against the caps'
    counts with no scheduling point between. Trio runs the two woken tasks of one
    batch in either order: eight cycles find a late release nearly always.
    """
    transport = SipTransport(host="127.0.0.1", port=0, transports=["tcp"], max_message_size=65536,
                             deliver=lambda *message: None,
                             tcp_limits=TcpLimits(idle_timeout=30.0, header_timeout=30.0, max_connections=1,
                                                  max_connections_per_source=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        for _ in range(8):
            stream = await trio.open_tcp_stream(*transport.bound["tcp"][:2])
            await stream.send_all(b"OPTIONS sip:eko@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1\r\n\r\n")
            with trio.fail_after(RESPONSE_TIMEOUT):
                while await stream.receive_some(65536):  # unframeable (no Content-Length): closed
                    pass
            # No checkpoint since the EOF: the server's task may not have run on yet.
            assert (transport._accepted_open, transport._per_source) == (0, {})
            await stream.aclose()
        assert transport.stream_counters["tcp"].accepted == 8
        nursery.cancel_scope.cancel()
