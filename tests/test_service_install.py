"""install-service into a temporary root, and the credentials it prepares."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from eko_rtp.config import load_config
from eko_rtp.errors import UserError
from eko_rtp.service.credentials import elevenlabs_api_key, read_credential
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


def test_install_into_a_root(tmp_path):
    root = tmp_path / "root"
    result = run_install(root, "--venv", str(VENV))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        f"  created {root}/etc/eko-rtp/eko-rtp.toml",
        f"  created {root}/etc/systemd/system/eko-crm.service",
        f"  created {root}/etc/systemd/system/eko-rtp.service",
        f"  created {root}/etc/sysusers.d/eko-rtp.conf",
        f"  created {root}/etc/eko-rtp/credentials/elevenlabs_api_key",
        f"  created {root}/var/lib/eko-crm",
        f"  created {root}/var/cache/eko-rtp",
    ]
    assert lines[7] == f"next, as root (files are under {root}; copy them to / first):"
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
