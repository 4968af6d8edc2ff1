"""``eko-rtp install-service``: put the systemd units, users, config and directories in place."""

from __future__ import annotations

import sys
from pathlib import Path

from eko_rtp.service.install import install_service, next_commands, source_checkout


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "install-service",
        help="install the eko-rtp and eko-crm systemd units, a default config and the directories",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="install under this root instead of / (for packaging and tests)")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix), metavar="PATH",
                        help=f"the venv the units run eko-rtp from (default: this one, {sys.prefix})")
    parser.set_defaults(func=run_install_service)


def run_install_service(args) -> int:
    checkout = source_checkout()
    steps = install_service(root=args.root, venv=args.venv, checkout=checkout)
    for step in steps:
        print(f"{step.action:>9} {step.path}")
    where = "" if args.root == Path("/") else f" (files are under {args.root}; copy them to / first)"
    print(f"next, as root{where}:")
    for command in next_commands(args.root, checkout, args.venv):
        print(f"  {command}")
    return 0
