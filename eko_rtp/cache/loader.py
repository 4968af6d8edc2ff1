"""Load the phrase cache for the server: memory-mapped, validated, zero-copy frames.

Theory of operation: each ``<key>.raw`` is mapped read-only once; every call that
plays the phrase slices the same mapping (``Phrase.frame(i)`` is a memoryview, no
copy). A mapping is never closed explicitly: a memoryview keeps its mmap alive, so
after a reload (or a rebuild that renames a new file over the old one) calls in
progress keep the audio they had, and the mapping goes when the last view does.

Every entry is checked against the manifest and the catalogue's current text
(:func:`eko_rtp.cache.validation.audio_problem`); a missing, corrupt or stale key is
left out with one WARNING naming the key and the reason, and the server treats it as
missing. An empty file cannot be mapped and counts as corrupt.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import attrs

from eko_rtp.cache.audio import duration_of
from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.cache.catalogue import load_catalogue, validate_key
from eko_rtp.cache.manifest import read_manifest
from eko_rtp.cache.validation import Problem, ProblemKind, audio_path, audio_problem

__all__ = ["Phrase", "PhraseCache", "load_cache"]

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True, eq=False)
class Phrase:
    """One cached phrase: read-only µ-law audio, a whole number of 160-byte frames."""

    key: str = attrs.field(validator=validate_key)
    audio: memoryview = attrs.field()

    @audio.validator
    def _check_audio(self, attribute, value):
        if not isinstance(value, memoryview) or not value.readonly:
            raise ValueError(f"phrase {self.key!r}: audio must be a read-only memoryview")
        if value.nbytes == 0 or value.nbytes % FRAME_BYTES:
            raise ValueError(f"phrase {self.key!r}: audio of {value.nbytes} bytes is not a whole, "
                             f"non-zero number of {FRAME_BYTES}-byte frames")

    @property
    def frame_count(self) -> int:
        return self.audio.nbytes // FRAME_BYTES

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return duration_of(self.audio.nbytes)

    def frame(self, index: int) -> memoryview:
        """The 160-byte payload of frame ``index`` (a zero-copy slice of the mapping)."""
        if not 0 <= index < self.frame_count:
            raise IndexError(f"phrase {self.key!r} has frames 0..{self.frame_count - 1}, asked for {index}")
        start = index * FRAME_BYTES
        return self.audio[start:start + FRAME_BYTES]


class PhraseCache:
    """The valid phrases of one load; ``problems`` says why the others are missing."""

    def __init__(self, phrases: dict[str, Phrase], problems: dict[str, Problem]) -> None:
        self._phrases = dict(phrases)
        self.problems = dict(problems)

    def get(self, key: str) -> Phrase | None:
        return self._phrases.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._phrases

    def __len__(self) -> int:
        return len(self._phrases)

    def keys(self) -> list[str]:
        return list(self._phrases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._phrases)


def _map_read_only(path: Path) -> mmap.mmap | bytes | None:
    """Map ``path`` read-only; None if it does not exist, b"" if it is empty (mmap refuses those)."""
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return None
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        # The mapping outlives the descriptor: mmap holds its own reference to the file.
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def load_cache(cache_dir: str | Path, phrases_file: str | Path) -> PhraseCache:
    """Map and validate every catalogue phrase; raise UserError only for a bad catalogue."""
    catalogue = load_catalogue(phrases_file)
    manifest, manifest_problem = read_manifest(cache_dir)
    if manifest_problem is not None:
        logger.warning("Phrase cache manifest unusable, every phrase counts as missing: %s", manifest_problem)
    phrases: dict[str, Phrase] = {}
    problems: dict[str, Problem] = {}
    for entry in catalogue:
        try:
            mapping = _map_read_only(audio_path(cache_dir, entry.key))
        except OSError as error:
            problem = Problem(key=entry.key, kind=ProblemKind.CORRUPT, detail=f"cannot map: {error.strerror}")
        else:
            problem = audio_problem(entry.key, entry.text_sha256, manifest.get(entry.key), mapping)
        if problem is not None:
            problems[entry.key] = problem
            logger.warning("Cached phrase %r refused: %s: %s", entry.key, problem.kind.value, problem.detail)
            continue
        phrases[entry.key] = Phrase(key=entry.key, audio=memoryview(mapping))
    logger.info("Loaded %d cached phrases", len(phrases))
    return PhraseCache(phrases, problems)
