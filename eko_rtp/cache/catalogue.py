"""The phrase catalogue: ``cache/phrases.toml``, the texts the bot can say from cache.

Theory of operation: the file holds one table per phrase::

    [phrases.greet]
    text = "Bonjour, je suis Eko."

The key names the rendered file ``<cache>/<key>.raw``, so it must be a safe file
name (``[a-z0-9_]+``). :mod:`tomllib` parses the file but reports neither the
line of a table nor, for its own errors, a structured line number; so we scan the
text ourselves for table headers (which also catches a duplicate key before
tomllib does, with both lines), and take the line of a syntax error from
tomllib's message. Every error is a :class:`UserError` naming file, line and key.
Loading reads the file only: nothing in the cache directory changes.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import attrs

from eko_rtp.errors import UserError

__all__ = ["Catalogue", "CatalogueEntry", "KEY_PATTERN", "load_catalogue", "parse_catalogue", "text_sha256", "validate_key"]

KEY_PATTERN = re.compile(r"[a-z0-9_]+")
FIELDS = ("text",)

# `[phrases.greet]`, `[ phrases . "greet" ]`, with an optional trailing comment.
_HEADER = re.compile(r"""^\s*\[\s*phrases\s*\.\s*(?P<key>"[^"]*"|'[^']*'|[^\]\s]+)\s*\]\s*(?:#.*)?$""")
_ANY_HEADER = re.compile(r"^\s*\[")
_FIELD = re.compile(r"""^\s*(?P<field>"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
_TOML_POSITION = re.compile(r"\s*\(at line (?P<line>\d+), column \d+\)$")


def validate_key(instance, attribute, value) -> None:
    """attrs validator: a phrase key names a file, so it is [a-z0-9_]+."""
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value):
        raise ValueError(f"phrase key {value!r} must match [a-z0-9_]+")


def text_sha256(text: str) -> str:
    """The hex sha256 of a phrase text (UTF-8), as recorded in the manifest."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@attrs.frozen(kw_only=True)
class CatalogueEntry:
    """One phrase: its key, its text and the line of its table in the file."""

    key: str = attrs.field(validator=validate_key)
    text: str = attrs.field()
    line: int = attrs.field()

    @text.validator
    def _check_text(self, attribute, value):
        if not value.strip():
            raise ValueError(f"phrase {self.key!r} has an empty text")

    @property
    def text_sha256(self) -> str:
        return text_sha256(self.text)


@attrs.frozen(kw_only=True)
class Catalogue:
    """The phrases of one catalogue file, in file order."""

    path: Path
    entries: tuple[CatalogueEntry, ...]

    def __attrs_post_init__(self):
        seen = set()
        for entry in self.entries:
            if entry.key in seen:
                raise ValueError(f"duplicate phrase key {entry.key!r}")
            seen.add(entry.key)

    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]

    def get(self, key: str) -> CatalogueEntry | None:
        for entry in self.entries:
            if entry.key == key:
                return entry
        return None

    def __contains__(self, key: object) -> bool:
        return any(entry.key == key for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate a catalogue file; raise :class:`UserError` naming file, line and key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError("phrase catalogue not found", path=str(path)) from None
    except OSError as error:
        raise UserError(f"cannot read phrase catalogue: {error.strerror}", path=str(path)) from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise UserError(f"not valid UTF-8 (byte {error.start})", path=str(path), line=line) from None
    return parse_catalogue(source, path)


def parse_catalogue(source: str, path: str | Path) -> Catalogue:
    """Validate catalogue text; ``path`` is only used in error messages."""
    path = Path(path)
    lines = source.splitlines()
    headers = _scan_headers(lines, path)
    try:
        document = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.search(message)
        line = int(match["line"]) if match else None
        key = _enclosing_key(headers, line) if line is not None else None
        detail = _TOML_POSITION.sub("", message)
        raise UserError(f"TOML syntax error: {detail}", path=str(path), line=line, key=key) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table; a catalogue has none.
        raise UserError("arrays or inline tables nest too deep to read (a phrase is one text string)",
                        path=str(path)) from None

    for name in document:
        if name != "phrases":
            raise UserError(
                f"unknown top-level entry {name!r} (expected only [phrases.<key>] tables)",
                path=str(path),
                line=_first_line_mentioning(lines, name),
            )
    phrases = document.get("phrases", {})
    if not isinstance(phrases, dict):
        raise UserError("'phrases' must be a table of [phrases.<key>] tables", path=str(path),
                        line=_first_line_mentioning(lines, "phrases"))
    entries = []
    for key, table in phrases.items():
        line = headers.get(key) or _first_line_mentioning(lines, key)
        if not KEY_PATTERN.fullmatch(key):
            raise UserError("key must match [a-z0-9_]+ (it names the file <key>.raw)", path=str(path), line=line, key=key)
        if not isinstance(table, dict):
            raise UserError(f"expected a table with a 'text' field, got a {type(table).__name__}",
                            path=str(path), line=line, key=key)
        for field, value in table.items():
            if field not in FIELDS:
                raise UserError(f"unknown field {field!r} (expected only 'text')",
                                path=str(path), line=_field_line(lines, line, field) or line, key=key)
        text = table.get("text")
        if text is None:
            raise UserError("missing field 'text'", path=str(path), line=line, key=key)
        field_line = _field_line(lines, line, "text") or line
        if not isinstance(text, str):
            raise UserError(f"'text' must be a string, got a {type(text).__name__}", path=str(path), line=field_line, key=key)
        if not text.strip():
            raise UserError("empty text", path=str(path), line=field_line, key=key)
        entries.append(CatalogueEntry(key=key, text=text, line=line or 0))
    if not entries:
        raise UserError("the catalogue has no phrases", path=str(path))
    return Catalogue(path=path, entries=tuple(entries))


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name


def _scan_headers(lines: list[str], path: Path) -> dict[str, int]:
    """Map each ``[phrases.<key>]`` header to its 1-based line; reject duplicates."""
    headers: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        match = _HEADER.match(text)
        if not match:
            continue
        key = _unquote(match["key"])
        if key in headers:
            raise UserError(f"duplicate key (first defined at line {headers[key]})", path=str(path), line=number, key=key)
        headers[key] = number
    return headers


def _enclosing_key(headers: dict[str, int], line: int) -> str | None:
    """The phrase whose table contains ``line`` (the last header at or above it)."""
    best = None
    for key, header_line in headers.items():
        if header_line <= line and (best is None or header_line > headers[best]):
            best = key
    return best


def _field_line(lines: list[str], header_line: int | None, field: str) -> int | None:
    """The line assigning ``field`` inside the table that starts at ``header_line``."""
    if header_line is None:
        return None
    for number in range(header_line + 1, len(lines) + 1):
        text = lines[number - 1]
        if _ANY_HEADER.match(text):
            return None
        match = _FIELD.match(text)
        if match and _unquote(match["field"]) == field:
            return number
    return None


def _first_line_mentioning(lines: list[str], word: str) -> int | None:
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])")
    for number, text in enumerate(lines, start=1):
        if pattern.search(text.split("#", 1)[0]):
            return number
    return None
