"""espeak-ng's live text is counted (issue 14, defect 2): the real server renders a
live phrase with espeak-ng, and both the call's end line and the metric say how many
characters it rendered; the estimated cost stays 0 (espeak-ng is free)."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from eko_test_scripts import LIVE_TEXT
from raw_caller import place_call
from server_helpers import ServerProcess, free_port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_espeak_characters_are_counted_per_call_and_in_the_metric(built_cache, tmp_path):
    metrics_port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(
        f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
        f'[tts]\ndynamic_cache_dir = "{tmp_path / "dynamic"}"\n',
        encoding="utf-8",
    )
    # No ELEVENLABS_API_KEY (ServerProcess removes it): espeak-ng speaks.
    with ServerProcess(built_cache, "--config", str(config), "--script", "eko_test_scripts:say_live") as server:
        place_call(server.address, hold=3.0)
        server.wait_for_log(rf"ended \(remote_bye\).*tts_chars={len(LIVE_TEXT)} .*tts_cost_usd=0\.00000 ")
        characters = ("eko_tts_characters_total", (("backend", "espeak"),))
        deadline = time.monotonic() + 5  # the counters reach Prometheus once a second
        while (found := scrape(metrics_port)).get(characters) != len(LIVE_TEXT) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found[characters] == len(LIVE_TEXT)
        assert found[("eko_tts_estimated_cost_usd_total", ())] == 0.0
