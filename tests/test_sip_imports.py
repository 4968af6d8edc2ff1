"""The SIP core is sans-I/O: no module under eko_rtp/sip imports trio or socket."""

from __future__ import annotations

import ast
import pathlib

import eko_rtp.sip

SIP_DIR = pathlib.Path(eko_rtp.sip.__file__).parent
FORBIDDEN = {"trio", "socket", "asyncio", "selectors", "time"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_io_imports_in_sip_core():
    modules = sorted(SIP_DIR.glob("*.py"))
    assert len(modules) >= 10
    offenders = {path.name: sorted(imported_roots(path) & FORBIDDEN) for path in modules}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
