"""Build progress for a person: a redrawn bar on a terminal, plain lines in a log.

On a terminal the bar shows phrases done out of those to render, characters sent
and the estimated cost so far (ElevenLabs bills per character; espeak-ng is free).
When stderr is a pipe or a file (CI, systemd) each phrase gets one plain line, so
the log has no carriage returns. Both end with the same summary line.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["BuildProgress", "format_summary"]

_BAR_WIDTH = 24


def format_summary(*, rendered: int, skipped: int, failed: int, characters: int, dollars: float) -> str:
    """The one line that ends every build."""
    failures = f", failed {failed}" if failed else ""
    return f"rendered {rendered}, skipped {skipped}{failures}, {characters} characters, estimated cost ${dollars:.2f}"


class BuildProgress:
    """Reports each rendered phrase of one build to ``stream`` (stderr by default)."""

    def __init__(self, *, total: int, dollars_per_1000_characters: float,
                 stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = self._stream.isatty() if terminal is None else terminal
        self._total = total
        self._rate = dollars_per_1000_characters
        self.done = 0
        self.characters = 0

    @property
    def dollars(self) -> float:
        return self.characters * self._rate / 1000

    def start(self) -> None:
        if self._terminal and self._total:
            self._draw()

    def rendered(self, key: str, characters: int) -> None:
        self.done += 1
        self.characters += characters
        if self._terminal:
            self._draw()
        else:
            self._line(f"rendered {key} ({self.done}/{self._total}, {characters} characters, "
                       f"${characters * self._rate / 1000:.4f})")

    def failed(self, key: str, message: str) -> None:
        self.done += 1
        if self._terminal:
            self._stream.write("\r\x1b[K")
        self._line(f"failed {key}: {message}")
        if self._terminal:
            self._draw()

    def finish(self, summary: str) -> None:
        if self._terminal and self._total:
            self._stream.write("\n")
        self._line(summary)

    def _draw(self) -> None:
        filled = _BAR_WIDTH * self.done // self._total if self._total else _BAR_WIDTH
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        self._stream.write(f"\r[{bar}] {self.done}/{self._total} phrases, {self.characters} characters, "
                           f"${self.dollars:.2f}\x1b[K")
        self._stream.flush()

    def _line(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()
