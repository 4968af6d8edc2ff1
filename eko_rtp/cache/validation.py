"""Is a phrase's audio valid? One rule shared by ``cache check``, the builder and the loader.

A key's audio is valid when ``<key>.raw`` exists, the manifest has an entry for it,
the file has the entry's length (a positive whole number of 160-byte frames) and
sha256, and the entry was rendered from the catalogue's current text. Anything else
is one :class:`Problem`: *missing* (no file, or a file the manifest never recorded),
*corrupt* (the bytes are not what was recorded) or *stale* (the text changed).
"""

from __future__ import annotations

import enum
import hashlib
from pathlib import Path

import attrs

from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.cache.catalogue import Catalogue
from eko_rtp.cache.manifest import Manifest, ManifestEntry

__all__ = ["ProblemKind", "Problem", "audio_problem", "audio_path", "inspect_cache"]


class ProblemKind(enum.Enum):
    MISSING = "missing"
    CORRUPT = "corrupt"
    STALE = "stale"


@attrs.frozen(kw_only=True)
class Problem:
    """Why one key has no valid audio."""

    key: str
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: {self.kind.value}: {self.detail}"


def audio_path(cache_dir: str | Path, key: str) -> Path:
    """Where the audio of ``key`` lives."""
    return Path(cache_dir) / f"{key}.raw"


def audio_problem(key: str, text_sha256: str, entry: ManifestEntry | None, audio) -> Problem | None:
    """Check ``audio`` (a buffer, or None if there is no file) against the manifest entry.

    Hashes the buffer; ``audio`` may be an mmap so the check reads no copy.
    """
    if audio is None:
        return Problem(key=key, kind=ProblemKind.MISSING, detail="no audio file")
    if entry is None:
        return Problem(key=key, kind=ProblemKind.MISSING, detail="audio file not recorded in the manifest")
    length = len(audio)
    if length == 0:
        return Problem(key=key, kind=ProblemKind.CORRUPT, detail="empty audio file")
    if length != entry.byte_length:
        return Problem(key=key, kind=ProblemKind.CORRUPT,
                       detail=f"length {length} bytes, manifest says {entry.byte_length}")
    if length % FRAME_BYTES:
        return Problem(key=key, kind=ProblemKind.CORRUPT,
                       detail=f"length {length} bytes is not a whole number of {FRAME_BYTES}-byte frames")
    if hashlib.sha256(audio).hexdigest() != entry.audio_sha256:
        return Problem(key=key, kind=ProblemKind.CORRUPT, detail="sha256 of the audio does not match the manifest")
    if entry.text_sha256 != text_sha256:
        return Problem(key=key, kind=ProblemKind.STALE, detail="the text changed since it was rendered")
    return None


def inspect_cache(cache_dir: str | Path, catalogue: Catalogue, manifest: Manifest) -> dict[str, Problem | None]:
    """The problem of every catalogue key (None when its audio is valid), reading each file."""
    result = {}
    for phrase in catalogue:
        try:
            audio = audio_path(cache_dir, phrase.key).read_bytes()
        except FileNotFoundError:
            audio = None
        except OSError as error:
            result[phrase.key] = Problem(key=phrase.key, kind=ProblemKind.CORRUPT,
                                         detail=f"cannot read: {error.strerror}")
            continue
        result[phrase.key] = audio_problem(phrase.key, phrase.text_sha256, manifest.get(phrase.key), audio)
    return result
