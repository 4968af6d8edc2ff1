"""The test harness's own rules that the server tests lean on."""

import pytest

from server_helpers import rtp_range


@pytest.mark.parametrize("avoid", [30000, 30001, 45000, 59600])
def test_an_rtp_range_never_holds_the_port_it_must_avoid(avoid):
    # ServerProcess passes its SIP port: a test that finds the call's RTP port among the
    # server's sockets in the range found the SIP socket there too, now and then.
    for _ in range(2000):
        low, high = map(int, rtp_range(avoid=avoid).split("-"))
        assert not low <= avoid <= high
        assert high - low == 400 and low % 2 == 0
