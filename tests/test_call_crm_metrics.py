"""The CRM look-up metrics move with real calls (issue 14, defect 1).

A real `eko-rtp crm serve` process answers the server's look-ups: at once, then
frozen (SIGSTOP) past the greeting budget so its answer comes late, then killed so
the look-up fails. The scrape must show two answers (one of them late), one timeout
and one error, as the call path measured them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from raw_caller import place_call
from server_helpers import ServerProcess, free_port, start_crm

KNOWN = "0612345678"  # a sample customer (docs/crm-rpc.md)


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_crm_lookups_are_counted_by_the_call_path(built_cache, tmp_path):
    crm, address = start_crm(tmp_path)
    metrics_port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[crm]\nbudget_ms = 400\n[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', encoding="utf-8")
    try:
        with ServerProcess(built_cache, "--config", str(config), "--crm", address) as server:
            server.wait_for_log(r"CRM connected")
            assert place_call(server.address, hold=0.3, caller=KNOWN).status == 200  # answered at once

            crm.send_signal(signal.SIGSTOP)  # the next answer comes after the 400 ms budget
            call = threading.Thread(target=place_call, args=(server.address,), kwargs={"hold": 1.5, "caller": KNOWN})
            call.start()
            time.sleep(1.0)
            crm.send_signal(signal.SIGCONT)
            late = server.wait_for_log(r"CRM look-up of .*: known caller in ([\d.]+) ms \(after the greeting budget\)")
            call.join(10)

            crm.kill()
            crm.wait(10)
            server.wait_for_log(r"CRM connection to .* lost")
            assert place_call(server.address, hold=0.3, caller=KNOWN).status == 200  # the CRM is gone
            server.wait_for_log(r"CRM look-up of .*: no connection to CRM")
            metrics = scrape(metrics_port)
    finally:
        if crm.poll() is None:
            os.kill(crm.pid, signal.SIGCONT)
            crm.kill()
            crm.wait(10)
    assert metrics["eko_crm_lookup_latency_seconds_count"] == 2  # both answers, the late one too
    assert metrics["eko_crm_lookup_latency_seconds_bucket{le=0.25}"] == 1  # the prompt one
    assert metrics["eko_crm_lookup_latency_seconds_sum"] >= float(late.group(1)) / 1000 >= 0.9
    assert metrics["eko_crm_lookup_timeouts_total"] == 1  # the late one: its caller heard the standard greeting
    assert metrics["eko_crm_lookup_errors_total"] == 1  # the look-up with no CRM
