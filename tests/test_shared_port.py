"""The shared media port (eko_rtp/media/shared_port.py) on real loopback sockets: each
call's datagrams reach that call's handler by their source address, strangers reach
none and are counted, two calls cannot claim one address, a re-INVITE moves a route,
and a tick's frames leave in one flush, each to its own call."""

from __future__ import annotations

import select
import socket
import time

import pytest

from eko_rtp.media.mmsg import available
from eko_rtp.media.ports import RtpPortPool
from eko_rtp.media.shared_port import SharedMediaPort
from eko_rtp.media.stream import MediaCounters

pytestmark = pytest.mark.skipif(available() is not None, reason="no sendmmsg/recvmmsg in this C library")


@pytest.fixture
def shared():
    pool = RtpPortPool("127.0.0.1", 42000 + 2 * (time.monotonic_ns() % 2000), 47999)
    port = SharedMediaPort(pool.open_pair(), counters=MediaCounters())
    yield port
    port.close()


def caller() -> tuple[socket.socket, socket.socket]:
    """A caller's RTP and RTCP sockets (RTCP on RTP + 1 is not needed: the SDP names it)."""
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp.bind(("127.0.0.1", 0))
    for sock in (rtp, rtcp):
        sock.setblocking(False)
    return rtp, rtcp


def drain(port: SharedMediaPort, *, expected: int, rtcp: bool = False) -> int:
    """Read the shared socket until ``expected`` datagrams were taken (2 s at most)."""
    sock = port.pair.rtcp if rtcp else port.pair.rtp
    taken = 0
    deadline = time.monotonic() + 2.0
    while taken < expected and time.monotonic() < deadline:
        select.select([sock], [], [], 0.1)
        taken += port.receive_rtcp(0.0) if rtcp else port.receive_rtp(0.0)
    return taken


def test_each_datagram_reaches_the_call_that_signalled_its_source(shared):
    (first_rtp, first_rtcp), (second_rtp, second_rtcp) = caller(), caller()
    heard: dict[str, list] = {"first": [], "second": [], "first rtcp": []}
    first = shared.attach(first_rtp.getsockname(), first_rtcp.getsockname())
    second = shared.attach(second_rtp.getsockname(), second_rtcp.getsockname())
    first.route(lambda data, source, now, arrival: heard["first"].append((data, source, arrival is not None)),
                lambda data, source, now, arrival: heard["first rtcp"].append((data, source)))
    second.route(lambda data, source, now, arrival: heard["second"].append((data, source, arrival is not None)),
                 lambda *args: None)
    assert first.port == second.port == shared.port
    for index in range(3):
        first_rtp.sendto(b"one %d" % index, ("127.0.0.1", shared.port))
        second_rtp.sendto(b"two %d" % index, ("127.0.0.1", shared.port))
    first_rtcp.sendto(b"report", ("127.0.0.1", shared.port + 1))
    assert drain(shared, expected=6) == 6
    assert drain(shared, expected=1, rtcp=True) == 1
    assert heard["first"] == [(b"one %d" % index, first_rtp.getsockname(), True) for index in range(3)]
    assert heard["second"] == [(b"two %d" % index, second_rtp.getsockname(), True) for index in range(3)]
    assert heard["first rtcp"] == [(b"report", first_rtcp.getsockname())]
    assert shared.strays == 0


def test_a_stranger_reaches_no_call_and_is_counted_once_per_datagram(shared):
    (rtp, rtcp), (stranger, _) = caller(), caller()
    heard = []
    leg = shared.attach(rtp.getsockname(), rtcp.getsockname())
    leg.route(lambda data, *rest: heard.append(data), lambda *args: None)
    for index in range(5):
        stranger.sendto(b"hijack %d" % index, ("127.0.0.1", shared.port))
    rtp.sendto(b"mine", ("127.0.0.1", shared.port))
    assert drain(shared, expected=6) == 6
    assert heard == [b"mine"]
    assert shared.strays == 5
    assert shared.counters.packets_stray == 5


def test_two_calls_cannot_signal_the_same_address(shared):
    rtp, rtcp = caller()
    assert shared.attach(rtp.getsockname(), rtcp.getsockname()) is not None
    assert shared.attach(rtp.getsockname(), None) is None  # the server gives this one a pair of its own
    assert shared.attach(None, None) is None  # an offer without an address cannot share
    assert shared.legs == 1


