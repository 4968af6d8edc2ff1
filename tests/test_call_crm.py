"""The greeting a caller hears depends on the CRM: a real `eko-rtp crm serve` process,
the real server, and pjsua2 callers whose received audio decides which phrase played."""

from __future__ import annotations

import array
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from eko_rtp.codec.g711 import ulaw_to_linear16
from server_helpers import REPO, ServerProcess, free_port, read_wav_samples, run_pjsua2, windowed_match

pytestmark = pytest.mark.interop

CANDIDATES = ("greet", "returning_client_pending_internet", "returning_client_pending_mobile", "returning_client_no_ticket")
CALLERS = {  # numbers as a trunk might present them -> the phrase the caller must hear first
    "0612345678": "returning_client_pending_internet",
    "+33623456789": "returning_client_pending_mobile",
    "0033145678901": "returning_client_no_ticket",
    "0600000000": "greet",
}


@pytest.fixture
def crm(tmp_path):
    database = tmp_path / "crm.sqlite3"
    subprocess.run([sys.executable, "-m", "eko_rtp", "crm", "seed", "--db", str(database)], check=True, capture_output=True, cwd=REPO, timeout=60)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "eko_rtp", "crm", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(database)],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    line = ""
    while "listening" not in line.lower():
        line = process.stderr.readline()
        assert line, "the CRM exited before listening"
    yield process, f"127.0.0.1:{port}"
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)


def patient_config(tmp_path) -> str:
    """A generous greeting budget, for tests about *which* greeting (not about the budget)
    that must not fall back to the standard one because a loaded CI machine is slow."""
    path = tmp_path / "patient.toml"
    path.write_text("[crm]\nbudget_ms = 2000\n", encoding="utf-8")
    return str(path)


def reference(cache_dir, key: str) -> list[int]:
    samples = array.array("h")
    samples.frombytes(ulaw_to_linear16((cache_dir / f"{key}.raw").read_bytes()))
    return samples.tolist()


def first_phrase_heard(cache_dir, record: str) -> tuple[str, dict]:
    """The candidate phrase the recording matches best (whole phrase, so similar openings differ)."""
    received = read_wav_samples(record)
    scores = {key: windowed_match(received, reference(cache_dir, key), seconds=6.0)[0] for key in CANDIDATES}
    return max(scores, key=scores.get), scores


def test_each_kind_of_caller_hears_its_greeting(built_cache, tmp_path, crm):
    _, address = crm
    with ServerProcess(built_cache, "--crm", address, "--config", patient_config(tmp_path)) as server:
        server.wait_for_log(r"CRM connected")
        args = ["--calls", "4", "--hold", "6.5", "--record-dir", str(tmp_path)]
        for number in CALLERS:
            args += ["--from-user", number]
        results = run_pjsua2(server.address, *args)
    for result, expected in zip(results, CALLERS.values()):
        heard, scores = first_phrase_heard(built_cache, result["record"])
        assert heard == expected, scores
        assert scores[expected] >= 0.9, scores


def test_a_stalled_crm_costs_the_caller_the_budget_at_most(built_cache, tmp_path, crm):
    process, address = crm
    with ServerProcess(built_cache, "--crm", address) as server:
        server.wait_for_log(r"CRM connected")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            [result] = run_pjsua2(server.address, "--hold", "6", "--from-user", "0612345678", "--record-dir", str(tmp_path))
        finally:
            os.kill(process.pid, signal.SIGCONT)
        invite = float(server.wait_for_log(r"INVITE received .* at ([\d.]+) ms").group(1))
        answer = float(server.wait_for_log(r"200 OK sent at ([\d.]+) ms").group(1))
        heard, scores = first_phrase_heard(built_cache, result["record"])
        assert heard == "greet", scores
        assert answer - invite <= 150 + 20, (invite, answer)
        # After SIGCONT the same caller is recognised again.
        (tmp_path / "again").mkdir()
        [again] = run_pjsua2(server.address, "--hold", "6.5", "--from-user", "0612345678", "--record-dir", str(tmp_path / "again"))
        heard, scores = first_phrase_heard(built_cache, again["record"])
        assert heard == "returning_client_pending_internet", scores


def test_a_dead_crm_means_standard_greetings_and_the_server_keeps_serving(built_cache, tmp_path, crm):
    process, address = crm
    with ServerProcess(built_cache, "--crm", address) as server:
        server.wait_for_log(r"CRM connected")
        process.kill()
        process.wait(5)
        [result] = run_pjsua2(server.address, "--hold", "6", "--from-user", "0612345678", "--record-dir", str(tmp_path))
        heard, scores = first_phrase_heard(built_cache, result["record"])
        assert heard == "greet", scores
        assert result["answered"]
        log = server.log()
    assert re.search(r"CRM look-up of \+\*+5678: .*(closed|unavailable|no connection)", log, re.I), log[-2000:]


def test_returning_caller_presses_1_without_a_technician_queue_gets_a_callback(built_cache, tmp_path, crm):
    # No [transfer] queue configured (the embedded defaults): "yes" cannot be put
    # through, so the caller is promised a callback, and the CRM holds it.
    _, address = crm
    with ServerProcess(built_cache, "--crm", address, "--config", patient_config(tmp_path)) as server:
        server.wait_for_log(r"CRM connected")
        [result] = run_pjsua2(
            server.address, "--hold", "40", "--hangup", "remote", "--from-user", "0612345678",
            "--dtmf", "1@6.0", "--record-dir", str(tmp_path),
        )
        server.wait_for_log(r"ended \(local_bye\) after \d+ ms; .*; script=callback_offered")
        log = server.log()
    assert "no transfer: no technician queue is configured" in log
    assert result["hung_up_by"] == "remote" and result["seconds"] < 35
    received = read_wav_samples(result["record"])
    phrase = reference(built_cache, "transfer_unavailable")
    score, lag = windowed_match(received[int(5.5 * 8000) :], phrase, seconds=2.0)
    assert score >= 0.9, (score, lag, log[-3000:])
    database = sqlite3.connect(tmp_path / "crm.sqlite3")
    try:
        rows = database.execute("SELECT phone, queue, reason FROM callbacks").fetchall()
        logged = []
        for _ in range(100):  # call logs are written in batches: give the writer a moment
            logged = database.execute("SELECT outcome, script_outcome FROM call_log").fetchall()
            if logged:
                break
            time.sleep(0.05)
    finally:
        database.close()
    assert rows == [("+33612345678", "internet", "open ticket")]
    assert logged == [("local_bye", "callback_offered")]
