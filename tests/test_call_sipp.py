"""sipp (Debian sip-tester) runs the UAC scenarios kept under sip/scenarios against the server."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from server_helpers import REPO, ServerProcess, free_port, free_sipp_media_port

pytestmark = pytest.mark.interop
SCENARIOS = REPO / "sip" / "scenarios"


def run_sipp(server: ServerProcess, scenario: str, tmp_path, *, timeout: int = 30) -> subprocess.CompletedProcess:
    sipp = shutil.which("sipp")
    assert sipp, "sipp is not installed (apt-get install sip-tester)"
    command = [
        sipp, "-sf", str(SCENARIOS / scenario), "-m", "1", "-l", "1", "-nostdin",
        "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_sipp_media_port()),
        "-timeout", f"{timeout}s", "-timeout_error", "-trace_err", "-trace_msg",
        f"127.0.0.1:{server.port}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15, cwd=tmp_path)


def sipp_explain(tmp_path, completed) -> str:
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.log"))
    return f"sipp exit {completed.returncode}\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}\n{logs}"


@pytest.mark.parametrize(
    "scenario, script, outcome",
    [
        ("basic.xml", None, "remote_bye"),
        ("reinvite_hold.xml", None, "remote_bye"),
        ("cancel.xml", "eko_test_scripts:ring_then_greet", "cancelled"),
    ],
)
def test_scenario(built_cache, tmp_path, scenario, script, outcome):
    extra = ("--script", script) if script else ()
    with ServerProcess(built_cache, *extra) as server:
        completed = run_sipp(server, scenario, tmp_path)
        assert completed.returncode == 0, sipp_explain(tmp_path, completed) + server.log()
        server.wait_for_log(rf"ended \({outcome}\)")
        calls = [line for line in server.lines if "INVITE received" in line]
    assert len(calls) == 1, calls  # a retransmitted INVITE never starts a second call


def test_options_keepalive(built_cache, tmp_path):
    with ServerProcess(built_cache) as server:
        completed = run_sipp(server, "options.xml", tmp_path)
    assert completed.returncode == 0, sipp_explain(tmp_path, completed)


def test_no_ack_ends_the_call_with_bye(built_cache, tmp_path):
    # 64·T1 with T1 = 0.5 s is 32 s: the server's BYE must come then, not before (RFC 3261
    # §15). The call and its media end earlier: no ACK and no RTP for
    # media.rtp_timeout_before_ack (5 s) after the 200 OK.
    with ServerProcess(built_cache) as server:
        completed = run_sipp(server, "no_ack.xml", tmp_path, timeout=50)
        assert completed.returncode == 0, sipp_explain(tmp_path, completed)
        server.wait_for_log(r"ended \(rtp_timeout\) after 50\d\d ms")
