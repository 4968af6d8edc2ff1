"""The test harness's own rules that the server tests lean on."""

import socket

import pytest

from raw_caller import bind_rtp_pair
from server_helpers import rtp_range


@pytest.mark.parametrize("avoid", [30000, 30001, 45000, 59600])
def test_an_rtp_range_never_holds_the_port_it_must_avoid(avoid):
    # ServerProcess passes its SIP port: a test that finds the call's RTP port among the
    # server's sockets in the range found the SIP socket there too, now and then.
    for _ in range(2000):
        low, high = map(int, rtp_range(avoid=avoid).split("-"))
        assert not low <= avoid <= high
        assert high - low == 400 and low % 2 == 0


def test_a_test_caller_holds_the_rtcp_port_its_offer_implies():
    pairs = [bind_rtp_pair() for _ in range(8)]
    try:
        ports = [(rtp.getsockname()[1], rtcp.getsockname()[1]) for rtp, rtcp in pairs]
        assert all(rtcp == rtp + 1 for rtp, rtcp in ports)
        assert len({port for pair in ports for port in pair}) == 16
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", ports[0][1]))  # held: no other socket of the test can take it
    finally:
        for rtp, rtcp in pairs:
            rtp.close()
            rtcp.close()
