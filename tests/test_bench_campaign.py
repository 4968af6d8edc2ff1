"""The bench's nurseries let a lone error out as itself (the CLI reports UserError with exit 2)."""

import pytest
import trio

from eko_rtp.bench.campaign import _kept_awake, _unwrapped
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
