"""The dynamic cache: completed live renders on disk, content-addressed, bounded, LRU.

Theory of operation: a render is named by the sha256 of everything that shapes its
audio (text, voice, model, output format, provider settings; see :func:`render_key`),
so the same sentence said twice with the same voice costs one request. Each entry
is one file ``<key>.ulaw``::

    offset  size  field
    0       8     magic b"EKODYN1\\n"
    8       32    sha256 of the audio
    40      8     audio length in bytes, unsigned big-endian
    48      n     µ-law 8 kHz mono audio, a whole number of 160-byte frames

written with :func:`eko_rtp.cache.atomic.write_atomic`, so a crash leaves the old
state or the new entry, never a torn one. At start the index is rebuilt from the
directory: every entry is mapped read-only and its checksum verified; a corrupt or
truncated one is deleted with a log line. Readers get memoryviews into the shared
``mmap`` (zero-copy frames, like the phrase cache). The total size is bounded:
storing past the bound evicts the least recently used entries (recency survives a
restart through the files' mtimes, touched on each hit). A view held by a call
stays valid after its entry is evicted: the mapping lives until its last reference
goes. Thread-safe: :meth:`DynamicCache.put` may run in a worker thread.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

import attrs

from eko_rtp.cache.atomic import remove_stale_temporaries, write_atomic
from eko_rtp.codec.frame import FRAME_BYTES

log = logging.getLogger(__name__)

MAGIC = b"EKODYN1\n"
_HEADER = struct.Struct(">8s32sQ")  # magic, sha256(audio), audio length
HEADER_BYTES = _HEADER.size  # 48
SUFFIX = ".ulaw"


def render_key(*, text: str, voice: str, model: str, output_format: str, settings: Mapping[str, object]) -> str:
    """The content address of a render: sha256 over a canonical JSON of its inputs."""
    canonical = json.dumps(
        {"text": text, "voice": voice, "model": model, "format": output_format, "settings": dict(settings)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@attrs.frozen(kw_only=True)
class CachedRender:
    """One cached render: ``audio`` is a read-only view of its mapping."""

    key: str
    audio: memoryview = attrs.field(repr=False)

    @property
    def frame_count(self) -> int:
        return len(self.audio) // FRAME_BYTES

    def frame(self, index: int) -> memoryview:
        """Frame ``index`` as a zero-copy slice."""
        if not 0 <= index < self.frame_count:
            raise IndexError(f"frame {index} out of range 0..{self.frame_count - 1} of render {self.key}")
        return self.audio[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]

    def frames(self) -> list[memoryview]:
        return [self.frame(index) for index in range(self.frame_count)]


class CorruptEntry(Exception):
    """An entry file that does not hold what its header promises."""


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def encode_entry(audio: bytes | bytearray | memoryview) -> bytes:
    """The file bytes for ``audio`` (header + audio)."""
    return _HEADER.pack(MAGIC, hashlib.sha256(audio).digest(), len(audio)) + bytes(audio)


def map_entry_untrusted(path: Path) -> memoryview:
    """Map an entry file read-only and verify it; return a view of its audio or raise CorruptEntry."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < HEADER_BYTES:
            raise CorruptEntry(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    magic, digest, length = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptEntry(f"{path}: bad magic {magic!r}")
    if length != size - HEADER_BYTES:
        raise CorruptEntry(f"{path}: header says {length} audio bytes, file holds {size - HEADER_BYTES}")
    if length % FRAME_BYTES:
        raise CorruptEntry(f"{path}: {length} audio bytes is not a whole number of {FRAME_BYTES}-byte frames")
    audio = view[HEADER_BYTES:]
    if hashlib.sha256(audio).digest() != digest:
        raise CorruptEntry(f"{path}: audio checksum mismatch")
    return audio


class DynamicCache:
    """Completed live renders under ``directory``, at most ``max_bytes`` on disk."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"DynamicCache max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # key -> (audio view, bytes on disk); order is least recently used first.
        self._entries: collections.OrderedDict[str, tuple[memoryview, int]] = collections.OrderedDict()
        self._writing: set[str] = set()
        self.total_bytes = 0
        self.evictions = 0
        self.dropped_corrupt = 0
        self._rebuild()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def _rebuild(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(self.directory):
            log.info("dynamic cache: removed interrupted write %s", stale)
        found = []
        for path in self.directory.iterdir():
            if path.suffix != SUFFIX or not _is_key(path.stem) or not path.is_file():
                continue
            try:
                audio = map_entry_untrusted(path)
            except (CorruptEntry, OSError, ValueError) as error:
                log.warning("dynamic cache: dropping corrupt entry: %s", error)
                path.unlink(missing_ok=True)
                self.dropped_corrupt += 1
                continue
            stat = path.stat()
            found.append((stat.st_mtime_ns, path.stem, audio, stat.st_size))
        for _, key, audio, size in sorted(found):
            self._entries[key] = (audio, size)
            self.total_bytes += size
        with self._lock:
            self._evict_for(0)
        log.info(
            "dynamic cache: %d entries, %d bytes in %s (limit %d)",
            len(self._entries),
            self.total_bytes,
            self.directory,
            self.max_bytes,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> CachedRender | None:
        """The render for ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        try:
            os.utime(self._path(key))  # recency that survives a restart
        except OSError as error:
            log.warning("dynamic cache: could not touch %s: %s", self._path(key), error)
        return CachedRender(key=key, audio=entry[0])

    def put(self, key: str, audio: bytes | bytearray | memoryview) -> bool:
        """Store a complete render; False if it was already there, too big, or being written."""
        if not _is_key(key):
            raise ValueError(f"dynamic cache key must be 64 lower-case hex digits, got {key!r}")
        if len(audio) == 0 or len(audio) % FRAME_BYTES:
            raise ValueError(
                f"dynamic cache audio must be a non-empty whole number of {FRAME_BYTES}-byte frames, "
                f"got {len(audio)} bytes"
            )
        size = HEADER_BYTES + len(audio)
        if size > self.max_bytes:
            log.info("dynamic cache: render %s of %d bytes exceeds the %d-byte limit, not stored", key, size, self.max_bytes)
            return False
        with self._lock:
            if key in self._entries or key in self._writing:
                return False
            self._writing.add(key)
        try:
            path = self._path(key)
            write_atomic(path, encode_entry(audio))
            # Map what is on disk, so readers share the page cache instead of our copy.
            view = map_entry_untrusted(path)
        finally:
            with self._lock:
                self._writing.discard(key)
        with self._lock:
            self._evict_for(size)
            self._entries[key] = (view, size)
            self.total_bytes += size
        return True

    def _evict_for(self, incoming: int) -> None:
        """Drop least recently used entries until ``incoming`` more bytes fit. Lock held."""
        while self._entries and self.total_bytes + incoming > self.max_bytes:
            key, (_, size) = self._entries.popitem(last=False)
            self.total_bytes -= size
            self.evictions += 1
            self._path(key).unlink(missing_ok=True)
            log.info("dynamic cache: evicted %s (%d bytes)", key, size)
