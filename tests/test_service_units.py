"""The unit files: systemd-analyze verify and security, and W^X for our Python stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eko_rtp.errors import UserError
from eko_rtp.service.install import UNITS, check_staged_units, install_service
from service_paths import CHECKOUT, VENV

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt: systemd)")
MAX_EXPOSURE = 2.5


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory) -> dict[str, Path]:
    """The units as install-service writes them, ExecStart= pointing at this venv (verify needs it)."""
    root = tmp_path_factory.mktemp("root")
    install_service(root=root, venv=VENV, checkout=CHECKOUT)
    return {name: root / "etc/systemd/system" / name for name in UNITS}


@pytest.fixture(scope="module")
def pinned_unit(tmp_path_factory) -> Path:
    """eko-rtp.service for a config that gives the server CPU 0 and keeps it awake."""
    root = tmp_path_factory.mktemp("pinned")
    (root / "etc/eko-rtp").mkdir(parents=True)
    (root / "etc/eko-rtp/eko-rtp.toml").write_text('[media]\ncpus = "0"\nkeep_cpu_awake = true\n')
    install_service(root=root, venv=VENV, checkout=CHECKOUT)
    return root / "etc/systemd/system/eko-rtp.service"


def test_a_pinned_unit_verifies_and_stays_locked_down(pinned_unit):
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", str(pinned_unit)], capture_output=True, text=True, timeout=60)
    assert (verified.returncode, verified.stdout, verified.stderr) == (0, "", "")
    security = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(pinned_unit)],
                              capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for eko-rtp.service: (\d+\.\d)", security.stdout)
    assert match and float(match.group(1)) <= MAX_EXPOSURE, security.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_verify(installed_units, unit):
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(installed_units[unit])], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_catches_a_missing_executable(tmp_path):
    """The check above can fail: the template's /opt path does not exist here."""
    unit = tmp_path / "eko-crm.service"
    unit.write_text((Path(__file__).resolve().parents[1] / "systemd/eko-crm.service").read_text())
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Command /opt/eko-rtp/.venv/bin/eko-rtp is not executable: No such file or directory" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(installed_units, unit):
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(installed_units[unit])],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", result.stdout)
    assert match, result.stdout
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout



# A staging run names final paths that do not exist on this host.
FINAL_CHECKOUT = Path("/srv/eko-rtp-staged")
FINAL_VENV = FINAL_CHECKOUT / ".venv"


@pytest.fixture(scope="module")
def staged_root(tmp_path_factory) -> Path:
    """What ``install-service --stage`` writes: units naming a venv that is not there yet."""
    root = tmp_path_factory.mktemp("stage")
    install_service(root=root, venv=FINAL_VENV, checkout=FINAL_CHECKOUT, source=CHECKOUT, stage=True)
    return root


@pytest.mark.parametrize("unit", UNITS)
def test_staged_units_verify_but_for_the_missing_venv(staged_root, unit):
    """verify finds nothing else wrong with a staged unit; security rates it as an installed one."""
    path = staged_root / "etc/systemd/system" / unit
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verified.stdout == ""
    assert set(verified.stderr.splitlines()) == {
        f"{unit}: Command {FINAL_VENV}/bin/eko-rtp is not executable: No such file or directory"}
    security = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", security.stdout)
    assert match and float(match.group(1)) <= MAX_EXPOSURE, security.stdout


def test_checking_staged_units_forgives_only_the_missing_venv(staged_root):
    lines = check_staged_units(staged_root, FINAL_VENV)
    assert [re.sub(r"exposure \d+\.\d ", "exposure N ", line) for line in lines] == [
        f"verified {staged_root}/etc/systemd/system/eko-crm.service, except that {FINAL_VENV}/bin/eko-rtp is not"
        " there yet (staging run)",
        "exposure N for eko-crm.service (systemd-analyze security --offline=true)",
        f"verified {staged_root}/etc/systemd/system/eko-rtp.service, except that {FINAL_VENV}/bin/eko-rtp is not"
        " there yet (staging run)",
        "exposure N for eko-rtp.service (systemd-analyze security --offline=true)",
    ]
    exposures = [float(re.search(r"exposure (\d+\.\d) ", line).group(1)) for line in lines[1::2]]
    assert max(exposures) <= MAX_EXPOSURE


def test_checking_staged_units_with_the_venv_in_place_forgives_nothing(tmp_path):
    root = tmp_path / "stage"
    install_service(root=root, venv=VENV, checkout=FINAL_CHECKOUT, source=CHECKOUT, stage=True)
    assert check_staged_units(root, VENV)[::2] == [
        f"verified {root}/etc/systemd/system/eko-crm.service", f"verified {root}/etc/systemd/system/eko-rtp.service"]


def test_checking_staged_units_reports_any_other_problem(tmp_path):
    root = tmp_path / "stage"
    install_service(root=root, venv=FINAL_VENV, checkout=FINAL_CHECKOUT, source=CHECKOUT, stage=True)
    unit = root / "etc/systemd/system/eko-crm.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    with pytest.raises(UserError) as caught:
        check_staged_units(root, FINAL_VENV)
    message = str(caught.value)
    assert message.startswith(f"{unit}: systemd-analyze verify failed (exit status 1):\n"), message
    assert "Failed to parse service restart specifier, ignoring: sometimes" in message, message


# Runs in a child process after turning W^X on with prctl(PR_SET_MDWE) (Linux 6.3+):
# the kernel then refuses writable+executable mappings, as MemoryDenyWriteExecute=
# does with seccomp. The child proves the policy is on, then runs our stack.
MDWE_CHILD = r"""
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("prctl", ctypes.get_errno()); sys.exit(3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    print("W+X mapping allowed"); sys.exit(4)

import sqlite3
import httpx, msgpack, trio
import elevenlabs
from eko_rtp.codec import g711
from eko_rtp.service.logs import configure_logging
from eko_rtp.service.metrics import Metrics, MetricsSettings, serve_metrics

async def main():
    database = sqlite3.connect(":memory:")
    database.execute("create table t (phone text primary key)")
    database.execute("insert into t values ('+33612345678')")
    metrics = Metrics.create()
    metrics.active_calls.set(1)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_metrics, metrics, MetricsSettings(listen="127.0.0.1:0"))
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{bound.port}/metrics", timeout=10)
        nursery.cancel_scope.cancel()
    assert "eko_active_calls 1.0" in response.text
    assert msgpack.unpackb(msgpack.packb([1, "x"])) == [1, "x"]
    print("ok")

trio.run(main)
"""


def test_python_stack_runs_with_memory_deny_write_execute():
    result = subprocess.run([sys.executable, "-c", MDWE_CHILD], capture_output=True, text=True, timeout=120)
    if result.stdout.startswith("prctl"):
        pytest.skip(f"kernel without PR_SET_MDWE: {result.stdout.strip()}")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
