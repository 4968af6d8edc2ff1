"""Helpers shared by the phrase cache tests: catalogues, the CLI as a subprocess, signals."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = REPO / "cache" / "phrases.toml"
EKO_RTP = [sys.executable, "-m", "eko_rtp"]


def write_catalogue(path: Path, phrases: dict[str, str]) -> Path:
    """A catalogue file with one ``[phrases.<key>]`` table per entry."""
    lines = []
    for key, text in phrases.items():
        lines += [f"[phrases.{key}]", f'text = "{text}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``eko-rtp`` in a subprocess; ELEVENLABS_* come only from ``env``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ELEVENLABS_")}
    environment.update(env or {})
    return subprocess.run([*EKO_RTP, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=environment)


def sine_slin16(frequency: float, seconds: float, amplitude: int = 8000, rate: int = 8000) -> list[int]:
    """Samples of a sine starting at phase 0."""
    return [int(amplitude * math.sin(2 * math.pi * frequency * index / rate)) for index in range(int(seconds * rate))]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` by name, to prove nothing changed."""
    if not directory.exists():
        return {}
    return {entry.name: entry.read_bytes() for entry in sorted(directory.iterdir()) if entry.is_file()}
