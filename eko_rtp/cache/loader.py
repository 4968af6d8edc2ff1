"""Load the phrase cache for the server: sealed copies, validated, zero-copy frames.

Theory of operation: each ``<key>.raw`` is copied once into sealed, read-only
memory of the process (:func:`eko_rtp.cache.sealed.sealed_copy`): a file changed,
truncated or removed on disk under a running server changes nothing it plays (a
mapping of the file itself turned ``truncate`` into SIGBUS). Every call that plays
the phrase slices the same mapping (``Phrase.frame(i)`` is a memoryview, no copy).
A mapping is never closed explicitly: a memoryview keeps its mmap alive, so after a
reload calls in progress keep the audio they had, and the mapping goes when the
last view does.

Every entry is checked against the manifest and the catalogue's current text
(:func:`eko_rtp.cache.validation.audio_problem`), on the copy: what passed is what
plays. A missing, corrupt or stale key is left out with one WARNING naming the key
and the reason, and the server treats it as missing. An empty file counts as
corrupt. Phrases rendered unlike most of the cache (another backend, voice or
model: :mod:`eko_rtp.cache.settings`) still load, with one WARNING naming them.
The cache keeps each file's signature at the copy, so
:meth:`PhraseCache.changes_on_disk` can say which files changed since.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import attrs

from eko_rtp.cache.audio import duration_of
from eko_rtp.codec.frame import FRAME_BYTES
from eko_rtp.cache.catalogue import load_catalogue, validate_key
from eko_rtp.cache.manifest import read_manifest
from eko_rtp.cache.sealed import FileSignature, file_signature, sealed_copy
from eko_rtp.cache.settings import mixed_settings
from eko_rtp.cache.validation import Problem, ProblemKind, audio_path, audio_problem

__all__ = ["FileChange", "Phrase", "PhraseCache", "load_cache"]

logger = logging.getLogger(__name__)

MISMATCHES_SHOWN = 5  # phrases named in the one warning about mixed render settings


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


@attrs.frozen(kw_only=True)
class FileChange:
    """A phrase file that is no longer the one the cache copied."""

    key: str
    path: Path
    was: FileSignature
    now: FileSignature | None  # None: removed

    def __str__(self) -> str:
        if self.now is None:
            what = "removed"
        elif (self.now.device, self.now.inode) != (self.was.device, self.was.inode):
            what = f"replaced by another file ({self.now.size} bytes, was {self.was.size})"
        elif self.now.size < self.was.size:
            what = f"truncated in place to {self.now.size} bytes (was {self.was.size})"
        else:
            what = f"rewritten in place ({self.now.size} bytes, was {self.was.size})"
        return f"{self.path} {what}"


class PhraseCache:
    """The valid phrases of one load; ``problems`` says why the others are missing."""

    def __init__(self, phrases: dict[str, Phrase], problems: dict[str, Problem],
                 sources: dict[str, tuple[Path, FileSignature]] | None = None) -> None:
        self._phrases = dict(phrases)
        self.problems = dict(problems)
        # The file each loaded phrase was copied from, as it was then.
        self.sources = dict(sources or {})

    def changes_on_disk(self) -> list[FileChange]:
        """The loaded phrases whose file changed since the load (a ``stat`` each: blocking)."""
        changes = []
        for key, (path, was) in self.sources.items():
            now = file_signature(path)
            if now != was:
                changes.append(FileChange(key=key, path=path, was=was, now=now))
        return changes

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


def load_cache(cache_dir: str | Path, phrases_file: str | Path) -> PhraseCache:
    """Map and validate every catalogue phrase; raise UserError only for a bad catalogue."""
    catalogue = load_catalogue(phrases_file)
    manifest, manifest_problem = read_manifest(cache_dir)
    if manifest_problem is not None:
        logger.warning("Phrase cache manifest unusable, every phrase counts as missing: %s", manifest_problem)
    phrases: dict[str, Phrase] = {}
    problems: dict[str, Problem] = {}
    sources: dict[str, tuple[Path, FileSignature]] = {}
    for entry in catalogue:
        path = audio_path(cache_dir, entry.key)
        copy = None
        try:
            copy = sealed_copy(path, name=f"eko-phrase:{entry.key}")
        except OSError as error:
            problem = Problem(key=entry.key, kind=ProblemKind.CORRUPT, detail=f"cannot copy: {error.strerror}")
        else:
            audio = None if copy is None else copy.data
            problem = audio_problem(entry.key, entry.text_sha256, manifest.get(entry.key), audio)
        if problem is not None:
            problems[entry.key] = problem
            logger.warning("Cached phrase %r refused: %s: %s", entry.key, problem.kind.value, problem.detail)
            continue
        assert copy is not None
        phrases[entry.key] = Phrase(key=entry.key, audio=memoryview(copy.data))
        sources[entry.key] = (path, copy.signature)
    mismatches = mixed_settings(phrases, manifest)
    if mismatches:
        shown = "; ".join(str(mismatch) for mismatch in mismatches[:MISMATCHES_SHOWN])
        more = f"; and {len(mismatches) - MISMATCHES_SHOWN} more" if len(mismatches) > MISMATCHES_SHOWN else ""
        logger.warning("Phrase cache mixes render settings, callers will hear more than one voice "
                       "(`eko-rtp cache check` lists them): %s%s", shown, more)
    logger.info("Loaded %d cached phrases", len(phrases))
    return PhraseCache(phrases, problems, sources)
