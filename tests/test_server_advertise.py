"""Bind address and advertised address are separate (issue 14, defect 4).

A server bound to every interface (0.0.0.0) must tell callers an address they can
reach: ``sip.advertise`` in Contact and Via, ``media.address`` in SDP. Without one it
does not start; with them, a real call through the wildcard socket carries the
advertised addresses and its RTP flows both ways.
"""

from __future__ import annotations

import subprocess
import sys

from raw_caller import place_call
from server_helpers import REPO, ServerProcess, free_port


def test_a_wildcard_listen_without_an_advertised_address_does_not_start(built_cache):
    port = free_port()
    completed = subprocess.run(
        [sys.executable, "-m", "eko_rtp", "serve", "--listen", f"0.0.0.0:{port}", "--cache", str(built_cache)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        f"eko-rtp: error: command line, key 'sip.listen': 0.0.0.0:{port} binds every interface, which tells callers"
        " nothing: set sip.advertise to the address for Contact and Via (IP[:PORT]), and media.address if RTP"
        " should go elsewhere than that IP")


def test_a_wildcard_bind_advertises_the_configured_addresses(built_cache, tmp_path):
    port = free_port()
    config = tmp_path / "eko-rtp.toml"
    # 127.0.0.2 is on loopback too: RTP sent there reaches the wildcard-bound socket.
    config.write_text(f'[sip]\nlisten = "0.0.0.0:{port}"\nadvertise = "127.0.0.1"\n'
                      '[media]\naddress = "127.0.0.2"\n', encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config), "--listen", f"0.0.0.0:{port}", port=port) as server:
        record = place_call(server.address, hold=1.0)
        ended = server.wait_for_log(r"ended \(remote_bye\) after \d+ ms; loss=([\d.]+)%")
    assert record.status == 200 and record.packets
    assert record.answer.header("contact") == f"<sip:eko@127.0.0.1:{port}>"
    sdp = record.answer.body.decode()
    assert "c=IN IP4 127.0.0.2\r\n" in sdp and "0.0.0.0" not in sdp
    assert float(ended.group(1)) == 0.0  # the caller's RTP, sent to 127.0.0.2, arrived


def test_the_advertised_port_may_differ_from_the_bound_one(built_cache):
    port = free_port()
    with ServerProcess(built_cache, "--listen", f"0.0.0.0:{port}", "--advertise", "127.0.0.1:5999", port=port) as server:
        record = place_call(server.address, hold=0.3)
    assert record.status == 200
    assert record.answer.header("contact") == "<sip:eko@127.0.0.1:5999>"
    assert "c=IN IP4 127.0.0.1\r\n" in record.answer.body.decode()  # media.address: the advertised host