def test_a_closed_leg_routes_nothing_and_frees_its_address(shared):
    rtp, rtcp = caller()
    heard = []
    leg = shared.attach(rtp.getsockname(), rtcp.getsockname())
    leg.route(lambda data, *rest: heard.append(data), lambda *args: None)
    leg.close()
    rtp.sendto(b"after the end", ("127.0.0.1", shared.port))
    assert drain(shared, expected=1) == 1
    assert heard == []
    assert shared.strays == 1
    assert shared.attach(rtp.getsockname(), rtcp.getsockname()) is not None  # a new call may take it


def test_a_reinvite_moves_the_route_unless_another_call_holds_the_address(shared):
    (old, old_rtcp), (new, new_rtcp), (other, other_rtcp) = caller(), caller(), caller()
    heard = []
    leg = shared.attach(old.getsockname(), old_rtcp.getsockname())
    leg.route(lambda data, *rest: heard.append(data), lambda *args: None)
    shared.attach(other.getsockname(), other_rtcp.getsockname())
    assert leg.follow(other.getsockname(), other_rtcp.getsockname()) is False  # taken: the old route stays
    assert leg.follow(new.getsockname(), new_rtcp.getsockname()) is True
    old.sendto(b"old", ("127.0.0.1", shared.port))
    new.sendto(b"new", ("127.0.0.1", shared.port))
    assert drain(shared, expected=2) == 2
    assert heard == [b"new"]
    assert shared.strays == 1


def test_one_flush_sends_every_queued_frame_to_its_own_call(shared):
    callers = [caller()[0] for _ in range(4)]
    legs = [shared.attach(sock.getsockname(), None) for sock in callers]
    for index, (leg, sock) in enumerate(zip(legs, callers)):
        leg.rtp.sendmsg((b"\x80\x00header%d" % index, b"audio"), (), 0, sock.getsockname())
    for sock in callers:  # nothing leaves before the flush (the clock's, after a tick)
        assert not select.select([sock], [], [], 0)[0]
    legs[0].flush()
    for index, sock in enumerate(callers):
        assert select.select([sock], [], [], 2.0)[0]
        data, source = sock.recvfrom(2048)
        assert (data, source) == (b"\x80\x00header%d" % index + b"audio", ("127.0.0.1", shared.port))
    assert shared.send_batch.sent == 4


def test_a_handler_error_is_counted_and_the_batch_goes_on(shared):
    (bad, bad_rtcp), (good, good_rtcp) = caller(), caller()
    heard = []

    def broken(*args):
        raise RuntimeError("a bug in one call")

    shared.attach(bad.getsockname(), bad_rtcp.getsockname()).route(broken, lambda *args: None)
    shared.attach(good.getsockname(), good_rtcp.getsockname()).route(lambda data, *rest: heard.append(data),
                                                                     lambda *args: None)
    bad.sendto(b"x", ("127.0.0.1", shared.port))
    good.sendto(b"y", ("127.0.0.1", shared.port))
    assert drain(shared, expected=2) == 2
    assert heard == [b"y"]
    assert shared.handler_errors == 1


def test_a_move_that_keeps_the_rtp_address_keeps_its_claim_on_it(shared):
    """A re-INVITE that changes only the RTCP address: the RTP address stays this call's,
    so another call naming it gets a pair of its own (it would take this call's audio)."""
    rtp, rtcp = caller()
    _, new_rtcp = caller()
    leg = shared.attach(rtp.getsockname(), rtcp.getsockname())
    assert leg.follow(rtp.getsockname(), new_rtcp.getsockname()) is True
    assert shared.attach(rtp.getsockname(), None) is None
    assert shared.attach(caller()[0].getsockname(), rtcp.getsockname()) is not None  # the old RTCP address is free


def test_two_calls_cannot_share_an_rtcp_address_either(shared):
    """Each call's RTCP keeps its own call alive: one address, one call."""
    (first, first_rtcp), (second, _) = caller(), caller()
    assert shared.attach(first.getsockname(), first_rtcp.getsockname()) is not None
    assert shared.attach(second.getsockname(), first_rtcp.getsockname()) is None
    assert shared.attach(first_rtcp.getsockname(), None) is None  # nor one call's RTCP as another's RTP
