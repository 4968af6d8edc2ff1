"""The server as a service, as real processes: sd_notify, reload on SIGHUP, drain on SIGTERM, metrics."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eko_bench import uac
from eko_rtp.cache.catalogue import load_catalogue
from eko_tts_helpers import payload_audio
from raw_caller import place_call
from server_helpers import PHRASES, REPO, ServerProcess, free_port


def in_thread(function, *args, **kwargs):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def sip_request(target, message: bytes, timeout: float = 3.0) -> uac.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(message, target)
        while True:
            response = uac.parse_message_untrusted(sock.recvfrom(65535)[0])
            if response.status >= 200:
                return response


def options(target, local_port=5999) -> uac.Message:
    endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=local_port, target_host=target[0], target_port=target[1])
    return sip_request(target, uac.options(endpoint, call_id=uac.new_tag(), branch=uac.new_branch()))


def test_ready_status_and_watchdog_reach_the_notify_socket(built_cache, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
        with ServerProcess(built_cache, env=env) as server:
            messages = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and sum(m == b"WATCHDOG=1" for m in messages) < 3:
                messages.append(notify.recv(4096))
            ready = [m for m in messages if m.startswith(b"READY=1")]
            assert ready and b"STATUS=0 active call(s)" in ready[0], messages
            assert messages.count(b"WATCHDOG=1") >= 3
            thread, _ = in_thread(place_call, server.address, hold=1.5)
            statuses = []
            while time.monotonic() < deadline + 10 and b"STATUS=1 active call(s)" not in statuses:
                statuses.append(notify.recv(4096))
            thread.join(10)


def test_reload_new_calls_hear_new_audio_calls_in_progress_keep_theirs(built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    phrases = tmp_path / "phrases.toml"
    phrases.write_text(PHRASES.read_text(encoding="utf-8"), encoding="utf-8")
    old_greet = (cache / "greet.raw").read_bytes()
    with ServerProcess(cache, "--phrases", str(phrases)) as server:
        thread, first = in_thread(place_call, server.address, hold=len(old_greet) / 8000 + 1.0)
        time.sleep(1.0)  # the first call is speaking
        text = phrases.read_text(encoding="utf-8").replace("Bonjour, je suis Eko", "Bonsoir, ici Eko", 1)
        phrases.write_text(text, encoding="utf-8")
        subprocess.run([sys.executable, "-m", "eko_rtp", "cache", "build", "--cache", str(cache), "--phrases", str(phrases)],
                       check=True, capture_output=True, cwd=REPO, timeout=120)
        new_greet = (cache / "greet.raw").read_bytes()
        assert new_greet != old_greet
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(rf"reloaded: {len(load_catalogue(PHRASES))} cached phrases")
        second = place_call(server.address, hold=len(new_greet) / 8000 + 0.5)
        thread.join(20)
    heard_first = payload_audio(first["value"].packets)
    assert heard_first[: len(old_greet)] == old_greet  # the call in progress kept its audio
    assert payload_audio(second.packets)[: len(new_greet)] == new_greet


def test_a_broken_reload_is_refused_and_the_server_keeps_serving(built_cache, tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[media]\nrtp_timeout = 30\n", encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as server:
        config.write_text("[media]\nrtp_timeout = 30\nbogus = 1\n", encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        match = server.wait_for_log(r"reload refused, keeping the running configuration and cache: (.*)")
        assert "media.bogus" in match.group(1) and str(config) in match.group(1)
        record = place_call(server.address, hold=0.5)
    assert record.status == 200 and record.packets


def test_a_reload_that_changes_the_servers_cpus_says_they_need_a_restart(built_cache, tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[media]\nrtp_timeout = 30\n", encoding="utf-8")
    cpu = min(os.sched_getaffinity(0))
    with ServerProcess(built_cache, "--config", str(config)) as server:
        config.write_text(f'[media]\nrtp_timeout = 30\ncpus = "{cpu}"\nkeep_cpu_awake = true\n', encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(r"reloaded: ")
        server.wait_for_log(r"media.keep_cpu_awake changed: it takes effect when the server restarts")
        assert "media.cpus changed: it takes effect when the server restarts" in server.log()
        assert "SCHED_IDLE spinners" not in server.log()  # nothing started on a reload
        assert os.sched_getaffinity(server.process.pid) == os.sched_getaffinity(0)  # nor moved


def test_sigterm_drains_calls_in_progress_and_refuses_new_ones(built_cache, tmp_path):
    with ServerProcess(built_cache) as server:
        thread, in_progress = in_thread(place_call, server.address, hold=3.0)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log(r"draining")
        refused = place_call(server.address, hold=0.5)
        probe = options(server.address)
        thread.join(10)
        code = server.process.wait(10)
    assert refused.status == 503
    assert probe.status == 503 and probe.header("retry-after")
    call = in_progress["value"]
    assert call.status == 200 and not call.server_hung_up  # it ended on the caller's BYE
    assert call.responses[-1] == 200  # ... which was answered
    assert code == 0


def test_drain_grace_over_sends_bye(built_cache, tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[service]\ndrain_grace_seconds = 1\n", encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as server:
        thread, in_progress = in_thread(place_call, server.address, hold=20.0)
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        thread.join(15)
        code = server.process.wait(10)
        elapsed = time.monotonic() - started
    assert in_progress["value"].server_hung_up
    assert code == 0 and elapsed < 8


def test_metrics_are_scraped_during_a_call(built_cache, tmp_path):
    port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[service]\nmetrics_listen = "127.0.0.1:{port}"\n', encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as server:
        thread, _ = in_thread(place_call, server.address, hold=2.5)
        time.sleep(1.8)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        thread.join(10)
        time.sleep(1.2)
        after = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("eko_active_calls", ())] == 1
    assert samples[("eko_sip_responses_total", (("code", "200"),))] >= 1
    assert samples[("eko_rtp_frames_sent_total", ())] >= 40
    assert samples[("eko_greeting_latency_seconds_count", ())] == 1
    assert samples[("eko_cache_hits_total", (("cache", "phrase"),))] >= 1
    final = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(after) for s in f.samples}
    assert final[("eko_active_calls", ())] == 0
    assert final[("eko_calls_total", (("outcome", "remote_bye"),))] == 1


def serve_once(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``eko-rtp serve`` that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "eko_rtp", "serve", "--listen", f"127.0.0.1:{free_port()}", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_a_cache_missing_phrases_refuses_to_start_naming_them(built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    (cache / "greet.raw").unlink()
    (cache / "goodbye.raw").write_bytes(b"")
    completed = serve_once("--cache", str(cache), "--phrases", str(PHRASES))
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"eko-rtp: error: command line, key 'cache.dir': {cache} lacks 2 of the catalogue's ")
    assert last.endswith(" phrase(s): goodbye (corrupt), greet (missing); build them with `eko-rtp cache build`,"
                         " or start anyway with --degraded (cache.allow_missing = true)")
    empty = serve_once("--cache", str(tmp_path / "nothing"), "--phrases", str(PHRASES))
    count = len(load_catalogue(PHRASES))
    assert empty.returncode == 2 and f"lacks {count} of the catalogue's {count} phrase(s): anything_else (missing)," in empty.stderr
    assert "Traceback" not in completed.stderr + empty.stderr


def test_degraded_starts_with_what_the_cache_has(built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    (cache / "goodbye.raw").unlink()
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[cache]\nallow_missing = true\n", encoding="utf-8")
    for how in (["--degraded"], ["--config", str(config)]):
        with ServerProcess(cache, *how) as server:
            assert re.search(r"WARNING .*running degraded \(cache.allow_missing\): .* lacks 1 of the catalogue's \d+"
                             r" phrase\(s\): goodbye \(missing\)", server.log()), server.log()
            record = place_call(server.address, hold=0.5)
        assert record.status == 200 and record.packets


def test_a_reload_to_a_cache_missing_phrases_is_refused(built_cache, tmp_path):
    phrases = tmp_path / "phrases.toml"
    phrases.write_text(PHRASES.read_text(encoding="utf-8"), encoding="utf-8")
    with ServerProcess(built_cache, "--phrases", str(phrases)) as server:
        # A phrase added to the catalogue, the cache not rebuilt: the running server must not take it.
        with phrases.open("a", encoding="utf-8") as catalogue:
            catalogue.write('\n[phrases.new_offer]\ntext = "Découvrez notre nouvelle offre fibre."\n')
        server.process.send_signal(signal.SIGHUP)
        match = server.wait_for_log(r"reload refused, keeping the running configuration and cache: (.*)")
        assert "lacks 1 of the catalogue's" in match.group(1) and "new_offer (missing)" in match.group(1)
        record = place_call(server.address, hold=0.5)
    assert record.status == 200 and record.packets
    assert "reloaded:" not in server.log()


def test_the_config_sets_the_log_level(built_cache, tmp_path):
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[service]\nlog_level = "warning"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "eko_rtp", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
         "--cache", str(built_cache), "--phrases", str(PHRASES)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if options(("127.0.0.1", port), local_port=free_port()).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the server did not answer OPTIONS"
            time.sleep(0.1)
        assert place_call(("127.0.0.1", port), hold=0.3).status == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0
    assert stderr == "", stderr  # not one INFO line: no start-up banner, no call lines


def test_metrics_flag_serves_metrics(built_cache):
    port = free_port()
    with ServerProcess(built_cache, "--metrics", f"127.0.0.1:{port}") as server:
        server.wait_for_log(rf"metrics on http://127.0.0.1:{port}/metrics")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "eko_active_calls 0.0" in text
