"""``eko-rtp rolling-restart``: restart the workers of this box one at a time, each draining first."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import time

from eko_rtp.config import load_config
from eko_rtp.errors import UserError
from eko_rtp.service.front import front_flags
from eko_rtp.service.install import stop_timeout
from eko_rtp.service.rolling import Operations, RollingSettings, rolling_restart
from eko_rtp.service.sip_probe import probe_options
from eko_rtp.service.workers import Worker, WorkerSettings, plan_workers

DEFAULT_FRONT_CONTROL = "unix:/run/kamailio/kamailio_ctl"
START_MARGIN = 30  # seconds: the unit's TimeoutStartSec=


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rolling-restart",
        help="restart the eko-rtp@N workers one at a time, each drained first and back in the front's rotation"
             " before the next (docs/OPERATIONS.md, \"Several workers on one box\")",
    )
    parser.add_argument("--config", default="/etc/eko-rtp/eko-rtp.toml",
                        help="the workers' config file (default: /etc/eko-rtp/eko-rtp.toml)")
    parser.add_argument("--workers", type=int, required=True, metavar="N",
                        help="how many workers the box runs (install-service --workers N)")
    parser.add_argument("--front-control", default=DEFAULT_FRONT_CONTROL, metavar="SOCKET",
                        help="the Kamailio front's control socket, asked with kamcmd whether a restarted worker is"
                             f" back in its rotation (default: {DEFAULT_FRONT_CONTROL}); \"\" for none")
    parser.add_argument("--probe-interval", type=float, default=1.0, metavar="SECONDS",
                        help="the front's OPTIONS probe interval (DS_PING_INTERVAL); without --front-control,"
                             " twice this is waited after a worker answers 200 (default 1)")
    parser.set_defaults(func=run_rolling_restart)


def systemctl_restart(worker: Worker, *, timeout: float) -> None:
    """``systemctl restart`` the worker's unit: returns once the new process is ready (Type=notify)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise UserError("systemctl is not installed: the workers run as systemd units eko-rtp@N")
    try:
        completed = subprocess.run([systemctl, "restart", worker.unit], capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"systemctl restart {worker.unit} took over {timeout:g} s; the workers after it were not"
                        " restarted") from None
    if completed.returncode != 0:
        raise UserError(f"systemctl restart {worker.unit} failed (exit status {completed.returncode}):"
                        f" {completed.stderr.strip()}; the workers after it were not restarted")


def run_rolling_restart(args) -> int:
    config = load_config(args.config)
    workers = plan_workers(WorkerSettings.from_config(config), args.workers)
    if args.probe_interval <= 0:
        raise UserError(f"must be positive, got {args.probe_interval}", key="--probe-interval")
    in_rotation = None
    if args.front_control:
        control = args.front_control
        in_rotation = lambda worker: front_flags(control).get(worker.sip_uri, "").startswith("A")  # noqa: E731
    restart_timeout = stop_timeout(config["service.drain_grace_seconds"]) + START_MARGIN
    operations = Operations(
        restart=functools.partial(systemctl_restart, timeout=restart_timeout),
        probe=lambda worker: probe_options(worker.sip),
        in_rotation=in_rotation,
        now=time.monotonic,
        sleep=time.sleep,
        report=lambda line: print(line, file=sys.stdout, flush=True),
    )
    settings = RollingSettings(settle=2 * args.probe_interval,
                               rotation_timeout=max(30.0, 10 * args.probe_interval))
    rolling_restart(workers, operations, settings)
    print(f"rolling restart done: {len(workers)} worker(s)")
    return 0
