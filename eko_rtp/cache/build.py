"""The incremental, atomic cache build.

Theory of operation: :func:`plan_build` (pure) decides which keys to render from
the catalogue, the manifest and what each file on disk looks like: a key renders
when its audio is missing, corrupt or stale, or when it was rendered by another
backend, voice or model than the one asked for now (imported audio stays while its
text is unchanged); ``force`` renders all, ``only`` exactly the named keys.

:func:`build_cache` is the trio shell: it sweeps temporaries a killed build left,
renders the plan with at most ``backend.concurrency`` renders in flight, and for
each finished phrase writes the audio atomically and then the manifest atomically
(eko_rtp/cache/atomic.py). At every instant the directory holds only complete files,
and a file the manifest does not describe is refused by the loader; so a build
killed by SIGINT, SIGKILL or a full disk loses at most the phrases in flight, and
the next build repairs them. A phrase that fails (retries exhausted) is reported
and the others go on; an error the operator must fix (a rejected API key, a
missing program) stops the whole build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import attrs
import trio

from eko_rtp.cache.atomic import remove_stale_temporaries, write_atomic
from eko_rtp.cache.backend import Backend, RenderError
from eko_rtp.cache.catalogue import Catalogue
from eko_rtp.cache.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from eko_rtp.cache.progress import BuildProgress, format_summary
from eko_rtp.cache.validation import Problem, audio_path, inspect_cache
from eko_rtp.errors import UserError

__all__ = ["BuildSummary", "CacheWriter", "PlannedRender", "build_cache", "check_only_keys", "plan_build"]


@attrs.frozen(kw_only=True)
class PlannedRender:
    key: str
    reason: str


@attrs.frozen(kw_only=True)
class BuildSummary:
    rendered: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    characters: int
    dollars: float

    def line(self) -> str:
        return format_summary(rendered=len(self.rendered), skipped=len(self.skipped), failed=len(self.failed),
                              characters=self.characters, dollars=self.dollars)


def check_only_keys(catalogue: Catalogue, only: Iterable[str]) -> None:
    """Raise UserError for a ``--only`` key the catalogue does not have."""
    for key in only:
        if key not in catalogue:
            raise UserError(f"unknown phrase key (not in {catalogue.path})", key=key)


def plan_build(catalogue: Catalogue, manifest: Manifest, problems: dict[str, Problem | None], *,
               backend: str, voice: str | None, model: str | None,
               force: bool = False, only: Iterable[str] = ()) -> list[PlannedRender]:
    """The keys to render, in catalogue order, each with the reason."""
    only = set(only)
    plan = []
    for phrase in catalogue:
        key = phrase.key
        if only:
            if key in only:
                plan.append(PlannedRender(key=key, reason="named with --only"))
            continue
        if force:
            plan.append(PlannedRender(key=key, reason="--force"))
            continue
        problem = problems.get(key)
        if problem is not None:
            plan.append(PlannedRender(key=key, reason=f"{problem.kind.value}: {problem.detail}"))
            continue
        entry = manifest.get(key)
        if entry.backend == "imported":
            continue
        changed = [name for name, was, now in (("backend", entry.backend, backend), ("voice", entry.voice, voice),
                                                ("model", entry.model, model)) if was != now]
        if changed:
            plan.append(PlannedRender(key=key, reason=f"{' and '.join(changed)} changed"))
    return plan


def make_entry(*, text_sha256: str, audio: bytes, backend: str, voice: str | None, model: str | None) -> ManifestEntry:
    """The manifest entry describing ``audio``."""
    return ManifestEntry(text_sha256=text_sha256, backend=backend, voice=voice, model=model,
                         byte_length=len(audio), audio_sha256=hashlib.sha256(audio).hexdigest())


class CacheWriter:
    """Stores phrases in a cache directory: the audio, then the manifest, each atomically."""

    def __init__(self, cache_dir: Path, manifest: Manifest) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest

    def store(self, key: str, audio: bytes, entry: ManifestEntry) -> None:
        # Audio first, manifest second: if we die in between, the old entry does not
        # match the new audio and the key reads as corrupt, never as valid.
        path = audio_path(self.cache_dir, key)
        try:
            write_atomic(path, audio)
            manifest = self.manifest.with_entry(key, entry)
            write_manifest(self.cache_dir, manifest)
        except OSError as error:
            # A full disk or a read-only directory: write_atomic removed its temporary.
            raise UserError(f"cannot write the cache: {error.strerror or error}", path=str(self.cache_dir),
                            key=key) from None
        self.manifest = manifest


async def build_cache(*, cache_dir: str | Path, catalogue: Catalogue, backend: Backend, force: bool = False,
                      only: Iterable[str] = (), progress_stream=None, terminal: bool | None = None) -> BuildSummary:
    """Render what changed into ``cache_dir``; see the module docstring for the rules."""
    cache_dir = Path(cache_dir)
    only = tuple(only)
    check_only_keys(catalogue, only)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_dir)
    manifest, _ = read_manifest(cache_dir)
    problems = inspect_cache(cache_dir, catalogue, manifest)
    plan = plan_build(catalogue, manifest, problems, backend=backend.name, voice=backend.voice, model=backend.model,
                      force=force, only=only)
    writer = CacheWriter(cache_dir, manifest.only(catalogue.keys()))
    if writer.manifest != manifest or not (cache_dir / "manifest.json").exists():
        write_manifest(cache_dir, writer.manifest)

    progress = BuildProgress(total=len(plan), dollars_per_1000_characters=backend.dollars_per_1000_characters,
                             stream=progress_stream, terminal=terminal)
    limiter = trio.CapacityLimiter(backend.concurrency)
    rendered: list[str] = []
    failed: list[tuple[str, str]] = []
    fatal: list[UserError] = []

    async def render_one(key: str, nursery: trio.Nursery) -> None:
        phrase = catalogue.get(key)
        async with limiter:
            try:
                audio = await backend.render(phrase.text)
            except RenderError as error:
                failed.append((key, str(error)))
                progress.failed(key, str(error))
                return
            except UserError as error:
                fatal.append(error)
                nursery.cancel_scope.cancel()
                return
        entry = make_entry(text_sha256=phrase.text_sha256, audio=audio, backend=backend.name,
                           voice=backend.voice, model=backend.model)
        try:
            writer.store(key, audio, entry)
        except UserError as error:
            fatal.append(error)
            nursery.cancel_scope.cancel()
            return
        rendered.append(key)
        progress.rendered(key, len(phrase.text))

    progress.start()
    async with trio.open_nursery() as nursery:
        for item in plan:
            nursery.start_soon(render_one, item.key, nursery)
    if fatal:
        raise fatal[0]
    planned = {item.key for item in plan}
    summary = BuildSummary(
        rendered=tuple(key for key in catalogue.keys() if key in rendered),
        skipped=tuple(key for key in catalogue.keys() if key not in planned),
        failed=tuple(failed),
        characters=progress.characters,
        dollars=progress.dollars,
    )
    progress.finish(summary.line())
    return summary
