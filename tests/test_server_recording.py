"""Call recording through the whole server: off by default, both directions when on.

The server runs in this process on real sockets; a raw caller sends known µ-law
frames while the script plays a cached phrase; after the BYE the call's WAV is
read back: the caller's frames on the left channel, the phrase on the right.
"""

from __future__ import annotations

import struct
import subprocess

import trio

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.media.wav import HEADER_SIZE
from eko_rtp.server.server import EkoServer
from server_helpers import PHRASES, free_port, rtp_range

CALLER_FRAMES = 40


async def says_goodbye(call) -> None:
    await call.answer()
    await trio.sleep(0.3)
    await call.say("goodbye")
    await trio.sleep(0.3)
    await call.hangup()


def caller_frame(index: int) -> bytes:
    return bytes([0x10 + index % 64]) * 160  # loud, distinct per frame (not µ-law silence 0xFF)


async def place_call(port: int) -> tuple[int, bytes]:
    """Call, send CALLER_FRAMES frames at 20 ms, answer the server's BYE; the frames sent."""
    sip = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sip, rtp:
        await sip.bind(("127.0.0.1", 0))
        await rtp.bind(("127.0.0.1", 0))
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=sip.getsockname()[1], target_host="127.0.0.1",
                                target_port=port)
        dialog = uac.Dialog(endpoint=endpoint, call_id=f"rec-{uac.new_tag()}", from_tag=uac.new_tag(),
                            caller="0612345678")
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=rtp.getsockname()[1], session_id=1)
        await sip.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer), ("127.0.0.1", port))
        while True:
            message = uac.parse_message_untrusted(await sip.recv(65535))
            if message.is_response and message.status == 200:
                break
        await sip.sendto(dialog.confirmed(message).ack(), ("127.0.0.1", port))
        answer = uac.parse_sdp_answer_untrusted(message.body)
        start = trio.current_time()
        for index in range(CALLER_FRAMES):
            header = struct.pack("!BBHII", 0x80, 0, index, index * 160, 0x1234)
            await rtp.sendto(header + caller_frame(index), (answer.address, answer.port))
            await trio.sleep_until(start + (index + 1) * 0.020)
        while True:
            message = uac.parse_message_untrusted(await sip.recv(65535))
            if message.method == "BYE":
                await sip.sendto(uac.response_to(message, 200, "OK"), ("127.0.0.1", port))
                return CALLER_FRAMES


async def run_one_call(config, built_cache) -> EkoServer:
    server = EkoServer(config=config, cache=load_cache(built_cache, PHRASES), script=says_goodbye)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run)
            await place_call(bound["udp"][1])
            while server.calls:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    return server


async def test_no_recording_by_default(built_cache, tmp_path):
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}"}, "media": {"rtp_ports": rtp_range(4)}},
                          source=None)
    assert config["recording.directory"] == ""
    await run_one_call(config, built_cache)
    assert list(tmp_path.iterdir()) == []


async def test_a_recorded_call_has_the_caller_left_and_the_bot_right(built_cache, tmp_path):
    directory = tmp_path / "recordings"
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}"}, "media": {"rtp_ports": rtp_range(4)},
                           "recording": {"directory": str(directory)}}, source=None)
    await run_one_call(config, built_cache)
    [path] = list(directory.iterdir())
    assert path.suffix == ".wav" and "rec-" in path.name
    info = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True, check=True).stdout
    assert "Channels       : 2" in info and "Sample Rate    : 8000" in info
    data = path.read_bytes()[HEADER_SIZE:]
    left, right = data[0::2], data[1::2]
    # Every caller frame is in the left channel, in order and whole; the bot's frames
    # are the recording's clock, so a caller frame that came just after a tick leaves
    # a silent frame before it (the channel stays on the call's timeline).
    assert len(left) % 160 == 0
    heard = [left[start:start + 160] for start in range(0, len(left), 160)]
    assert [frame for frame in heard if frame != b"\xff" * 160] == [caller_frame(n) for n in range(CALLER_FRAMES)]
    # The phrase we played is in the right channel, whole.
    goodbye = bytes(load_cache(built_cache, PHRASES).get("goodbye").audio)
    assert goodbye in right
