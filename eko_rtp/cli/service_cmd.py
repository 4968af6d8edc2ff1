"""``eko-rtp install-service``: put the systemd units, users, config and directories in place."""

from __future__ import annotations

import sys
from pathlib import Path

from eko_rtp.errors import UserError
from eko_rtp.service.install import (
    DEFAULT_CHECKOUT,
    DEFAULT_VENV,
    check_staged_units,
    install_service,
    next_commands,
    source_checkout,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "install-service",
        help="install the eko-rtp and eko-crm systemd units, a default config and the directories",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="install under this root instead of / (for packaging and tests)")
    parser.add_argument("--venv", type=Path, default=None, metavar="PATH",
                        help=f"the venv the units run eko-rtp from (default: this one, {sys.prefix};"
                             f" with --stage, {DEFAULT_VENV})")
    parser.add_argument("--stage", action="store_true",
                        help="a staging run, for inspection: write everything under --root (required) with the"
                             " units naming the final --venv and --checkout, which need not exist yet, from any"
                             " checkout (even under /tmp); then check the units with systemd-analyze verify and"
                             " security --offline=true. Installs nothing")
    parser.add_argument("--checkout", type=Path, default=None, metavar="PATH",
                        help=f"with --stage: the checkout's final path (default: {DEFAULT_CHECKOUT});"
                             " otherwise it is the checkout this runs from")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="install N pinned workers instead of one server: the template unit eko-rtp@.service,"
                             " a drop-in per worker with its CPU of media.cpus, and the Kamailio front's dispatcher"
                             " list for them (docs/OPERATIONS.md, \"Several workers on one box\")")
    parser.set_defaults(func=run_install_service)


def run_install_service(args) -> int:
    if args.stage:
        return run_staging(args)
    if args.checkout is not None:
        raise UserError("only a staging run names the checkout (add --stage); an install uses the checkout it runs"
                        f" from, {source_checkout()}", key="--checkout")
    checkout = source_checkout()
    venv = Path(sys.prefix) if args.venv is None else args.venv
    steps = install_service(root=args.root, venv=venv, checkout=checkout, workers=args.workers)
    for step in steps:
        print(f"{step.action:>9} {step.path}")
    where = "" if args.root == Path("/") else f" (files are under {args.root}; copy them to / first)"
    print(f"next, as root{where}:")
    for command in next_commands(args.root, checkout, venv, args.workers):
        print(f"  {command}")
    return 0


def run_staging(args) -> int:
    """Stage under ``--root`` with the final paths, then verify the units."""
    if Path(args.root).resolve() == Path("/"):
        raise UserError("a staging run writes under a scratch directory, not /: pass --root DIR", key="--root")
    checkout = Path(DEFAULT_CHECKOUT if args.checkout is None else args.checkout)
    venv = Path(DEFAULT_VENV if args.venv is None else args.venv)
    print(f"staging run: nothing is installed; the files under {args.root} name the final checkout {checkout}"
          f" and venv {venv}, which need not exist yet")
    steps = install_service(root=args.root, venv=venv, checkout=checkout, source=source_checkout(), stage=True,
                            workers=args.workers)
    for step in steps:
        print(f"{step.action:>9} {step.path}")
    for line in check_staged_units(args.root, venv):
        print(line)
    print(f"next, to install: put the checkout in {checkout} and its venv in {venv}, then as root"
          f" (files are under {args.root}; copy them to / first):")
    for command in next_commands(args.root, checkout, venv, args.workers):
        print(f"  {command}")
    return 0
