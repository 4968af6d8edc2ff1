"""The `eko-rtp` console script: one parser, one module per subcommand.

Each subcommand module in ``COMMANDS`` exposes ``add_parser(subparsers)``, which
registers its parser and sets ``func`` (called with the parsed namespace, returns
the exit status). Errors a user can fix (a bad config, a bad flag) are raised as
:class:`eko_rtp.errors.UserError` and end the process with status 2 and one line
on stderr naming what was wrong and where.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from eko_rtp.errors import UserError

COMMANDS = (
    "eko_rtp.cli.bench_cmd",
    "eko_rtp.cli.cache_cmd",
    "eko_rtp.cli.crm_cmd",
    "eko_rtp.cli.serve_cmd",
    "eko_rtp.cli.service_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eko-rtp", description="Eko RTP voicebot media server")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"eko-rtp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
