"""The Grafana dashboard against a real Prometheus scraping a server that took real calls.

docs/grafana/eko-rtp.json is imported as is by operators, so its queries are tested as
Prometheus runs them: Debian's ``prometheus`` (2.x) scrapes the server every second
on loopback while a pjsua2 phone (which sends RTCP, so a round trip exists) and raw
callers call in, greeted by what the embedded CRM knows, with live text from a local
stand-in for ElevenLabs (spend) that the second caller gets from the dynamic cache.
Then every panel's every query must return data (finite numbers), and the drain
panel must see a SIGTERM'd server drain.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from fake_elevenlabs import FakeElevenLabs
from raw_caller import place_call
from server_helpers import REPO, ServerProcess, free_port, run_pjsua2, start_crm

pytestmark = pytest.mark.interop

DASHBOARD = REPO / "docs" / "grafana" / "eko-rtp.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query, dashboard variables replaced by their defaults."""
    defaults = {variable["name"]: variable["current"]["value"] for variable in dashboard["templating"]["list"]}
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in defaults.items():
                expr = expr.replace(f"${name}", value)
            queries.append((panel["title"], expr))
    return queries


def test_the_dashboard_is_importable_as_is():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "eko-rtp" and dashboard["title"] == "Eko RTP"
    [source] = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    titles = [panel["title"] for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(titles) == len(set(titles)) and len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["description"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
    for title, expr in panel_queries(dashboard):
        assert "$" not in expr, (title, expr)  # every variable it uses is defined


class Prometheus:
    """Debian's prometheus on loopback, scraping ``target`` every second, its data in ``directory``."""

    def __init__(self, directory: Path, target: str):
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: eko-rtp\n    static_configs:\n      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def wait_for(self, expr: str, accept, timeout: float) -> list[dict]:
        """Poll ``expr`` until ``accept(result)`` (the scrapes are a second apart)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(expr)
                if accept(result):
                    return result
            except httpx.TransportError:
                result = "not answering"
            assert self.process.poll() is None, Path(self.log.name).read_text()
            assert time.monotonic() < deadline, f"{expr}: {result} after {timeout} s"
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def values(result: list[dict]) -> list[float]:
    return [float(series["value"][1]) for series in result]


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs Debian's prometheus (bin/eko-dev test installs it)")
def test_every_panel_query_returns_data_from_a_server_that_took_calls(built_cache, tmp_path):
    dashboard = load_dashboard()
    crm, crm_address = start_crm(tmp_path)
    metrics_port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(
        f'[crm]\nbudget_ms = 1000\n[tts]\ndynamic_cache_dir = "{tmp_path / "dynamic"}"\n'
        f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\ndrain_grace_seconds = 5\n', encoding="utf-8")
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    try:
        with FakeElevenLabs(api_key="test-key") as fake:
            env = {"ELEVENLABS_API_KEY": "test-key", "ELEVENLABS_BASE_URL": fake.base_url}
            with ServerProcess(built_cache, "--config", str(config), "--crm", crm_address,
                               "--script", "eko_test_scripts:greet_then_live", env=env) as server:
                server.wait_for_log(r"CRM connected")
                prometheus.wait_for('up{job="eko-rtp"}', lambda result: values(result) == [1.0], timeout=20)
                # A phone with RTCP (12 s: a round trip needs its report after our first SR), beside two raw
                # callers one after the other: the first pays for the live text, the second hits the cache.
                phone: dict = {}
                thread = threading.Thread(target=lambda: phone.update(result=run_pjsua2(
                    server.address, "--hold", "12", "--from-user", "0612345678")))
                thread.start()
                first = place_call(server.address, hold=8.0, caller="+33623456789")
                second = place_call(server.address, hold=3.0, caller="0600000000")
                thread.join(40)
                server.wait_for_log(r"ended \(remote_bye\) after \d+ ms; loss=[\d.]+% jitter=[\d.]+ms rtt=[\d.]+ms")
                # Every call over and synced (once a second) into a scrape (once a second) Prometheus holds.
                prometheus.wait_for("sum(eko_calls_total)", lambda result: values(result) == [3.0], timeout=15)
                empty = [(title, expr, result) for title, expr in panel_queries(dashboard)
                         if not (result := prometheus.query(expr)) or not all(map(math.isfinite, values(result)))]
                assert not empty, empty
                shown = {expr: values(prometheus.query(expr)) for _, expr in panel_queries(dashboard)}

                # The drain panel: SIGTERM with a call in progress; the server drains for it.
                caller = threading.Thread(target=place_call, args=(server.address,), kwargs={"hold": 4.0})
                caller.start()
                prometheus.wait_for("sum(eko_active_calls)", lambda result: values(result) == [1.0], timeout=10)
                server.process.send_signal(signal.SIGTERM)
                prometheus.wait_for("max(eko_draining)", lambda result: values(result) == [1.0], timeout=10)
                caller.join(15)
    finally:
        prometheus.stop()
        crm.terminate()
        crm.wait(10)
    assert [result["answered"] for result in phone["result"]] == [True]
    assert first.status == second.status == 200
    assert len(fake.audio_requests()) == 1  # the second caller's live text came from the dynamic cache
    assert shown["sum(eko_active_calls)"] == [0.0]
    assert shown["max(eko_draining)"] == [0.0]
    assert sum(shown['sum by (outcome) (rate(eko_calls_total[5m])) * 60']) > 0
    assert shown["sum(increase(eko_tts_estimated_cost_usd_total[24h]))"][0] > 0
    assert shown["sum(increase(eko_cache_hits_total[24h])) * 0.0074"][0] > 0
    for title, expr in panel_queries(dashboard):
        if title in ("Greeting latency (200 OK to first RTP packet)", "CRM look-up latency", "Round-trip time"):
            assert shown[expr][0] > 0, (title, expr, shown[expr])
