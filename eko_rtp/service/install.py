"""Install the systemd units, the system users, a default config and the directories.

The unit templates in the checkout's ``systemd/`` name the default locations: the
checkout in ``/opt/eko-rtp`` and its venv in ``/opt/eko-rtp/.venv``. Installing
substitutes the real ones, and sizes two settings from the config: LimitNOFILE=
(one descriptor per RTP/RTCP port plus a margin) and TimeoutStopSec= (the drain
grace plus a margin for the last BYEs); and from ``media.cpus`` and
``media.keep_cpu_awake``, CPUAffinity= and the two scheduling calls the spinners
need. Everything goes under ``root`` (``/`` for
real; a temporary directory in tests), and an existing config or credential file
is never replaced.

A staging run (``stage=True``) writes the same files under a scratch root for
inspection, from any checkout (even one under /tmp): the units name the final
checkout and venv, which need not exist yet, so only the check that the venv holds
``eko-rtp`` is skipped. :func:`check_staged_units` then runs ``systemd-analyze
verify`` and ``security --offline=true`` on what was staged.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

from eko_rtp.cache.atomic import write_atomic
from eko_rtp.config import load_config
from eko_rtp.errors import UserError
from eko_rtp.service.credentials import (
    DEEPGRAM_CREDENTIAL,
    ELEVENLABS_CREDENTIAL,
    SIP_PASSWORD_CREDENTIAL,
    SIP_USERNAME_CREDENTIAL,
)
from eko_rtp.service.front import dispatcher_list
from eko_rtp.service.workers import WorkerSettings, plan_workers

DEFAULT_CHECKOUT = "/opt/eko-rtp"
DEFAULT_VENV = "/opt/eko-rtp/.venv"
UNITS = ("eko-crm.service", "eko-rtp.service")
SYSUSERS = "eko-rtp.sysusers"
CONFIG_TEMPLATE = "eko-rtp.toml"
CONFIG_PATH = "etc/eko-rtp/eko-rtp.toml"
CREDENTIALS_DIR = "etc/eko-rtp/credentials"
# Created for the operator to see; systemd creates and chowns them at start anyway
# (StateDirectory=, CacheDirectory=).
WORKER_TEMPLATE = "eko-rtp@.service"
# The Kamailio front's list of this box's workers (kamailio -A 'DISPATCHER_LIST="/etc/..."').
FRONT_DISPATCHER_LIST = "etc/eko-rtp/kamailio/dispatcher.list"
STATE_DIRECTORIES = ("var/lib/eko-crm", "var/cache/eko-rtp")
# Descriptors beyond the RTP ports: SIP over TCP, the CRM connection, HTTP, files.
NOFILE_MARGIN = 1024
# Seconds beyond the drain grace: send the BYEs and close.
STOP_MARGIN = 15
# ProtectHome= and PrivateTmp= hide these from the service.
_HIDDEN_FROM_SERVICE = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
_TEMPLATE_PATHS = re.compile(re.escape(DEFAULT_VENV + "/") + "|" + re.escape(DEFAULT_CHECKOUT + "/"))


@attrs.frozen(kw_only=True)
class InstallStep:
    """One thing install did: ``action`` is created, updated, unchanged or kept."""

    action: str
    path: Path


def nofile_limit(rtp_ports: tuple[int, int]) -> int:
    """LimitNOFILE= for an RTP port range: one socket per port (RTP + RTCP per call) plus a margin."""
    low, high = rtp_ports
    return high - low + 1 + NOFILE_MARGIN


def stop_timeout(drain_grace_seconds: float) -> int:
    """TimeoutStopSec= in seconds: the drain grace plus a margin."""
    return math.ceil(drain_grace_seconds) + STOP_MARGIN


def render(template: str, *, venv: Path, checkout: Path) -> str:
    """``template`` with the default venv and checkout paths replaced (one pass)."""

    def replace(match: re.Match[str]) -> str:
        return f"{venv}/" if match.group() == DEFAULT_VENV + "/" else f"{checkout}/"

    return _TEMPLATE_PATHS.sub(replace, template)


def set_directive(unit: str, name: str, value: str) -> str:
    """``unit`` with the one ``name=`` line set to ``value``."""
    updated, count = re.subn(rf"^{re.escape(name)}=.*$", f"{name}={value}", unit, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"expected one {name}= line in the unit, found {count}")
    return updated


def allow_system_calls(unit: str, calls: str, why: str) -> str:
    """``unit`` with ``calls`` allowed again after its last ``SystemCallFilter=`` line.

    The unit's filter starts as an allow list (``@system-service``) and then denies
    groups; a later plain assignment adds calls back to the allow list.
    """
    lines = unit.splitlines(keepends=True)
    last = max((index for index, line in enumerate(lines) if line.startswith("SystemCallFilter=")), default=None)
    if last is None:
        raise ValueError("expected a SystemCallFilter= line in the unit, found none")
    lines.insert(last + 1, f"# {why}\nSystemCallFilter={calls}\n")
    return "".join(lines)


def cpu_directives(unit: str, config) -> str:
    """``CPUAffinity=`` from ``media.cpus``; with ``media.keep_cpu_awake``, the calls its spinners make."""
    cpus = config.cpus
    if config["media.keep_cpu_awake"] and cpus is None:
        raise UserError(
            "keeping CPUs awake under the unit needs the CPUs given to the server: set media.cpus too (e.g. \"2\")",
            path=config.source, key="media.keep_cpu_awake",
        )
    if cpus is not None:
        unit = set_directive(unit, "CPUAffinity", " ".join(map(str, sorted(cpus))))
    if config["media.keep_cpu_awake"]:
        unit = allow_system_calls(
            unit, "sched_setscheduler sched_setaffinity",
            "media.keep_cpu_awake: its spinners make themselves SCHED_IDLE and pin themselves (in @resources)",
        )
    return unit


def source_checkout() -> Path:
    """The checkout this package runs from (it holds ``systemd/`` and ``cache/``)."""
    # Not resolved: a checkout reached through a symlink is installed under that path.
    return Path(os.path.abspath(__file__)).parents[2]


def install_service(
    *, root: Path, venv: Path, checkout: Path | None = None, source: Path | None = None, stage: bool = False,
    workers: int | None = None,
) -> list[InstallStep]:
    """Place units, sysusers file, default config, credential file and directories under ``root``.

    ``venv`` and ``checkout`` are the paths the units and config name; the templates
    are read from ``source``'s ``systemd/`` (default: ``checkout``). With ``stage``,
    the venv need not exist yet (it is checked when the units are verified). With
    ``workers``, eko-rtp@.service and one drop-in per worker (its CPU) replace
    eko-rtp.service, and the Kamailio front's dispatcher list names them.
    """
    checkout = source_checkout() if checkout is None else checkout
    templates = (checkout if source is None else source) / "systemd"
    venv = Path(os.path.abspath(venv))
    executable = venv / "bin" / "eko-rtp"
    if not stage and not os.access(executable, os.X_OK):
        raise UserError(f"no executable {executable}; pass the venv eko-rtp is installed in", key="--venv")
    # Staged or not, these are the paths the service will run from.
    for path, what in ((venv, "--venv"), (checkout, "--checkout" if stage else "the checkout")):
        hidden = [prefix for prefix in _HIDDEN_FROM_SERVICE if str(path) == prefix or str(path).startswith(prefix + "/")]
        if hidden:
            raise UserError(
                f"{path} is under {hidden[0]}, which the units hide from the service "
                "(ProtectHome=, PrivateTmp=); install the checkout and venv elsewhere, e.g. /opt/eko-rtp",
                key=what,
            )
    if not (templates / "eko-rtp.service").is_file():
        raise UserError(f"no unit templates in {templates}; run install-service from a source checkout")

    steps = []
    config_path = root / CONFIG_PATH
    if config_path.exists():
        steps.append(InstallStep(action="kept", path=config_path))
    else:
        config_template = (templates / CONFIG_TEMPLATE).read_text(encoding="utf-8")
        steps.append(_write(config_path, render(config_template, venv=venv, checkout=checkout), mode=0o644))
    # Validates an existing config too: a broken one is reported now, not at start.
    config = load_config(config_path)

    planned = None if workers is None else plan_workers(WorkerSettings.from_config(config), workers)
    for unit_name in UNITS:
        unit = render((templates / unit_name).read_text(encoding="utf-8"), venv=venv, checkout=checkout)
        if unit_name == "eko-rtp.service":
            rtp_ports = config.rtp_ports if planned is None else planned[0].rtp_ports
            unit = set_directive(unit, "LimitNOFILE", str(nofile_limit(rtp_ports)))
            unit = set_directive(unit, "TimeoutStopSec", f"{stop_timeout(config['service.drain_grace_seconds'])}s")
            unit = cpu_directives(unit, config)
            if planned is not None:
                steps += _write_workers(root, unit, planned)
                continue
        steps.append(_write(root / "etc/systemd/system" / unit_name, unit, mode=0o644))
    sysusers = (templates / SYSUSERS).read_text(encoding="utf-8")
    steps.append(_write(root / "etc/sysusers.d/eko-rtp.conf", sysusers, mode=0o644))

    credentials = root / CREDENTIALS_DIR
    credentials.mkdir(parents=True, exist_ok=True)
    credentials.chmod(0o700)
    for name in (ELEVENLABS_CREDENTIAL, DEEPGRAM_CREDENTIAL, SIP_USERNAME_CREDENTIAL, SIP_PASSWORD_CREDENTIAL):
        credential = credentials / name
        try:
            # Empty means "no key" (espeak-ng; DTMF only); it must exist for LoadCredential=.
            os.close(os.open(credential, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            steps.append(InstallStep(action="created", path=credential))
        except FileExistsError:
            steps.append(InstallStep(action="kept", path=credential))
    for directory in STATE_DIRECTORIES:
        path = root / directory
        steps.append(InstallStep(action="kept" if path.is_dir() else "created", path=path))
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return steps


def worker_template(unit: str, count: int) -> str:
    """eko-rtp.service made the template eko-rtp@.service: instance ``%i`` is worker %i of ``count``."""
    unit = set_directive(unit, "Description", f"Eko RTP voicebot media server, worker %i of {count} (SIP/RTP)")
    execs = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    if len(execs) != 1:
        raise ValueError(f"expected one ExecStart= line in the unit, found {len(execs)}")
    return set_directive(unit, "ExecStart", execs[0].removeprefix("ExecStart=") + f" --workers {count} --worker %i")


def _write_workers(root: Path, unit: str, workers) -> list[InstallStep]:
    """The template unit, a drop-in per worker pinning it to its CPU, and the front's dispatcher list."""
    system = root / "etc/systemd/system"
    steps = [_write(system / WORKER_TEMPLATE, worker_template(unit, len(workers)), mode=0o644)]
    for worker in workers:
        if worker.cpu is not None:
            # An empty assignment first: the template's CPUAffinity= lists every worker's CPU.
            drop_in = (f"# Written by eko-rtp install-service --workers {len(workers)}.\n"
                       f"[Service]\nCPUAffinity=\nCPUAffinity={worker.cpu}\n")
            steps.append(_write(system / f"{worker.unit}.d" / "worker.conf", drop_in, mode=0o644))
    steps.append(_write(root / FRONT_DISPATCHER_LIST, dispatcher_list(workers), mode=0o644))
    return steps


