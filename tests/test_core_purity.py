"""Protocol cores take bytes and time and return events and bytes: none may import trio or socket."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eko_rtp"
BENCH_PACKAGE = Path(__file__).resolve().parents[1] / "eko_bench"
CORES = [
    *sorted((PACKAGE / "sip").glob("*.py")),
    *(PACKAGE / "media" / name for name in ("sdp.py", "rtp.py", "rtcp.py", "dtmf.py", "sequence.py", "playout.py")),
    *(PACKAGE / "crm" / name for name in ("rpc.py", "records.py", "phone.py", "address.py", "errors.py")),
    PACKAGE / "codec" / "g711.py",
    PACKAGE / "tts" / "framer.py",
    PACKAGE / "call" / "greeting.py",
    PACKAGE / "server" / "health.py",
    PACKAGE / "media" / "sdes.py",
    PACKAGE / "media" / "latch.py",
    PACKAGE / "media" / "quality.py",
    PACKAGE / "media" / "negotiation.py",
    PACKAGE / "codec" / "frame.py",
    *(PACKAGE / "media" / name for name in ("reorder.py", "vad.py", "wav.py")),
    *(PACKAGE / "asr" / name for name in ("deepgram_api.py", "keywords.py", "errors.py", "websocket.py")),
    PACKAGE / "call" / "yesno.py",
    *(PACKAGE / "transfer" / name for name in ("hours.py", "load.py", "policy.py")),
    BENCH_PACKAGE / "uac.py",
    BENCH_PACKAGE / "stats.py",
]
FORBIDDEN = {"trio", "socket", "asyncio", "httpx", "select", "trio_websocket"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", CORES, ids=lambda path: path.relative_to(PACKAGE.parent).as_posix())
def test_core_module_does_no_io(path):
    assert path.is_file(), f"{path} is listed as a core module but does not exist"
    assert imported_roots(path) & FORBIDDEN == set()


def test_the_server_package_never_imports_the_bench():
    # The bench is a tool beside the server: the server runs without it installed.
    offenders = {path.relative_to(PACKAGE.parent).as_posix()
                 for path in PACKAGE.rglob("*.py") if "eko_bench" in imported_roots(path)}
    assert offenders == set()
