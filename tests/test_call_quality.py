"""Per-call loss, jitter and round trip, measured against a real phone (pjsua2).

pjsua2 drops a share of its own RTP (pjmedia's loss simulation) and sends RTCP as a
phone does: the server's end-of-call line, its Prometheus histograms and the CRM's
call log must show the loss it induced and a round trip taken from its reports.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_helpers import ServerProcess, free_port, run_pjsua2

pytestmark = pytest.mark.interop


def test_loss_jitter_and_round_trip_after_a_pjsua2_call(built_cache, tmp_path):
    metrics_port = free_port()
    crm_port = free_port()
    database = tmp_path / "crm.sqlite3"
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', encoding="utf-8")
    crm = subprocess.Popen([sys.executable, "-m", "eko_rtp", "crm", "serve", "--listen", f"127.0.0.1:{crm_port}",
                            "--db", str(database)], stderr=subprocess.PIPE, text=True)
    try:
        with ServerProcess(built_cache, "--config", str(config), "--crm", f"127.0.0.1:{crm_port}",
                           "--script", "eko_test_scripts:silent_forever") as server:
            # 12 s: pjsua reports every ~5 s, and a round trip needs a report sent after our first SR (2.5 s).
            [result] = run_pjsua2(server.address, "--hold", "12", "--tx-drop-pct", "10")
            ended = server.wait_for_log(r"ended \(remote_bye\) after \d+ ms; loss=([\d.]+)% jitter=([\d.]+)ms "
                                        r"rtt=([\d.]+)ms")
            time.sleep(1.5)  # metrics are synced once a second
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        crm.terminate()
        crm.wait(10)
    assert result["answered"]
    loss, jitter, rtt = (float(group) for group in ended.groups())
    assert 4 <= loss <= 20  # 10 % dropped by the phone, over ~600 packets
    assert jitter < 20 and rtt > 0
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if not sample.labels}
    assert samples["eko_call_packet_loss_ratio_count"] == 1
    assert 0.04 <= samples["eko_call_packet_loss_ratio_sum"] <= 0.2
    assert samples["eko_call_jitter_seconds_count"] == 1
    assert samples["eko_call_rtt_seconds_count"] == 1 and samples["eko_call_rtt_seconds_sum"] > 0
    with sqlite3.connect(database) as db:
        [(loss_ratio, jitter_ms, rtt_ms)] = db.execute("SELECT loss_ratio, jitter_ms, rtt_ms FROM call_log").fetchall()
    assert loss_ratio == pytest.approx(loss / 100, abs=0.001) and rtt_ms == pytest.approx(rtt, abs=0.1)
    assert jitter_ms == pytest.approx(jitter, abs=0.1)
