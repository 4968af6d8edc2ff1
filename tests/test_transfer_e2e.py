"""Eko hands a caller over to a technician: the real server, real peers, a real CRM.

- pjsua2 calls from a number with an open internet ticket, presses 1 ("oui") and
  follows Eko's REFER to a pjsua2 technician; the two hear each other's tones, Eko's
  leg ends, and ``crm.log_call`` says ``transferred`` (directly, and through the
  Kamailio front that Record-Routes the dialog);
- sipp callers refuse the REFER, report a busy technician, never NOTIFY, or hang up
  during the transfer: each ends with the apology and a callback in the CRM, or a
  clean end, and the right script outcome;
- a sipp caller challenges the REFER with 407: Eko answers with digest credentials;
- a sipp registrar challenges Eko's REGISTER, accepts it, sees the refresh and the
  unregistration when Eko stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sqlite3
import time

import pytest

from server_helpers import ServerProcess, run_pjsua2, start_crm
from test_kamailio import Kamailio, needs_kamailio
from test_transfer_peers import CALLER_TONE, TECHNICIAN_TONE, Sipp, Technician, tones  # noqa: F401 (fixture)
from tone_check import tone_fraction, tone_seconds

pytestmark = pytest.mark.interop

SIPP = shutil.which("sipp")
needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt-get install sip-tester)")
needs_pjsua2 = pytest.mark.skipif(importlib.util.find_spec("pjsua2") is None,
                                  reason="pjsua2 is not installed (pip install pjsua2-python)")

TICKET_CALLER = "0612345678"  # the seeded CRM: an open internet ticket
ALWAYS_OPEN = "".join(f'{day} = "00:00-24:00"\n' for day in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")) + "holidays = []\n"


def eko_config(tmp_path, *, technician: str = "sip:technician@127.0.0.1:9", extra: str = "") -> str:
    path = tmp_path / "eko.toml"
    path.write_text(
        "[crm]\nbudget_ms = 2000\n"
        f'[transfer]\ninternet = "{technician}"\ndefault = "{technician}"\n'
        "notify_timeout = 2\nresult_timeout = 10\nbye_wait = 1\n"
        f"[hours]\n{ALWAYS_OPEN}{extra}",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture
def crm(tmp_path):
    process, address = start_crm(tmp_path)
    yield address, tmp_path / "crm.sqlite3"
    if process.poll() is None:
        process.terminate()
        process.wait(10)


def crm_rows(database, query: str, *, wait_for_rows: bool = True) -> list[tuple]:
    """Rows of ``query``; call logs are written in batches, so wait a moment for some."""
    connection = sqlite3.connect(database)
    try:
        for _ in range(100):
            rows = connection.execute(query).fetchall()
            if rows or not wait_for_rows:
                return rows
            time.sleep(0.05)
        return rows
    finally:
        connection.close()


@needs_sipp
@needs_pjsua2
@pytest.mark.parametrize("front", ["direct", pytest.param("kamailio", marks=needs_kamailio)])
def test_yes_puts_the_caller_through_to_the_technician(built_cache, tmp_path, crm, tones, front):
    crm_address, database = crm
    technician = Technician(tmp_path / "technician", "--play", tones["technician"], "--ring", "0.3")
    try:
        config = eko_config(tmp_path, technician=f"sip:technician@127.0.0.1:{technician.port}")
        with ServerProcess(built_cache, "--crm", crm_address, "--config", config, "--sip-trace") as server, \
                contextlib.ExitStack() as stack:
            server.wait_for_log(r"CRM connected")
            target = server.address
            if front == "kamailio":
                (tmp_path / "kamailio").mkdir()
                proxy = stack.enter_context(Kamailio(tmp_path / "kamailio", [server.port], ping_interval=0))
                target = proxy.address
            [caller] = run_pjsua2(
                target, "--from-user", TICKET_CALLER, "--dtmf", "1@6.0", "--record-dir", str(tmp_path),
                "--hangup", "remote", "--hold", "40", "--transfer", "accept",
                "--play-after-transfer", f"{tones['caller']}@0.5", "--hold-after-transfer", "4",
                timeout=90,
            )
            server.wait_for_log(r"ended \((remote_bye|local_bye)\) after \d+ ms; .*; script=transferred")
            log = server.log()
        heard = technician.stop()
    finally:
        technician.kill()
    assert "transferring to the internet queue" in log and "transfer succeeded" in log, log[-4000:]
    transfer = caller["transfer"]
    assert transfer["requested"] and transfer["response"] == 202, caller
    assert transfer["refer_to"] == f"<sip:technician@127.0.0.1:{technician.port}>"
    assert caller["hung_up_by"] == "remote"  # Eko's leg ended by Eko's BYE (pjsua2 sends none)
    assert transfer["new_call_status"] == 200
    [call] = heard["calls"]
    assert call["confirmed"] and TICKET_CALLER[1:] in call["from"]
    # After Eko's leg ended, the caller and the technician hear each other.
    assert tone_seconds(call["recorded"], CALLER_TONE) >= 2.5
    assert tone_seconds(transfer["recorded"], TECHNICIAN_TONE) >= 3.0
    assert tone_fraction(transfer["recorded"], CALLER_TONE) < 0.02
    assert crm_rows(database, "SELECT script_outcome FROM call_log") == [("transferred",)]
    if front == "kamailio":
        # The REFER went through the front: the dialog's route set names it.
        # The REFER went through the front (the dialog's route set), not straight to the phone.
        refers = [line for line in log.splitlines() if "REFER sip:" in line and "sent to" in line]
        assert refers and all(f"sent to UDP 127.0.0.1:{proxy.port}," in line for line in refers), refers


def sipp_caller(scenario: str, server: ServerProcess, tmp_path, **sets) -> Sipp:
    return Sipp(scenario, tmp_path / "uac", sets={"dtmf_after_ms": 6000, **sets},
                remote=f"127.0.0.1:{server.port}", timeout=60)


@needs_sipp
@pytest.mark.parametrize("scenario, sets, reason, outcome", [
    ("transfer_refused_uac.xml", {}, "REFER refused: 603", "transfer_failed"),
    ("transfer_failed_uac.xml", {}, "technician side: 486 Busy Here", "transfer_failed"),
    ("transfer_silent_uac.xml", {}, "no NOTIFY after our REFER", "transfer_failed"),
], ids=["refused", "busy", "silent"])
def test_failed_transfer_apologises_and_books_a_callback(built_cache, tmp_path, crm, scenario, sets, reason,
                                                           outcome):
    crm_address, database = crm
    with ServerProcess(built_cache, "--crm", crm_address, "--config", eko_config(tmp_path)) as server:
        server.wait_for_log(r"CRM connected")
        uac = sipp_caller(scenario, server, tmp_path, hangup_after_ms=30000, expect_bye=1, **sets)
        try:
            assert uac.wait() == 0, uac.explain() + server.log()[-4000:]
        finally:
            uac.kill()
        server.wait_for_log(rf"ended \(local_bye\) after \d+ ms; .*; script={outcome}")
        log = server.log()
    assert f"failed: {reason}" in log, log[-4000:]
    assert uac.log_lines()[0] == "refer to sip:technician@127.0.0.1:9"
    assert uac.log_lines()[-1] == "bye from eko"
    assert crm_rows(database, "SELECT queue, reason FROM callbacks") == [("internet", "open ticket")]
    assert crm_rows(database, "SELECT script_outcome FROM call_log") == [(outcome,)]


@needs_sipp
def test_caller_hanging_up_during_the_transfer_ends_cleanly(built_cache, tmp_path, crm):
    crm_address, database = crm
    with ServerProcess(built_cache, "--crm", crm_address, "--config", eko_config(tmp_path)) as server:
        server.wait_for_log(r"CRM connected")
        uac = sipp_caller("transfer_hangup_uac.xml", server, tmp_path, hangup_after_ms=500)
        try:
            assert uac.wait() == 0, uac.explain() + server.log()[-4000:]
        finally:
            uac.kill()
        server.wait_for_log(r"ended \(remote_bye\) after \d+ ms; .*; script=transfer_unconfirmed")
    assert crm_rows(database, "SELECT script_outcome FROM call_log") == [("transfer_unconfirmed",)]
    assert crm_rows(database, "SELECT * FROM callbacks", wait_for_rows=False) == []


@needs_sipp
def test_refer_challenged_with_407_goes_through_on_the_second_try(built_cache, tmp_path, crm):
    crm_address, database = crm
    environment = {"EKO_SIP_USERNAME": "eko", "EKO_SIP_PASSWORD": "secret"}
    with ServerProcess(built_cache, "--crm", crm_address, "--config", eko_config(tmp_path),
                       env=environment) as server:
        server.wait_for_log(r"CRM connected")
        uac = sipp_caller("transfer_challenge_uac.xml", server, tmp_path, hangup_after_ms=30000, expect_bye=1)
        try:
            assert uac.wait() == 0, uac.explain() + server.log()[-4000:]
        finally:
            uac.kill()
        server.wait_for_log(r"ended \(local_bye\) after \d+ ms; .*; script=transferred")
    assert uac.log_lines()[:3] == ["refer to sip:technician@127.0.0.1:9", "refer challenged 407",
                                   "refer authorized"], uac.log_lines()


@needs_sipp
def test_registration_with_a_challenging_registrar(built_cache, tmp_path):
    registrar = Sipp("registrar_auth.xml", tmp_path / "registrar", sets={"expires": 4, "min_refreshes": 1},
                     timeout=60)
    try:
        registrar.wait_listening()
        extra = (f'[registration]\nregistrar = "sip:127.0.0.1:{registrar.port}"\n'
                 f'aor = "sip:eko@127.0.0.1"\nexpires = 3600\n')
        config = tmp_path / "eko.toml"
        config.write_text(extra, encoding="utf-8")
        environment = {"EKO_SIP_USERNAME": "eko", "EKO_SIP_PASSWORD": "secret"}
        with ServerProcess(built_cache, "--config", str(config), env=environment) as server:
            server.wait_for_log(r"registration: registered to sip:127\.0\.0\.1")
            # The registrar granted 4 s: the refresh comes at 2 s, challenged and answered again.
            time.sleep(3.5)
            assert server.process.poll() is None
        # Stopped (SIGTERM: drain): the binding is removed with Expires: 0.
        assert server.wait_for_log(r"registration: unregistered") is not None
        assert registrar.wait() == 0, registrar.explain() + server.log()[-4000:]
    finally:
        registrar.kill()
