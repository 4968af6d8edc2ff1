"""The bench's nurseries let a lone error out as itself (the CLI reports UserError with exit 2); what
the options refuse."""

import pytest
import trio

from eko_bench.campaign import Options, _kept_awake, _unwrapped
from eko_bench.run import Plan
from eko_bench.targets import server_rtp_ports
from eko_rtp.errors import UserError


async def _fail(error):
    raise error  # at its first step, before the nursery can cancel it


def test_a_lone_error_leaves_a_nursery_as_itself():
    async def main():
        with _unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                raise UserError("no free RTP/RTCP port pair", key="--bench-rtp-ports")

    with pytest.raises(UserError, match="no free RTP/RTCP port pair"):
        trio.run(main)


def test_two_errors_stay_a_group():
    async def main():
        with _unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail, UserError("first"))
                nursery.start_soon(_fail, OSError("second"))

    with pytest.raises(BaseExceptionGroup) as caught:
        trio.run(main)
    assert sorted(str(error) for error in caught.value.exceptions) == ["first", "second"]


def test_a_lone_error_leaves_the_bench_spinners_block_as_itself():
    async def main():
        async with _kept_awake(None):
            raise UserError("no free RTP/RTCP port pair", key="--bench-rtp-ports")

    with pytest.raises(UserError, match="no free RTP/RTCP port pair"):
        trio.run(main)


def _options(**overrides):
    values = dict(target="server", address="127.0.0.1:5060", spawn=False, server_cpus=None, server_pid=None,
                  cache_dir=None, rtp_ports="30000-39999", server_args=(), ramp=False,
                  plan=Plan(calls=1, concurrency=1, rate=10.0, hold=1.0), bench_ports=range(20000, 30000))
    return Options(**(values | overrides))


def test_a_running_servers_rtp_ports_are_taken_apart_from_the_benchs():
    assert _options(server_rtp_ports=range(30000, 40000)).server_rtp_ports == range(30000, 40000)
    # The server's default range is the bench's: its sockets are then told apart by process.
    assert _options(server_rtp_ports=range(20000, 30000), server_pid=4242).server_pid == 4242
    with pytest.raises(UserError) as raised:
        _options(server_rtp_ports=range(20000, 30000))
    assert str(raised.value) == (
        "key '--server-rtp-ports': the server's RTP ports 20000-29999 overlap the bench's own 20000-29999: give"
        " --server-pid (its sockets are told apart by process) or move --bench-rtp-ports")


def test_server_rtp_ports_are_for_a_running_server():
    with pytest.raises(UserError) as raised:
        _options(address=None, spawn=True, server_rtp_ports=range(30000, 40000))
    assert str(raised.value) == ("key '--server-rtp-ports': --server-rtp-ports names the RTP ports of a server at"
                                 " --address; a spawned server uses --rtp-ports")


def test_a_spawned_servers_rtp_ports_are_read_as_the_server_reads_them():
    assert server_rtp_ports("30000-39999", key="--rtp-ports") == range(30000, 40000)
    assert server_rtp_ports("30001-30010", key="--rtp-ports") == range(30002, 30011)  # RTP on the even port
    with pytest.raises(UserError) as raised:
        server_rtp_ports("3-2", key="--rtp-ports")
    assert str(raised.value) == "key '--rtp-ports': port range '3-2' must be LO-HI with 1024 <= LO < HI <= 65535"


def test_worker_pids_are_for_a_front_at_an_address():
    assert _options(worker_pids=(11, 12)).worker_pids == (11, 12)
    with pytest.raises(UserError) as raised:
        _options(address=None, spawn=True, worker_pids=(11,))
    assert str(raised.value) == "key '--worker-pid': --worker-pid names the workers behind a front at --address"
    with pytest.raises(UserError, match="each worker's pid once"):
        _options(worker_pids=(11, 11))
