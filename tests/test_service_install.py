"""install-service into a temporary root, and the credentials it prepares."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from eko_rtp.config import load_config
from eko_rtp.errors import UserError
from eko_rtp.service.credentials import deepgram_api_key, elevenlabs_api_key, read_credential
from eko_rtp.service.install import install_service, nofile_limit, render, set_directive, stop_timeout

from service_paths import CHECKOUT, ENV, PYTHON, VENV

EKO_RTP = VENV / "bin" / "eko-rtp"


def run_install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "-m", "eko_rtp", "install-service", "--root", str(root), *extra],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=str(root.parent),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)



def created_lines(root) -> list[str]:
    """What an install or a staging run prints for the files it creates under ``root``, in order."""
    return [
        f"  created {root}/etc/eko-rtp/eko-rtp.toml",
        f"  created {root}/etc/systemd/system/eko-crm.service",
        f"  created {root}/etc/systemd/system/eko-rtp.service",
        f"  created {root}/etc/sysusers.d/eko-rtp.conf",
        f"  created {root}/etc/eko-rtp/credentials/elevenlabs_api_key",
        f"  created {root}/etc/eko-rtp/credentials/deepgram_api_key",
        f"  created {root}/etc/eko-rtp/credentials/sip_auth_username",
        f"  created {root}/etc/eko-rtp/credentials/sip_auth_password",
        f"  created {root}/var/lib/eko-crm",
        f"  created {root}/var/cache/eko-rtp",
    ]

def test_install_into_a_root(tmp_path):
    root = tmp_path / "root"
    result = run_install(root, "--venv", str(VENV))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:len(created_lines(root))] == created_lines(root)
    assert lines[len(created_lines(root))] == f"next, as root (files are under {root}; copy them to / first):"
    assert lines[-2:] == [
        f"  systemd-sysusers {root}/etc/sysusers.d/eko-rtp.conf",
        "  systemctl daemon-reload && systemctl enable --now eko-crm eko-rtp",
    ]

    unit = (root / "etc/systemd/system/eko-rtp.service").read_text()
    assert f"ExecStart={VENV}/bin/eko-rtp serve --config /etc/eko-rtp/eko-rtp.toml\n" in unit
    assert "/opt/eko-rtp" not in unit
    assert "LimitNOFILE=11024\n" in unit and "TimeoutStopSec=75s\n" in unit
    crm = (root / "etc/systemd/system/eko-crm.service").read_text()
    assert f"ExecStart={VENV}/bin/eko-rtp crm serve --listen 127.0.0.1:7070 --db /var/lib/eko-crm/crm.sqlite3\n" in crm

    config = load_config(root / "etc/eko-rtp/eko-rtp.toml")
    assert config["cache.dir"] == f"{CHECKOUT}/cache"
    assert config["cache.phrases"] == f"{CHECKOUT}/cache/phrases.toml"
    assert config["tts.dynamic_cache_dir"] == "/var/cache/eko-rtp/dynamic"
    assert config["service.metrics_listen"] == "127.0.0.1:9464"

    credential = root / "etc/eko-rtp/credentials/elevenlabs_api_key"
    assert credential.read_bytes() == b""
    assert mode(credential) == 0o600 and mode(credential.parent) == 0o700
    deepgram = root / "etc/eko-rtp/credentials/deepgram_api_key"
    assert deepgram.read_bytes() == b"" and mode(deepgram) == 0o600
    assert "LoadCredential=deepgram_api_key:/etc/eko-rtp/credentials/deepgram_api_key\n" in unit
    assert mode(root / "var/lib/eko-crm") == 0o700
    assert mode(root / "etc/systemd/system/eko-rtp.service") == 0o644


def test_reinstall_keeps_config_and_key_and_resizes_the_unit(tmp_path):
    root = tmp_path / "root"
    assert run_install(root).returncode == 0
    config = root / "etc/eko-rtp/eko-rtp.toml"
    edited = config.read_text().replace('rtp_ports = "20000-29999"', 'rtp_ports = "40000-40999"')
    config.write_text(edited.replace("drain_grace_seconds = 60", "drain_grace_seconds = 120.5"))
    credential = root / "etc/eko-rtp/credentials/elevenlabs_api_key"
    credential.write_text("sk_test_key\n")

    result = run_install(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:5] == [
        f"     kept {root}/etc/eko-rtp/eko-rtp.toml",
        f"unchanged {root}/etc/systemd/system/eko-crm.service",
        f"  updated {root}/etc/systemd/system/eko-rtp.service",
        f"unchanged {root}/etc/sysusers.d/eko-rtp.conf",
        f"     kept {credential}",
    ]
    unit = (root / "etc/systemd/system/eko-rtp.service").read_text()
    assert "LimitNOFILE=2024\n" in unit and "TimeoutStopSec=136s\n" in unit
    assert config.read_text().startswith("# Eko RTP server configuration")
    assert credential.read_text() == "sk_test_key\n"


def test_media_cpus_pins_the_unit_and_keeping_them_awake_allows_the_spinners_calls(tmp_path):
    root = tmp_path / "root"
    (root / "etc/eko-rtp").mkdir(parents=True)
    (root / "etc/eko-rtp/eko-rtp.toml").write_text('[media]\ncpus = "0"\nkeep_cpu_awake = true\n')
    install_service(root=root, venv=VENV, checkout=CHECKOUT)
    unit = (root / "etc/systemd/system/eko-rtp.service").read_text()
    assert "\nCPUAffinity=0\n" in unit
    # after the deny list, so the two calls are allowed again
    assert unit.index("SystemCallFilter=~@privileged @resources\n") < unit.index(
        "SystemCallFilter=sched_setscheduler sched_setaffinity\n")
    assert unit.count("SystemCallFilter=") == 3


def test_a_default_unit_runs_anywhere_and_allows_no_scheduling_calls(tmp_path):
    root = tmp_path / "root"
    install_service(root=root, venv=VENV, checkout=CHECKOUT)
    unit = (root / "etc/systemd/system/eko-rtp.service").read_text()
    assert "\nCPUAffinity=\n" in unit
    assert "sched_setscheduler" not in unit


def test_keeping_cpus_awake_under_the_unit_needs_media_cpus(tmp_path):
    root = tmp_path / "root"
    (root / "etc/eko-rtp").mkdir(parents=True)
    (root / "etc/eko-rtp/eko-rtp.toml").write_text("[media]\nkeep_cpu_awake = true\n")
    with pytest.raises(UserError) as caught:
        install_service(root=root, venv=VENV, checkout=CHECKOUT)
    assert str(caught.value) == (
        f"{root}/etc/eko-rtp/eko-rtp.toml, key 'media.keep_cpu_awake': keeping CPUs awake under the unit needs the"
        ' CPUs given to the server: set media.cpus too (e.g. "2")')


def test_broken_existing_config_is_reported(tmp_path):
    root = tmp_path / "root"
    (root / "etc/eko-rtp").mkdir(parents=True)
    (root / "etc/eko-rtp/eko-rtp.toml").write_text('[media]\nrtp_ports = "9-5"\n')
    result = run_install(root)
    assert result.returncode == 2
    assert result.stderr == (
        f"eko-rtp: error: {root}/etc/eko-rtp/eko-rtp.toml, key 'media.rtp_ports': "
        "port range '9-5' must be LO-HI with 1024 <= LO < HI <= 65535\n"
    )
    assert not (root / "etc/systemd").exists()


def test_bad_venv(tmp_path):
    result = run_install(tmp_path / "root", "--venv", "/nonexistent/venv")
    assert result.stderr == (
        "eko-rtp: error: key '--venv': no executable /nonexistent/venv/bin/eko-rtp; "
        "pass the venv eko-rtp is installed in\n"
    )
    assert result.returncode == 2


def test_venv_hidden_from_the_service(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/eko-rtp").symlink_to(EKO_RTP)
    with pytest.raises(UserError) as caught:
        install_service(root=tmp_path / "root", venv=venv)
    assert str(caught.value) == (
        f"key '--venv': {venv} is under /tmp, which the units hide from the service "
        "(ProtectHome=, PrivateTmp=); install the checkout and venv elsewhere, e.g. /opt/eko-rtp"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("ExecStart=/opt/eko-rtp/.venv/bin/eko-rtp serve", "ExecStart=/srv/venv/bin/eko-rtp serve"),
        ('phrases = "/opt/eko-rtp/cache/phrases.toml"', 'phrases = "/srv/eko/cache/phrases.toml"'),
        ("/opt/eko-rtp/.venv/bin/x /opt/eko-rtp/docs/y", "/srv/venv/bin/x /srv/eko/docs/y"),
        ("/var/cache/eko-rtp/dynamic", "/var/cache/eko-rtp/dynamic"),
    ],
)
def test_render(template, expected):
    assert render(template, venv=Path("/srv/venv"), checkout=Path("/srv/eko")) == expected


def test_sizing():
    assert nofile_limit((20000, 29999)) == 11024
    assert nofile_limit((40000, 40001)) == 1026
    assert stop_timeout(60) == 75
    assert stop_timeout(0.2) == 16
    assert set_directive("A=1\nLimitNOFILE=5\nB=2\n", "LimitNOFILE", "9") == "A=1\nLimitNOFILE=9\nB=2\n"
    with pytest.raises(ValueError) as caught:
        set_directive("A=1\n", "LimitNOFILE", "9")
    assert str(caught.value) == "expected one LimitNOFILE= line in the unit, found 0"


@pytest.fixture
def credentials(tmp_path):
    directory = tmp_path / "credentials"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    ("content", "environment", "expected"),
    [
        (b"sk_from_credential\n", "sk_from_environment", "sk_from_credential"),
        (None, "sk_from_environment", "sk_from_environment"),
        (b"", "sk_from_environment", "sk_from_environment"),
        (b"  \n", "", None),
        (None, None, None),
    ],
)
def test_elevenlabs_api_key(credentials, content, environment, expected):
    if content is not None:
        (credentials / "elevenlabs_api_key").write_bytes(content)
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    if environment is not None:
        environ["ELEVENLABS_API_KEY"] = environment
    assert elevenlabs_api_key(environ) == expected


def test_no_credentials_directory():
    assert read_credential("elevenlabs_api_key", environ={}) is None
    assert elevenlabs_api_key({"ELEVENLABS_API_KEY": "sk_x\n"}) == "sk_x"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"sk_one\nsk_two\n", "the API key contains whitespace or control characters"),
        (b"\xff\xfe", "cannot read credential elevenlabs_api_key: not UTF-8 text"),
    ],
)
def test_bad_credential(credentials, content, error):
    path = credentials / "elevenlabs_api_key"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        elevenlabs_api_key({"CREDENTIALS_DIRECTORY": str(credentials)})
    # Exact: the value itself is not echoed.
    assert str(caught.value) == f"{path}: {error}"


def test_unreadable_credential(credentials):
    (credentials / "elevenlabs_api_key").mkdir()
    with pytest.raises(UserError) as caught:
        read_credential("elevenlabs_api_key", environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert str(caught.value) == f"{credentials}/elevenlabs_api_key: cannot read credential elevenlabs_api_key: Is a directory"


@pytest.mark.parametrize("name", ["../etc/shadow", "a/b", ".", ""])
def test_credential_name_must_be_a_file_name(name):
    with pytest.raises(ValueError) as caught:
        read_credential(name, environ={"CREDENTIALS_DIRECTORY": "/"})
    assert str(caught.value) == f"{name!r} is not a valid credential name"


def test_environment_credential_is_checked():
    with pytest.raises(UserError) as caught:
        elevenlabs_api_key({"ELEVENLABS_API_KEY": "sk a"})
    assert str(caught.value) == "$ELEVENLABS_API_KEY: the API key contains whitespace or control characters"


# A staging run: the final paths the units name, which do not exist here.
FINAL_CHECKOUT = Path("/srv/eko-rtp-staged")
FINAL_VENV = FINAL_CHECKOUT / ".venv"


@pytest.fixture
def checkout_under_tmp():
    """A copy of the checkout under /tmp, as a clone there would be (the units hide /tmp)."""
    directory = Path(tempfile.mkdtemp(prefix="eko-rtp-checkout-", dir="/tmp"))
    for part in ("eko_rtp", "systemd"):
        shutil.copytree(CHECKOUT / part, directory / part, ignore=shutil.ignore_patterns("__pycache__"))
    yield directory
    shutil.rmtree(directory)


def run_from(checkout: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """install-service run from ``checkout`` (its package first on the path)."""
    env = {**ENV, "PYTHONPATH": str(checkout)}
    return subprocess.run(
        [str(PYTHON), "-m", "eko_rtp", "install-service", "--root", str(root), *extra],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(root.parent),
    )


def test_a_checkout_under_tmp_cannot_install_but_can_stage(checkout_under_tmp, tmp_path):
    refused = run_from(checkout_under_tmp, tmp_path / "root", "--venv", str(VENV))
    assert (refused.returncode, refused.stderr) == (2, (
        f"eko-rtp: error: key 'the checkout': {checkout_under_tmp} is under /tmp, which the units hide from the"
        " service (ProtectHome=, PrivateTmp=); install the checkout and venv elsewhere, e.g. /opt/eko-rtp\n"))

    root = tmp_path / "stage"
    staged = run_from(checkout_under_tmp, root, "--stage", "--venv", str(FINAL_VENV), "--checkout", str(FINAL_CHECKOUT))
    assert staged.returncode == 0, staged.stderr
    lines = staged.stdout.splitlines()
    heading = 1 + len(created_lines(root))
    assert lines[:heading] == [
        f"staging run: nothing is installed; the files under {root} name the final checkout {FINAL_CHECKOUT}"
        f" and venv {FINAL_VENV}, which need not exist yet",
        *created_lines(root),
    ]
    checks = lines[heading:-4]
    if shutil.which("systemd-analyze") is None:
        assert checks == ["skipped: systemd-analyze is not installed (apt: systemd); the staged units were not verified"]
    else:
        # tests/test_service_units.py checks the exposure figures themselves
        assert [re.sub(r"exposure \d+\.\d ", "exposure N ", line) for line in checks] == [
            f"verified {root}/etc/systemd/system/eko-crm.service, except that {FINAL_VENV}/bin/eko-rtp is not there"
            " yet (staging run)",
            "exposure N for eko-crm.service (systemd-analyze security --offline=true)",
            f"verified {root}/etc/systemd/system/eko-rtp.service, except that {FINAL_VENV}/bin/eko-rtp is not there"
            " yet (staging run)",
            "exposure N for eko-rtp.service (systemd-analyze security --offline=true)",
        ]
    assert lines[-4:] == [
        f"next, to install: put the checkout in {FINAL_CHECKOUT} and its venv in {FINAL_VENV}, then as root"
        f" (files are under {root}; copy them to / first):",
        f"  cd {FINAL_CHECKOUT} && {FINAL_VENV}/bin/eko-rtp cache build",
        f"  systemd-sysusers {root}/etc/sysusers.d/eko-rtp.conf",
        "  systemctl daemon-reload && systemctl enable --now eko-crm eko-rtp",
    ]

    unit = (root / "etc/systemd/system/eko-rtp.service").read_text()
    assert f"ExecStart={FINAL_VENV}/bin/eko-rtp serve --config /etc/eko-rtp/eko-rtp.toml\n" in unit
    assert str(checkout_under_tmp) not in unit and "/opt/eko-rtp" not in unit
    assert "LimitNOFILE=11024\n" in unit and "TimeoutStopSec=75s\n" in unit
    config = load_config(root / "etc/eko-rtp/eko-rtp.toml")
    assert config["cache.dir"] == f"{FINAL_CHECKOUT}/cache"
    assert config["cache.phrases"] == f"{FINAL_CHECKOUT}/cache/phrases.toml"
    credential = root / "etc/eko-rtp/credentials/elevenlabs_api_key"
    assert credential.read_bytes() == b""
    assert mode(credential) == 0o600 and mode(credential.parent) == 0o700
    deepgram = root / "etc/eko-rtp/credentials/deepgram_api_key"
    assert deepgram.read_bytes() == b"" and mode(deepgram) == 0o600
    assert "LoadCredential=deepgram_api_key:/etc/eko-rtp/credentials/deepgram_api_key\n" in unit


def test_staging_defaults_to_the_template_paths(tmp_path):
    root = tmp_path / "stage"
    assert run_install(root, "--stage").returncode == 0
    unit = (root / "etc/systemd/system/eko-crm.service").read_text()
    assert "ExecStart=/opt/eko-rtp/.venv/bin/eko-rtp crm serve " in unit


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--stage", "--root", "/"],
         "key '--root': a staging run writes under a scratch directory, not /: pass --root DIR"),
        (["--checkout", "/srv/eko"],
         "key '--checkout': only a staging run names the checkout (add --stage); an install uses the checkout it runs"
         f" from, {CHECKOUT}"),
        # the final paths are still ones the service can see
        (["--stage", "--venv", "/tmp/venv"],
         "key '--venv': /tmp/venv is under /tmp, which the units hide from the service (ProtectHome=, PrivateTmp=);"
         " install the checkout and venv elsewhere, e.g. /opt/eko-rtp"),
        (["--stage", "--checkout", "/home/eko"],
         "key '--checkout': /home/eko is under /home, which the units hide from the service (ProtectHome=,"
         " PrivateTmp=); install the checkout and venv elsewhere, e.g. /opt/eko-rtp"),
    ],
)
def test_staging_refusals(tmp_path, arguments, error):
    root = tmp_path / "stage"
    result = subprocess.run(
        [str(PYTHON), "-m", "eko_rtp", "install-service", "--root", str(root), *arguments],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=str(tmp_path),
    )
    assert (result.returncode, result.stderr) == (2, f"eko-rtp: error: {error}\n")
    assert not (root / "etc/systemd").exists()


def test_deepgram_api_key_from_the_credential_first_then_the_environment(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "DEEPGRAM_API_KEY": "from-env"}
    assert deepgram_api_key(environ) == "from-env"  # no credential file: the environment
    (credentials / "deepgram_api_key").write_text("dg-secret\n")
    assert deepgram_api_key(environ) == "dg-secret"
    (credentials / "deepgram_api_key").write_text("")
    assert deepgram_api_key({"CREDENTIALS_DIRECTORY": str(credentials)}) is None  # empty: no key
    assert deepgram_api_key({}) is None


def test_workers_get_a_template_unit_a_pinning_drop_in_each_and_the_front_s_list(tmp_path):
    root = tmp_path / "root"
    (root / "etc/eko-rtp").mkdir(parents=True)
    (root / "etc/eko-rtp/eko-rtp.toml").write_text('[sip]\nlisten = "127.0.0.1:5070"\n[media]\ncpus = "0-1"\n'
                                                   'rtp_ports = "20000-21999"\n')
    install_service(root=root, venv=VENV, checkout=CHECKOUT, workers=2)
    system = root / "etc/systemd/system"
    assert not (system / "eko-rtp.service").exists()
    template = (system / "eko-rtp@.service").read_text()
    assert f"\nExecStart={VENV}/bin/eko-rtp serve --config /etc/eko-rtp/eko-rtp.toml --workers 2 --worker %i\n" in template
    assert "\nLimitNOFILE=2024\n" in template and "\nCPUAffinity=0 1\n" in template  # 1000 ports each
    for index in (0, 1):
        assert (system / f"eko-rtp@{index}.service.d/worker.conf").read_text().endswith(
            f"[Service]\nCPUAffinity=\nCPUAffinity={index}\n")
    listed = (root / "etc/eko-rtp/kamailio/dispatcher.list").read_text().splitlines()
    assert [line for line in listed if not line.startswith("#")] == ["1 sip:127.0.0.1:5070 0 0",
                                                                     "1 sip:127.0.0.1:5071 0 0"]
    if shutil.which("systemd-analyze") is not None:
        from eko_rtp.service.install import check_staged_units

        lines = check_staged_units(root, VENV)
        assert any(re.fullmatch(r"verified .*/eko-rtp@0\.service", line) for line in lines), lines
