"""The README's command table tells a new user every command there is (issue 14, defect 7)."""

from __future__ import annotations

import argparse

from eko_rtp.cli.main import build_parser
from server_helpers import REPO


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def command_table() -> str:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("| `eko-rtp"))


def test_the_readme_table_names_every_command_and_action():
    table = command_table()
    missing = []
    for command, parser in subcommands(build_parser()).items():
        actions = subcommands(parser)
        wanted = [f"{command} {action}" for action in actions] if actions else [command]
        missing += [name for name in wanted if f"`eko-rtp {name}" not in table and f"`{name}" not in table]
    assert not missing, missing


def test_the_readme_table_gives_the_global_options_and_serves_flags():
    table = command_table()
    assert "`eko-rtp [--log-level LEVEL] COMMAND" in table
    serve = subcommands(build_parser())["serve"]
    flags = [option for action in serve._actions for option in action.option_strings if option.startswith("--")]
    assert [flag for flag in flags if flag != "--help" and flag not in table] == []
