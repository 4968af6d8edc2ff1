"""The blind-transfer peers, checked against each other before Eko can transfer.

Eko will transfer a caller with an in-dialog REFER (RFC 3515). Until it does, sipp's
``sip/scenarios/refer_uas.xml`` plays Eko's side, and these tests check the peers the
Eko tests will use:

- pjsua2 as the caller (``tests/peers/pjsua2_caller.py --transfer``) follows the REFER
  to a pjsua2 technician (``tests/peers/pjsua2_technician.py``): each hears the other's
  tone (440 Hz from the caller, 1000 Hz from the technician), the NOTIFYs report the
  new call's progress; the caller can refuse (603); a busy technician fails it (486);
- the sipp callers Eko will be tested with (``transfer_*_uac.xml``: refused, failed,
  silent, hang-up) run against refer_uas, each taking the path it exists for;
- ``registrar_auth.xml`` challenges, accepts, refreshes and unregisters pjsua2.

Every process listens on 127.0.0.1 on a free port and runs under a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server_helpers import PJSUA2_CALLER, REPO, free_port, free_sipp_media_port, run_pjsua2
from tone_check import tone_fraction, tone_seconds, write_tone_wav

pytestmark = pytest.mark.interop

SCENARIOS = REPO / "sip" / "scenarios"
TECHNICIAN = REPO / "tests" / "peers" / "pjsua2_technician.py"
SIPP = shutil.which("sipp")
needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt-get install sip-tester)")
needs_pjsua2 = pytest.mark.skipif(importlib.util.find_spec("pjsua2") is None,
                                  reason="pjsua2 is not installed (pip install pjsua2-python)")

CALLER_TONE = 440.0
TECHNICIAN_TONE = 1000.0


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Sipp:
    """One sipp run (``-m 1``) in its own directory, with its screen, logs and traces there."""

    def __init__(self, scenario: str, workdir: Path, *, sets: dict | None = None, remote: str | None = None,
                 timeout: int = 40):
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = Path(scenario).stem
        self.workdir = workdir
        self.port = free_port()
        self.timeout = timeout
        command = [
            SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(self.port),
            "-mp", str(free_sipp_media_port()), "-m", "1", "-nostdin", "-timeout", f"{timeout}s", "-timeout_error",
            "-trace_err", "-trace_logs", "-trace_msg",
        ]
        for name, value in (sets or {}).items():
            command += ["-set", name, str(value)]
        if remote:
            command.append(remote)
        self.screen = open(workdir / "screen.txt", "w")
        self.process = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self.screen,
                                        stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Until sipp holds its UDP port (a UAS is then ready for the first INVITE)."""
        deadline = time.monotonic() + timeout
        while not udp_port_taken(self.port):
            assert self.process.poll() is None, self.explain()
            assert time.monotonic() < deadline, "sipp did not bind its port\n" + self.explain()
            time.sleep(0.05)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=self.timeout + 15)
        finally:
            self.screen.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.screen.close()

    def log_lines(self) -> list[str]:
        path = self.workdir / f"{self.name}_{self.process.pid}_logs.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def explain(self) -> str:
        parts = [f"sipp {self.name} exit {self.process.poll()}"]
        for path in sorted(self.workdir.glob("*")):
            if path.suffix in (".log", ".txt"):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


