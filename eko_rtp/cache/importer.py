"""``eko-rtp cache import DIR``: adopt the earlier Eko's pre-rendered phrases.

The earlier Eko stored each phrase as ``<key>.raw``: headerless signed 16-bit
little-endian PCM, 8 kHz, mono. Import encodes each to µ-law with our G.711
tables, trims leading silence and pads to whole frames like any render, writes it
atomically, and records it in the manifest as backend ``imported``, so a later
build keeps it for as long as the catalogue text is unchanged (``--force`` or
``--only`` replaces it). A file whose key the catalogue does not have, or that is
not valid PCM, is skipped with a warning; the others are still imported.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from eko_rtp.cache.atomic import remove_stale_temporaries
from eko_rtp.cache.audio import Linear16ToUlawStream, finish_ulaw
from eko_rtp.cache.build import CacheWriter, make_entry
from eko_rtp.cache.catalogue import Catalogue
from eko_rtp.cache.manifest import read_manifest
from eko_rtp.errors import UserError

__all__ = ["ImportSummary", "import_linear16", "slin16_to_cached_ulaw"]


@attrs.frozen(kw_only=True)
class ImportSummary:
    imported: tuple[str, ...]
    warnings: tuple[str, ...]


def slin16_to_cached_ulaw(pcm: bytes) -> bytes:
    """Signed 16-bit LE 8 kHz PCM to cached-format µ-law; ValueError if it is not usable."""
    encoder = Linear16ToUlawStream()
    return finish_ulaw(encoder.feed(pcm) + encoder.finish())


def import_linear16(source_dir: str | Path, *, cache_dir: str | Path, catalogue: Catalogue) -> ImportSummary:
    """Import every ``<key>.raw`` of ``source_dir`` into ``cache_dir``."""
    source_dir = Path(source_dir)
    cache_dir = Path(cache_dir)
    if not source_dir.is_dir():
        raise UserError("import source is not a directory", path=str(source_dir))
    sources = sorted(source_dir.glob("*.raw"))
    if not sources:
        raise UserError("no .raw files to import", path=str(source_dir))
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_dir)
    manifest, _ = read_manifest(cache_dir)
    writer = CacheWriter(cache_dir, manifest.only(catalogue.keys()))
    imported = []
    warnings = []
    for source in sources:
        key = source.stem
        phrase = catalogue.get(key)
        if phrase is None:
            warnings.append(f"{source}: key {key!r} is not in the catalogue {catalogue.path}; skipped")
            continue
        try:
            audio = slin16_to_cached_ulaw(source.read_bytes())
        except ValueError as error:
            warnings.append(f"{source}: not usable 16-bit PCM ({error}); skipped")
            continue
        entry = make_entry(text_sha256=phrase.text_sha256, audio=audio, backend="imported", voice=None, model=None)
        writer.store(key, audio, entry)
        imported.append(key)
    return ImportSummary(imported=tuple(imported), warnings=tuple(warnings))
