"""A real SIP phone (pjsua2) calls the real server process and hears the cached greeting."""

from __future__ import annotations

import array
import os
import re

import pytest

from eko_rtp.codec.g711 import ulaw_to_linear16
from server_helpers import ServerProcess, read_wav_samples, run_pjsua2, windowed_match

pytestmark = pytest.mark.interop


def phrase_samples(cache_dir, key: str) -> list[int]:
    samples = array.array("h")
    samples.frombytes(ulaw_to_linear16((cache_dir / f"{key}.raw").read_bytes()))
    return samples.tolist()


def assert_heard(record: str, reference: list[int], *, minimum: float = 0.9) -> int:
    """The 250 ms windows of the phrase's first 2 s are in the recording (see windowed_match)."""
    score, lag = windowed_match(read_wav_samples(record), reference, seconds=2.0)
    assert score >= minimum, f"windows' normalised cross-correlation {score:.3f} (phrase starts at lag {lag})"
    return lag


def test_caller_hears_the_greeting_and_hangs_up(built_cache, tmp_path):
    # The phone's SDP names this host's own address, not loopback: trusted here as a trunk's
    # media gateways are in production (media.trusted_networks), so frame 0 leaves with the
    # 200 OK instead of waiting for the phone's first packet or its ACK.
    config = tmp_path / "eko.toml"
    config.write_text('[media]\ntrusted_networks = ["0.0.0.0/0", "::/0"]\n', encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as server:
        [result] = run_pjsua2(server.address, "--hold", "4", "--record-dir", str(tmp_path))
        server.wait_for_log(r"ended \(remote_bye\)")
        log = server.log()
    assert result["answered"] and result["disconnected"] and result["hung_up_by"] == "local"
    assert_heard(result["record"], phrase_samples(built_cache, "greet"))
    assert "INVITE received" in log
    answered = float(re.search(r"200 OK sent at ([\d.]+) ms", log).group(1))
    first_rtp = float(re.search(r"first RTP sent at ([\d.]+) ms", log).group(1))
    assert 0 <= first_rtp - answered < 20  # the greeting's first packet within one frame period


def test_server_hangs_up_and_the_caller_sees_bye(built_cache, tmp_path):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:greet_then_hang_up") as server:
        [result] = run_pjsua2(server.address, "--hold", "20", "--hangup", "remote", "--record-dir", str(tmp_path))
        server.wait_for_log(r"ended \(local_bye\)")
    assert result["answered"] and result["disconnected"] and result["hung_up_by"] == "remote"
    assert result["seconds"] < 10
    assert_heard(result["record"], phrase_samples(built_cache, "greet"))


def test_pcma_caller_hears_the_greeting(built_cache, tmp_path):
    with ServerProcess(built_cache) as server:
        [result] = run_pjsua2(server.address, "--hold", "4", "--codec", "PCMA", "--record-dir", str(tmp_path))
        server.wait_for_log(r"ended \(remote_bye\)")
    assert result["answered"]
    assert_heard(result["record"], phrase_samples(built_cache, "greet"))


def test_rfc4733_digits_reach_the_script_once_each(built_cache, tmp_path):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:echo_digits") as server:
        [result] = run_pjsua2(server.address, "--hold", "5", "--dtmf", "1@1.0", "--dtmf", "2@2.5")
        server.wait_for_log(r"ended \(remote_bye\)")
        digits = [line.rsplit(" ", 1)[-1] for line in server.lines if ": digit " in line]
    assert result["answered"]
    assert digits == ["1", "2"]


def test_four_simultaneous_callers_over_tcp(built_cache, tmp_path):
    with ServerProcess(built_cache) as server:
        results = run_pjsua2(server.address, "--calls", "4", "--hold", "4", "--transport", "tcp", "--record-dir", str(tmp_path))
    assert [r["answered"] for r in results] == [True] * 4
    reference = phrase_samples(built_cache, "greet")
    for result in results:
        assert os.path.getsize(result["record"]) > 44
        assert_heard(result["record"], reference)
