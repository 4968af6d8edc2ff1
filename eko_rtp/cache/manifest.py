"""The cache manifest: what each ``<key>.raw`` was rendered from, and its checksum.

Theory of operation: ``<cache>/manifest.json`` records, per phrase key, the sha256
of the text it was rendered from, the backend, voice and model that rendered it,
its byte length, duration and the sha256 of the audio. The builder rewrites it
atomically after each file it renders (the audio first, the manifest after), so a
build killed at any instant leaves either an old entry that no longer matches the
new audio (refused as corrupt) or a new entry matching it. The manifest file is
untrusted input: a missing, unreadable or malformed manifest reads as empty, with
the reason, so the next build re-renders everything and nothing crashes.

Malformed includes too deep: :func:`json.loads` recurses once per level, so a file
of a few thousand ``[`` raised RecursionError out of ``cache check`` and ``serve``.
The text is measured first, bracket by bracket outside strings, with no recursion;
a manifest we write is 3 levels deep (document, phrases, entry).
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping
from pathlib import Path

import attrs

from eko_rtp.cache.atomic import write_atomic
from eko_rtp.cache.audio import duration_of
from eko_rtp.codec.frame import FRAME_BYTES

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
ENCODING = "PCMU/8000/1"
BACKENDS = ("espeak", "elevenlabs", "imported")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH = 32
# A JSON string (RFC 8259 §7: escapes are a backslash and one more character, the
# \uXXXX ones included) or a bracket; brackets inside strings are not nesting.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class ManifestError(Exception):
    """The manifest file is not one this version wrote."""


def json_nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of JSON ``text`` nest more than ``limit`` deep.

    A scan of the text, not a parse: iterative, and it never builds the values. On
    text that is not JSON the answer may be either; :func:`json.loads` then refuses it.
    """
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match[0]
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _sha256_field(instance, attribute, value):
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, got {value!r}")


def _optional_name(instance, attribute, value):
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{attribute.name} must be a non-empty string or null, got {value!r}")


@attrs.frozen(kw_only=True)
class ManifestEntry:
    """How one phrase's audio was made, and what it must hash to."""

    text_sha256: str = attrs.field(validator=_sha256_field)
    backend: str = attrs.field(validator=attrs.validators.in_(BACKENDS))
    voice: str | None = attrs.field(validator=_optional_name)
    model: str | None = attrs.field(validator=_optional_name)
    byte_length: int = attrs.field()
    audio_sha256: str = attrs.field(validator=_sha256_field)

    @byte_length.validator
    def _check_length(self, attribute, value):
        if type(value) is not int or value <= 0 or value % FRAME_BYTES:
            raise ValueError(f"byte_length must be a positive multiple of {FRAME_BYTES}, got {value!r}")

    @property
    def duration(self) -> float:
        return duration_of(self.byte_length)

    def to_json(self) -> dict:
        return {
            "text_sha256": self.text_sha256,
            "backend": self.backend,
            "voice": self.voice,
            "model": self.model,
            "byte_length": self.byte_length,
            "duration": round(self.duration, 3),
            "audio_sha256": self.audio_sha256,
        }

    @classmethod
    def from_json_untrusted(cls, key: str, data: object) -> ManifestEntry:
        if not isinstance(data, dict):
            raise ManifestError(f"entry {key!r} is not an object")
        fields = ("text_sha256", "backend", "voice", "model", "byte_length", "audio_sha256")
        missing = [name for name in fields if name not in data]
        if missing:
            raise ManifestError(f"entry {key!r} lacks {', '.join(missing)}")
        try:
            return cls(**{name: data[name] for name in fields})
        except (TypeError, ValueError) as error:
            raise ManifestError(f"entry {key!r}: {error}") from None


@attrs.frozen(kw_only=True)
class Manifest:
    """Entries by phrase key; immutable (``with_entry`` returns a new manifest)."""

    entries: Mapping[str, ManifestEntry] = attrs.field(
        factory=dict, converter=lambda value: types.MappingProxyType(dict(value))
    )

    def get(self, key: str) -> ManifestEntry | None:
        return self.entries.get(key)

    def with_entry(self, key: str, entry: ManifestEntry) -> Manifest:
        return Manifest(entries={**self.entries, key: entry})

    def only(self, keys) -> Manifest:
        """The manifest restricted to ``keys`` (drops phrases no longer catalogued)."""
        wanted = set(keys)
        return Manifest(entries={key: entry for key, entry in self.entries.items() if key in wanted})

    def to_bytes(self) -> bytes:
        document = {
            "format_version": FORMAT_VERSION,
            "encoding": ENCODING,
            "frame_bytes": FRAME_BYTES,
            "phrases": {key: self.entries[key].to_json() for key in sorted(self.entries)},
        }
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def parse_untrusted(cls, data: bytes) -> Manifest:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ManifestError(f"not valid JSON: {error}") from None
        if json_nests_deeper_than(text, MAX_DEPTH):
            raise ManifestError(f"arrays or objects nest deeper than {MAX_DEPTH} levels")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"not valid JSON: {error}") from None
        except RecursionError:  # not reached after the scan above; kept so no input can crash us
            raise ManifestError(f"arrays or objects nest deeper than {MAX_DEPTH} levels") from None
        if not isinstance(document, dict):
            raise ManifestError("not a JSON object")
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(f"format_version {version!r}, this version reads {FORMAT_VERSION}")
        if document.get("encoding") != ENCODING or document.get("frame_bytes") != FRAME_BYTES:
            raise ManifestError(f"encoding {document.get('encoding')!r}/{document.get('frame_bytes')!r}, "
                                f"expected {ENCODING!r}/{FRAME_BYTES}")
        phrases = document.get("phrases")
        if not isinstance(phrases, dict):
            raise ManifestError("'phrases' is not an object")
        return cls(entries={key: ManifestEntry.from_json_untrusted(key, value) for key, value in phrases.items()})


def read_manifest(cache_dir: str | Path) -> tuple[Manifest, str | None]:
    """The manifest of ``cache_dir`` and, if it could not be used, why (it then reads as empty)."""
    path = Path(cache_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Manifest(), f"{path} does not exist"
    except OSError as error:
        return Manifest(), f"cannot read {path}: {error.strerror}"
    try:
        return Manifest.parse_untrusted(data), None
    except ManifestError as error:
        return Manifest(), f"{path} is unusable: {error}"


def write_manifest(cache_dir: str | Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (temporary name, fsync, rename)."""
    write_atomic(Path(cache_dir) / MANIFEST_NAME, manifest.to_bytes())
