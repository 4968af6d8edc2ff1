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

from eko_rtp.config import LOG_LEVELS
from eko_rtp.errors import UserError

COMMANDS = (
    "eko_rtp.cli.cache_cmd",
    "eko_rtp.cli.crm_cmd",
    "eko_rtp.cli.rolling_cmd",
    "eko_rtp.cli.serve_cmd",
    "eko_rtp.cli.service_cmd",
)


def _log_level(text: str) -> str:
    """A level name in any case; anything else is a usage error (exit 2), not a traceback."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eko-rtp", description="Eko RTP voicebot media server")
    parser.add_argument("--log-level", type=_log_level, metavar="LEVEL",
                        help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO; serve: the config's service.log_level)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level or "INFO",
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
