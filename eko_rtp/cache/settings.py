"""Render settings: which backend, voice and model made each phrase, and a cache that mixes them.

Theory of operation: the manifest records, per phrase, the backend, voice and model
that rendered it (:mod:`eko_rtp.cache.build`). A build renders again a phrase made
with other settings than the ones it is asked for, yet a cache can still mix them:
a build with ``--only`` and another ``--voice``, phrases imported from the earlier
Eko beside rendered ones, a file copied in from another cache with its entry. Every
such phrase passes the per-file rules (:mod:`eko_rtp.cache.validation`), and a
caller hears two voices in one call.

:func:`mixed_settings` finds them among the phrases whose audio is valid: those
whose settings differ from the ones asked for (``cache check --backend``,
``--voice``, ``--model``: only the named ones are compared) or, when none is asked
for, from the settings most of the cache was rendered with (a tie goes to the
settings of the phrase earlier in the catalogue). Each mismatch names the phrase
and, for each setting that differs, what it has and what the rest has.
"""

from __future__ import annotations

import collections
import shlex
from collections.abc import Iterable, Mapping

import attrs

from eko_rtp.cache.manifest import Manifest, ManifestEntry

__all__ = ["FIELDS", "RenderSettings", "SettingsMismatch", "mixed_settings", "rebuild_hint"]

FIELDS = ("backend", "voice", "model")


def _show(value: str | None) -> str:
    return "none" if value is None else repr(value)


@attrs.frozen(kw_only=True)
class RenderSettings:
    """What rendered a phrase (the three manifest fields a build compares)."""

    backend: str
    voice: str | None
    model: str | None

    @classmethod
    def of(cls, entry: ManifestEntry) -> RenderSettings:
        return cls(backend=entry.backend, voice=entry.voice, model=entry.model)

    def describe(self, fields: Iterable[str] = FIELDS) -> str:
        """``backend 'espeak', voice 'fr-fr'``: the named fields and their values."""
        return ", ".join(f"{name} {_show(getattr(self, name))}" for name in fields)


@attrs.frozen(kw_only=True)
class SettingsMismatch:
    """One phrase rendered with other settings than the reference."""

    key: str
    settings: RenderSettings
    # The fields that differ, with the reference's value for each.
    wanted: tuple[tuple[str, str | None], ...]
    # The settings most of the cache has, and how many of how many valid phrases have
    # them; None when the reference was asked for.
    reference: RenderSettings | None = None
    sharing: int | None = None
    total: int = 0

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.wanted)

    def __str__(self) -> str:
        has = self.settings.describe(self.fields)
        want = ", ".join(f"{name} {_show(value)}" for name, value in self.wanted)
        if self.reference is None:
            return f"{self.key}: other render settings: {has}, asked for {want}"
        return f"{self.key}: other render settings: {has}, where {self.sharing} of the {self.total} phrases have {want}"


def mixed_settings(keys: Iterable[str], manifest: Manifest,
                   expected: Mapping[str, str | None] | None = None) -> list[SettingsMismatch]:
    """The phrases among ``keys`` (valid ones, in catalogue order) not rendered like the others.

    ``expected`` maps some of :data:`FIELDS` to the value asked for; without it the
    reference is the settings most of ``keys`` have.
    """
    settings = {key: RenderSettings.of(entry) for key in keys if (entry := manifest.get(key)) is not None}
    if not settings:
        return []
    if expected:
        unknown = set(expected) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown render settings {sorted(unknown)}; expected some of {FIELDS}")
        wanted = dict(expected)
        reference, sharing = None, None
    else:
        counts = collections.Counter(settings.values())
        # most_common keeps first-seen order among equal counts: the catalogue's order.
        reference, sharing = counts.most_common(1)[0]
        wanted = {name: getattr(reference, name) for name in FIELDS}
    mismatches = []
    for key, has in settings.items():
        differing = tuple((name, value) for name, value in wanted.items() if getattr(has, name) != value)
        if differing:
            mismatches.append(SettingsMismatch(key=key, settings=has, wanted=differing, reference=reference,
                                               sharing=sharing, total=len(settings)))
    return mismatches


def rebuild_hint(mismatches: list[SettingsMismatch]) -> str | None:
    """The ``cache build`` command that renders the mismatched phrases like most of the cache, if one can."""
    if not mismatches or mismatches[0].reference is None:
        return None  # settings asked for may name only some fields: the operator knows the rest
    reference = mismatches[0].reference
    if reference.backend == "imported":
        return None  # no render reproduces imported audio
    words = ["eko-rtp", "cache", "build", "--backend", reference.backend]
    if reference.voice is not None:
        words += ["--voice", reference.voice]
    if reference.model is not None:
        words += ["--model", reference.model]
    words += ["--only", *(mismatch.key for mismatch in mismatches)]
    return shlex.join(words)
