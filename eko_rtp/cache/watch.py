"""Say so when a phrase file changes on disk under the running server.

Theory of operation: the server plays sealed copies made at load
(:mod:`eko_rtp.cache.sealed`), so a file changed on disk changes nothing callers
hear; but the operator should know that the cache on disk and the one in memory now
differ, and that a reload will re-read (and re-validate) it. Every
:data:`WATCH_INTERVAL` seconds :func:`watch_cache_files` compares each loaded
phrase's file with its signature at the copy (a ``stat`` each, in a worker thread:
never a blocking call on the loop) and logs each change once, at WARNING, naming the
file and what happened (replaced, truncated or rewritten in place, removed). A
reload brings a new cache, whose copies are the new reference.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from eko_rtp.cache.loader import FileChange, PhraseCache

__all__ = ["WATCH_INTERVAL", "watch_cache_files"]

log = logging.getLogger(__name__)

WATCH_INTERVAL = 10.0


def _report(change: FileChange) -> None:
    log.warning("phrase cache file %s since the server loaded it; calls keep playing the copy loaded then. "
                "`eko-rtp cache check` says whether it is valid, and a reload (SIGHUP) plays it if it is",
                change)


async def watch_cache_files(
    current_cache: Callable[[], PhraseCache],
    *,
    interval: float = WATCH_INTERVAL,
    run_sync: Callable[[Callable[[], list[FileChange]]], Awaitable[list[FileChange]]] = trio.to_thread.run_sync,
) -> None:
    """Log phrase files that change on disk, once per change, until cancelled.

    ``current_cache`` returns the cache new calls get (it changes at a reload);
    ``run_sync`` runs the blocking look (a worker thread; tests on a mock clock run it inline).
    """
    watched: PhraseCache | None = None
    reported: set[FileChange] = set()
    while True:
        await trio.sleep(interval)
        cache = current_cache()
        if cache is not watched:
            watched, reported = cache, set()
        changes = await run_sync(cache.changes_on_disk)
        for change in changes:
            if change not in reported:
                _report(change)
        reported = set(changes)  # a file put back as it was, then changed again, is news again
