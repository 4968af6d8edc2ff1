"""`bin/eko-dev run`, the README's first command, as a new user runs it (issue 14, defect 3).

It runs in the checkout itself (as a user does: it builds ``cache/`` and seeds
``var/``, both ignored by git). Its package install is skipped when setup.cfg and
pyproject.toml did not change since the last one, which is what keeps these runs short.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from raw_caller import place_call
from server_helpers import REPO, free_port, rtp_range

EKO_DEV = REPO / "bin" / "eko-dev"


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ELEVENLABS_API_KEY"}
    env.update(extra)
    return env


def test_run_stops_when_its_crm_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(EKO_DEV), "run"], env=environment(EKO_CRM_PORT=str(port)), cwd=REPO,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        # The one holding the port saw no connection: eko-dev did not fall back to it.
        taken.settimeout(0)
        try:
            taken.accept()
            raise AssertionError("eko-dev connected to the process that held its CRM port")
        except BlockingIOError:
            pass
    assert done.returncode == 1
    assert done.stderr.splitlines()[-2:] == [
        f"eko-rtp: error: cannot listen on CRM address 127.0.0.1:{port}: Address already in use",
        f"eko-dev: the embedded CRM did not start on 127.0.0.1:{port} (its log above); stopping."
        " To use another port: EKO_CRM_PORT=7071 bin/eko-dev run",
    ]
    assert "Traceback" not in done.stderr and "Eko RTP listening" not in done.stderr


def test_run_uses_the_crm_port_it_is_given_and_serves_metrics():
    crm_port, sip_port, metrics_port = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [str(EKO_DEV), "run", "--listen", f"127.0.0.1:{sip_port}", "--rtp-ports", rtp_range(),
         "--metrics", f"127.0.0.1:{metrics_port}"],
        env=environment(EKO_CRM_PORT=str(crm_port)), cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()

    def wait_for(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(lines)):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{''.join(lines)}"
            time.sleep(0.05)

    try:
        wait_for(f"eko-dev: embedded CRM on 127.0.0.1:{crm_port}", 300)
        wait_for("Eko RTP listening for SIP", 120)
        wait_for(f"CRM connected to 127.0.0.1:{crm_port}", 10)
        assert place_call(("127.0.0.1", sip_port), hold=0.3, caller="0612345678").status == 200
        wait_for("known caller", 10)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the server drains, the CRM stops
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        reader.join(5)
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}
    assert samples["eko_crm_lookup_latency_seconds_count"] == 1
    with socket.socket() as probe:  # the script's CRM went with it (SO_REUSEADDR: TIME_WAIT is no listener)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", crm_port))
        probe.listen()
    assert process.returncode == 0, "".join(lines)
