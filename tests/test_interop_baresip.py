"""baresip, a third-party SIP phone, calls the real server over UDP and over TCP.

The greeting is heard, BYE works both ways, RFC 4733 digits arrive once each, and a
hold and resume (two re-INVITEs) leave the call alive. The driver is
tests/peers/baresip_peer.py; Debian's ``baresip`` package provides the binary.
"""

from __future__ import annotations

import re
import time

import pytest

from peers.baresip_peer import BaresipPeer, baresip_binary
from server_helpers import ServerProcess
from test_call_pjsua2 import assert_heard, phrase_samples

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(baresip_binary() is None, reason="baresip is not installed (apt-get install baresip)"),
]
transports = pytest.mark.parametrize("transport", ["udp", "tcp"])

# libre's names for why a call closed: our BYE, or a BYE from the far end (ECONNRESET)
LOCAL_HANGUP = "Connection reset by user"
REMOTE_HANGUP = "Connection reset by peer"


def server_uri(server: ServerProcess, transport: str) -> str:
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return f"sip:eko@127.0.0.1:{server.port}{suffix}"


def exchanged(phone: BaresipPeer, server: ServerProcess, transport: str) -> list[tuple[str, str]]:
    """The SIP messages the phone exchanged (all with the server): ("sent" or "received", method or status).

    Fails if one of them travelled over another transport than ``transport``.
    """
    server_address = f"127.0.0.1:{server.port}"
    messages = []
    for message in phone.sip_trace():
        assert message.transport == transport.upper(), message
        direction = "sent" if message.destination == server_address else "received"
        first, _, rest = message.start_line.partition(" ")
        messages.append((direction, rest.partition(" ")[0] if first == "SIP/2.0" else first))
    return messages


def digits_logged(server: ServerProcess) -> list[str]:
    return [line.rsplit(" ", 1)[-1] for line in server.lines if ": digit " in line]


@transports
def test_baresip_hears_the_greeting_and_hangs_up(built_cache, tmp_path, transport):
    with ServerProcess(built_cache) as server:
        with BaresipPeer(tmp_path / "baresip") as phone:
            phone.dial(server_uri(server, transport))
            time.sleep(3.5)  # real time on purpose: windowed_match wants the phrase's first 2 s, within 1 s
            closed = phone.hang_up()
            server.wait_for_log(r"ended \(remote_bye\)")
        messages = exchanged(phone, server, transport)
    assert closed.param == LOCAL_HANGUP
    assert [what for direction, what in messages if direction == "sent"] == ["INVITE", "ACK", "BYE"]
    finals = [what for direction, what in messages if direction == "received" and not what.startswith("1")]
    assert finals == ["200", "200"]  # to the INVITE and to the BYE
    assert_heard(str(phone.recording()), phrase_samples(built_cache, "greet"))


@transports
def test_server_hangs_up_and_baresip_sees_the_bye(built_cache, tmp_path, transport):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:greet_then_hang_up") as server:
        with BaresipPeer(tmp_path / "baresip") as phone:
            started = time.monotonic()
            phone.dial(server_uri(server, transport))
            closed = phone.wait_for_event("CALL_CLOSED", timeout=12)
            seconds = time.monotonic() - started
            server.wait_for_log(r"ended \(local_bye\)")
        messages = exchanged(phone, server, transport)
    assert closed.param == REMOTE_HANGUP
    assert [what for direction, what in messages if direction == "sent"] == ["INVITE", "ACK", "200"]
    assert messages[-2:] == [("received", "BYE"), ("sent", "200")]
    assert seconds < 10
    assert_heard(str(phone.recording()), phrase_samples(built_cache, "greet"))


@transports
def test_rfc4733_digits_from_baresip_reach_the_script_once_each(built_cache, tmp_path, transport):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:echo_digits") as server:
        with BaresipPeer(tmp_path / "baresip") as phone:
            phone.dial(server_uri(server, transport))
            phone.send_digits("123#")
            server.wait_for_log(r": digit #$")
            phone.hang_up()
            server.wait_for_log(r"ended \(remote_bye\)")
        messages = exchanged(phone, server, transport)
    assert [what for direction, what in messages if direction == "sent"] == ["INVITE", "ACK", "BYE"]
    assert digits_logged(server) == ["1", "2", "3", "#"]


@transports
def test_baresip_holds_and_resumes_and_the_call_goes_on(built_cache, tmp_path, transport):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:echo_digits") as server:
        with BaresipPeer(tmp_path / "baresip") as phone:
            phone.dial(server_uri(server, transport))
            phone.hold()  # each returns once baresip has the 200 OK to its re-INVITE
            phone.resume()
            # media still flows from the phone after the re-INVITEs: a digit gets through
            phone.send_digits("5")
            server.wait_for_log(r": digit 5$")
            closed = phone.hang_up()
            server.wait_for_log(r"ended \(remote_bye\)")
        messages = exchanged(phone, server, transport)
    modified = [line for line in server.lines if "session modified" in line]
    assert [re.search(r"send_audio=(\w+)", line).group(1) for line in modified] == ["False", "True"], modified
    assert [what for direction, what in messages if direction == "sent"] == ["INVITE", "ACK"] * 3 + ["BYE"]
    assert closed.param == LOCAL_HANGUP
    assert digits_logged(server) == ["5"]