class Technician:
    """The pjsua2 technician process: started, READY awaited, stopped by closing its stdin."""

    def __init__(self, workdir: Path, *args: str, ready_timeout: float = 15.0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.stderr = open(workdir / "technician.err", "w")
        self.process = subprocess.Popen(
            [sys.executable, str(TECHNICIAN), "--port", str(self.port), "--record-dir", str(workdir),
             "--duration", "90", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=REPO,
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the technician never printed READY"
            readable, _, _ = select.select([self.process.stdout], [], [], remaining)
            if readable:
                line = self.process.stdout.readline()
                assert line, f"the technician exited before READY: {(workdir / 'technician.err').read_text()[-3000:]}"
                if line.strip() == f"READY {self.port}":
                    return

    def stop(self) -> dict:
        """Close its stdin: it hangs up, unregisters, and prints its JSON."""
        try:
            out, _ = self.process.communicate(timeout=20)
        finally:
            self.stderr.close()
        assert self.process.returncode == 0, out
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.stderr.close()


@pytest.fixture
def tones(tmp_path):
    return {
        "caller": write_tone_wav(tmp_path / "caller-440.wav", CALLER_TONE, 3.0),
        "technician": write_tone_wav(tmp_path / "technician-1000.wav", TECHNICIAN_TONE, 2.0),
    }


def transfer_call(tmp_path, *, caller_args: tuple, technician_args: tuple, sets: dict | None = None):
    """refer_uas answers the pjsua2 caller and transfers it to the technician; return the three outcomes."""
    technician = Technician(tmp_path / "technician", *technician_args)
    uas = None
    try:
        uas = Sipp("refer_uas.xml", tmp_path / "sipp", sets={"tech_port": technician.port, **(sets or {})})
        uas.wait_listening()
        [caller] = run_pjsua2(("127.0.0.1", uas.port), "--record-dir", str(tmp_path), "--hangup", "remote",
                              "--hold", "20", "--timeout", "30", *caller_args, timeout=60)
        uas_exit = uas.wait()
        assert uas_exit == 0, uas.explain()
        return caller, technician.stop(), uas.log_lines()
    finally:
        technician.kill()
        if uas is not None:
            uas.kill()


@needs_sipp
@needs_pjsua2
def test_caller_follows_the_refer_and_talks_to_the_technician(tmp_path, tones):
    caller, technician, steps = transfer_call(
        tmp_path,
        caller_args=("--transfer", "accept", "--play-after-transfer", f"{tones['caller']}@0.5",
                     "--hold-after-transfer", "4"),
        technician_args=("--play", tones["technician"], "--ring", "0.5"),
    )
    transfer = caller["transfer"]
    assert caller["answered"] and caller["hung_up_by"] == "remote"  # Eko's BYE ends the first call
    assert transfer["requested"] and transfer["refers"] == 1 and transfer["response"] == 202
    assert transfer["refer_to"] == f"<sip:technician@127.0.0.1:{technician['port']}>"
    assert 0.8 < transfer["requested_at"] < 3.0  # refer_uas waits 1 s after the ACK
    assert transfer["new_call_status"] == 200 and transfer["new_call_disconnected"]
    assert transfer["new_call_hung_up_by"] == "local" and 3.5 < transfer["new_call_seconds"] < 6
    assert transfer["new_call_confirmed_at"] > transfer["requested_at"] + 0.4  # after the technician's ring
    assert transfer["played_at"] and transfer["played_at"][0] >= 0.5

    [call] = technician["calls"]
    assert call["confirmed"] and call["hung_up_by"] == "remote" and "0612345678" in call["from"]
    assert call["referred_by"] and "eko@127.0.0.1" in call["referred_by"]  # copied from the REFER

    # Eko's view: 202, then NOTIFYs of the new call's progress up to its 200 (subscription over).
    assert steps[:4] == [
        "refer answered 202",
        "notify sipfrag SIP/2.0 100 Trying state active",
        "notify sipfrag SIP/2.0 180 Ringing state active",
        "notify sipfrag SIP/2.0 200 OK state terminated",
    ], steps
    assert steps[-1] == "bye sent"

    # Each side of the new call hears the other one's tone, and only that.
    heard_by_technician = call["recorded"]
    heard_by_caller = transfer["recorded"]
    assert heard_by_caller == str(tmp_path / "call-0-transfer.wav")
    assert tone_seconds(heard_by_technician, CALLER_TONE) >= 2.5
    assert tone_fraction(heard_by_technician, TECHNICIAN_TONE) < 0.02
    assert tone_seconds(heard_by_caller, TECHNICIAN_TONE) >= 3.0
    assert tone_fraction(heard_by_caller, CALLER_TONE) < 0.02
    # The first call (to sipp, which sends no RTP) never carried the technician's audio.
    assert tone_fraction(caller["record"], TECHNICIAN_TONE) == 0.0


@needs_sipp
@needs_pjsua2
def test_caller_refuses_the_transfer_with_603(tmp_path, tones):
    caller, technician, steps = transfer_call(
        tmp_path, caller_args=("--transfer", "reject"), technician_args=("--play", tones["technician"]),
    )
    transfer = caller["transfer"]
    assert transfer["requested"] and transfer["response"] == 603
    assert transfer["new_call_state"] is None and transfer["recorded"] is None
    assert caller["hung_up_by"] == "remote"  # the call went on until Eko's BYE
    assert technician["calls"] == []
    assert steps == ["refer answered 603", "bye sent"], steps


@needs_sipp
@needs_pjsua2
def test_busy_technician_fails_the_transfer(tmp_path):
    caller, technician, steps = transfer_call(
        tmp_path, caller_args=("--transfer", "accept"), technician_args=("--answer", "486"),
    )
    transfer = caller["transfer"]
    assert transfer["response"] == 202
    assert transfer["new_call_status"] == 486 and transfer["new_call_confirmed_at"] is None
    assert transfer["new_call_disconnected"] and transfer["recorded"] is None
    [call] = technician["calls"]
    assert call["answered_with"] == 486 and not call["confirmed"]
    assert steps == [
        "refer answered 202",
        "notify sipfrag SIP/2.0 100 Trying state active",
        "notify sipfrag SIP/2.0 486 Busy Here state terminated",
        "bye sent",
    ], steps


@needs_pjsua2
def test_the_caller_cannot_ignore_a_refer(tmp_path):
    # pjsua sends NOTIFY and calls the target once it accepts: the silent caller is sipp's.
    completed = subprocess.run(
        [sys.executable, str(PJSUA2_CALLER), "--target", "127.0.0.1:9", "--transfer", "ignore"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert completed.returncode == 2
    assert "transfer_silent_uac.xml" in completed.stderr


UAS_DTMF = "dtmf info Signal=1"


@needs_sipp
@pytest.mark.parametrize(
    "scenario, uas_sets, uac_sets, uas_steps, uac_steps",
    [
        ("transfer_refused_uac.xml", {}, {}, [UAS_DTMF, "refer answered 603", "bye sent"], ["bye from eko"]),
        (
            "transfer_failed_uac.xml", {}, {},
            [UAS_DTMF, "refer answered 202", "notify sipfrag SIP/2.0 100 Trying state active",
             "notify sipfrag SIP/2.0 486 Busy Here state terminated", "bye sent"],
            ["bye from eko"],
        ),
        (
            "transfer_silent_uac.xml", {}, {},
            [UAS_DTMF, "refer answered 202", "no notify within 5 s", "bye sent"], ["bye from eko"],
        ),
        (
            "transfer_hangup_uac.xml", {}, {"hangup_after_ms": 500},
            [UAS_DTMF, "refer answered 202", "notify sipfrag SIP/2.0 100 Trying state active", "bye from caller"],
            ["bye sent"],
        ),
        (  # Eko keeps the call after the refusal: the caller hangs up itself.
            "transfer_refused_uac.xml", {"bye_after_ms": 20000}, {"hangup_after_ms": 1000},
            [UAS_DTMF, "refer answered 603", "bye from caller"], ["bye sent"],
        ),
    ],
    ids=["refused", "failed", "silent", "hangup", "refused-caller-hangs-up"],
)
def test_uac_scenario_against_refer_uas(tmp_path, scenario, uas_sets, uac_sets, uas_steps, uac_steps):
    uas = Sipp("refer_uas.xml", tmp_path / "uas", sets={"tech_port": 9, "expect_dtmf": 1, **uas_sets})
    uac = None
    try:
        uas.wait_listening()
        uac = Sipp(scenario, tmp_path / "uac", sets={"dtmf_after_ms": 300, **uac_sets},
                   remote=f"127.0.0.1:{uas.port}")
        uac_exit = uac.wait()
        uas_exit = uas.wait()
        assert uac_exit == 0, uac.explain() + uas.explain()
        assert uas_exit == 0, uas.explain() + uac.explain()
        assert uas.log_lines() == uas_steps
        assert uac.log_lines() == ["refer to sip:technician@127.0.0.1:9", *uac_steps]
    finally:
        uas.kill()
        if uac is not None:
            uac.kill()


@needs_sipp
def test_uac_scenario_fails_when_eko_must_hang_up_and_does_not(tmp_path):
    uas = Sipp("refer_uas.xml", tmp_path / "uas", sets={"tech_port": 9, "expect_dtmf": 1, "bye_after_ms": 20000})
    uac = None
    try:
        uas.wait_listening()
        uac = Sipp("transfer_refused_uac.xml", tmp_path / "uac",
                   sets={"dtmf_after_ms": 300, "hangup_after_ms": 1000, "expect_bye": 1},
                   remote=f"127.0.0.1:{uas.port}")
        assert uac.wait() == 1, uac.explain()
        uas.wait()
        assert uac.log_lines()[-2:] == ["bye sent", "eko did not hang up within hangup_after_ms"]
    finally:
        uas.kill()
        if uac is not None:
            uac.kill()


@needs_sipp
@needs_pjsua2
def test_registrar_challenges_accepts_refreshes_and_unregisters(tmp_path):
    registrar = Sipp("registrar_auth.xml", tmp_path / "registrar", sets={"expires": 8})
    technician = None
    try:
        registrar.wait_listening()
        technician = Technician(tmp_path / "technician", "--registrar", f"127.0.0.1:{registrar.port}",
                                "--auth-user", "eko", "--auth-password", "secret", "--reg-expires", "60")
        time.sleep(7)  # pjsua refreshes the 8 s registration before it runs out
        result = technician.stop()
        assert registrar.wait() == 0, registrar.explain()
    finally:
        registrar.kill()
        if technician is not None:
            technician.kill()
    answers = [(r["code"], r["expiration"]) for r in result["registrations"]]
    assert answers[0] == (200, 8) and answers[-1] == (200, 0), answers  # registered ... unregistered
    assert answers.count((200, 8)) >= 2, answers  # at least one refresh
    steps = registrar.log_lines()
    assert steps[0] == "register 1 challenged"
    assert "register accepted expires 8 (asked 60), registers 1.000000" in steps
    assert steps[-1].startswith("unregister accepted after ")


@needs_sipp
@needs_pjsua2
def test_registrar_refuses_a_wrong_password(tmp_path):
    registrar = Sipp("registrar_auth.xml", tmp_path / "registrar", timeout=20)
    technician = None
    try:
        registrar.wait_listening()
        technician = Technician(tmp_path / "technician", "--registrar", f"127.0.0.1:{registrar.port}",
                                "--auth-user", "eko", "--auth-password", "wrong")
        deadline = time.monotonic() + 10
        while registrar.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        result = technician.stop()
        assert registrar.wait() == 1, registrar.explain()
    finally:
        registrar.kill()
        if technician is not None:
            technician.kill()
    assert [r["code"] for r in result["registrations"]] == [403]
    assert registrar.log_lines() == ["register 1 challenged", "authorization refused"]