def check_staged_units(root: Path, venv: Path) -> list[str]:
    """``systemd-analyze verify`` and ``security --offline=true`` on the units staged under ``root``.

    Returns the lines to print. Raises :class:`UserError` if verify finds anything but
    the final venv's ``eko-rtp`` missing, or security cannot rate a unit.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return ["skipped: systemd-analyze is not installed (apt: systemd); the staged units were not verified"]
    executable = Path(os.path.abspath(venv)) / "bin" / "eko-rtp"
    lines = []
    system = root / "etc/systemd/system"
    staged = [(name, system / name) for name in UNITS if (system / name).is_file()]
    if (system / WORKER_TEMPLATE).is_file():
        # verify takes units, not templates: worker 0's instance stands for them all.
        instance = Path(tempfile.mkdtemp(prefix="eko-rtp-verify-")) / "eko-rtp@0.service"
        shutil.copyfile(system / WORKER_TEMPLATE, instance)
        staged.append((instance.name, instance))
    for unit_name, unit in staged:
        # Not --root=: that wants a whole system under it (sysinit.target, /bin/kill),
        # which a scratch stage is not. The staged file is read where it is, and the
        # paths it names are looked up on this host.
        verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        # Before the venv is at its final path, verify reports this (once per check),
        # and only this is forgiven.
        missing = f"{unit_name}: Command {executable} is not executable: No such file or directory"
        reported = verified.stderr.splitlines()
        forgiven = missing in reported and not os.path.lexists(executable)
        problems = [line for line in reported if line and not (forgiven and line == missing)]
        if problems or verified.stdout or (verified.returncode != 0 and not forgiven):
            raise UserError(
                f"systemd-analyze verify failed (exit status {verified.returncode}):\n"
                + (verified.stdout + verified.stderr).rstrip(), path=str(unit),
            )
        if forgiven:
            lines.append(f"verified {unit}, except that {executable} is not there yet (staging run)")
        else:
            lines.append(f"verified {unit}")
        security = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                                  capture_output=True, text=True, timeout=60)
        exposure = re.search(rf"Overall exposure level for {re.escape(unit_name)}: (\d+\.\d)", security.stdout)
        if security.returncode != 0 or exposure is None:
            raise UserError(
                f"systemd-analyze security --offline=true failed (exit status {security.returncode}):\n"
                + security.stderr.rstrip(), path=str(unit),
            )
        lines.append(f"exposure {exposure.group(1)} for {unit_name} (systemd-analyze security --offline=true)")
    return lines


def next_commands(root: Path, checkout: Path, venv: Path, workers: int | None = None) -> list[str]:
    """What the operator runs after installing (as root)."""
    commands = []
    if not (checkout / "cache" / "manifest.json").is_file():
        commands.append(f"cd {checkout} && {venv}/bin/eko-rtp cache build")
    commands += [
        f"systemd-sysusers {root / 'etc/sysusers.d/eko-rtp.conf'}",
        "systemctl daemon-reload && systemctl enable --now eko-crm "
        + ("eko-rtp" if workers is None else " ".join(f"eko-rtp@{index}" for index in range(workers))),
    ]
    if workers is not None:
        commands.append(f"kamailio -f {checkout}/sip/kamailio/kamailio.cfg -A 'DISPATCHER_LIST=\"/{FRONT_DISPATCHER_LIST}\"'"
                        " -A 'DS_ALGORITHM=\"0\"' -A DS_PING_INTERVAL=1 (the front; docs/OPERATIONS.md,"
                        " \"Several workers on one box\")")
    return commands


def _write(path: Path, text: str, *, mode: int) -> InstallStep:
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return InstallStep(action="unchanged", path=path)
    action = "updated" if path.exists() else "created"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    path.chmod(mode)
    return InstallStep(action=action, path=path)
