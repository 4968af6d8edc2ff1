"""Media goes only where it should, against the server process in real time (issue 17).

The in-process twins, at exact times on trio's mock clock, are in
test_server_media_guard.py. Here: the config file's ``[media]`` keys as an operator
writes them, a forged INVITE whose victim is a socket on 127.0.0.2, and a real
phone (pjsua2) whose call a stranger on 127.0.0.2 tries to take.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

import pytest

from eko_bench import uac
from eko_bench.udp_queues import parse_proc_net_udp, socket_inodes
from server_helpers import ServerProcess, run_pjsua2
from test_call_pjsua2 import assert_heard, phrase_samples

HEADER = struct.Struct("!BBHII")
SILENCE = b"\xff" * 160


def bound(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def test_a_forged_invite_aims_nothing_at_its_victim_and_its_call_ends_in_seconds(built_cache, tmp_path):
    config = tmp_path / "eko.toml"
    config.write_text('[media]\ntrusted_networks = ["127.0.0.1/32"]\nrtp_timeout_before_ack = 2\n', encoding="utf-8")
    victim = bound("127.0.0.2")
    attacker = bound("127.0.0.1")
    try:
        with ServerProcess(built_cache, "--config", str(config), "--script",
                           "eko_test_scripts:silent_forever") as server:
            endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=attacker.getsockname()[1],
                                    target_host="127.0.0.1", target_port=server.port)
            dialog = uac.Dialog(endpoint=endpoint, call_id=f"forged-{uac.new_tag()}", from_tag=uac.new_tag(),
                                caller="0612345678")
            offer = uac.sdp_offer(address="127.0.0.2", rtp_port=victim.getsockname()[1], session_id=1)
            attacker.sendto(dialog.invite(branch=uac.new_branch(), sdp=offer), server.address)
            server.wait_for_log(r"200 OK sent")
            answered = time.monotonic()
            server.wait_for_log(r"ended \(rtp_timeout\)", timeout=5)
            ended = time.monotonic()
            time.sleep(1.0)  # what would have followed the end
            received = drain(victim)
    finally:
        victim.close()
        attacker.close()
    assert received == 0  # was 50 packets a second until the 200 OK gave up, 32 s later
    assert 1.5 <= ended - answered <= 3.0


def rtp_port_of_the_call(server: ServerProcess) -> int:
    """The server's RTP port for the one call up: the even port in its range of a socket the
    server holds now (/proc/net/udp and its /proc/PID/fd: another process's socket can have
    an ephemeral port in the range, which once made this find two)."""
    low, high = map(int, server.rtp_ports.split("-"))
    held = socket_inodes(server.process.pid)
    with open("/proc/net/udp", encoding="ascii") as table:
        sockets = parse_proc_net_udp(table.read())
    [port] = [found.local_port for found in sockets
              if found.inode in held and low <= found.local_port <= high and found.local_port % 2 == 0]
    return port


def key_end(payload_type: int, sequence: int) -> bytes:
    # RFC 4733: a "5" ended (sent three times), in the payload type the call agreed on.
    return HEADER.pack(0x80, payload_type, sequence, 8000, 0x5EED) + struct.pack("!BBH", 5, 0x80 | 10, 800)


@pytest.mark.interop
def test_a_stranger_takes_neither_a_real_phones_greeting_nor_its_keys(built_cache, tmp_path):
    stranger = bound("127.0.0.2")
    sent = []

    def stranger_sends(server: ServerProcess) -> None:
        events = int(server.wait_for_log(r"telephone-event (\d+)\)", timeout=30).group(1))
        server.wait_for_log(r"200 OK sent")
        time.sleep(0.5)  # the greeting is playing
        target = ("127.0.0.1", rtp_port_of_the_call(server))
        start = time.monotonic()
        for n in range(100):  # a second of well-formed audio from elsewhere, two packets a frame
            time.sleep(max(0.0, start + n * 0.010 - time.monotonic()))
            stranger.sendto(HEADER.pack(0x80, 0, n, n * 80, 0x5EED) + SILENCE, target)
            sent.append(n)
        for sequence in (200, 201, 202):
            stranger.sendto(key_end(events, sequence), target)
            sent.append(sequence)

    try:
        with ServerProcess(built_cache, "--script", "eko_test_scripts:greet_and_log_digits") as server:
            thread = threading.Thread(target=stranger_sends, args=(server,), daemon=True)
            thread.start()
            [result] = run_pjsua2(server.address, "--hold", "4", "--record-dir", str(tmp_path))
            thread.join(10)
            ended = server.wait_for_log(r"ended \(remote_bye\).*").group(0)
            log = server.log()
        received = drain(stranger)
    finally:
        stranger.close()
    assert result["answered"] and len(sent) == 103
    assert received == 0
    assert not re.search(r": digit \d", log)
    assert "stray_packets=103" in ended
    assert_heard(result["record"], phrase_samples(built_cache, "greet"))  # the whole greeting, at the phone
