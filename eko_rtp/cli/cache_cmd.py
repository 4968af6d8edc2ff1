"""``eko-rtp cache build|check|import``: manage the pre-rendered phrase cache.

Every subcommand takes ``--cache DIR`` and ``--phrases FILE`` (see
:func:`add_cache_arguments`, which ``serve`` reuses). The catalogue is read and
validated before anything in the cache directory is touched, so a bad catalogue
exits 2 with the cache as it was.

``check`` also compares the render settings the manifest records (backend, voice,
model) across the phrases: one rendered unlike most of the cache (or unlike the
``--backend``/``--voice``/``--model`` given) is a problem too, so a cache that would
greet a caller in two voices does not pass.

Exit status: 0 on success; 1 when ``check`` finds a problem or a build could not
render some phrase; 2 for input the operator must fix (catalogue, flags, API key).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from eko_rtp.cache.build import build_cache, check_only_keys
from eko_rtp.cache.catalogue import load_catalogue
from eko_rtp.cache.espeak import DEFAULT_VOICE as ESPEAK_DEFAULT_VOICE
from eko_rtp.cache.espeak import EspeakBackend
from eko_rtp.cache.importer import import_linear16
from eko_rtp.cache.manifest import BACKENDS, read_manifest
from eko_rtp.cache.settings import FIELDS, mixed_settings, rebuild_hint
from eko_rtp.cache.validation import inspect_cache

__all__ = ["add_cache_arguments", "add_parser", "DEFAULT_CACHE_DIR", "DEFAULT_PHRASES_FILE"]

DEFAULT_CACHE_DIR = "cache"
DEFAULT_PHRASES_FILE = "cache/phrases.toml"


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--cache`` and ``--phrases`` (shared by the cache commands and ``serve``)."""
    parser.add_argument("--cache", type=Path, default=Path(DEFAULT_CACHE_DIR), metavar="DIR",
                        help=f"cache directory (default {DEFAULT_CACHE_DIR}/)")
    parser.add_argument("--phrases", type=Path, default=Path(DEFAULT_PHRASES_FILE), metavar="FILE",
                        help=f"phrase catalogue (default {DEFAULT_PHRASES_FILE})")


def add_parser(subparsers) -> None:
    cache = subparsers.add_parser("cache", help="build, check or import the pre-rendered phrase cache")
    commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="render the phrases whose audio is missing or out of date")
    add_cache_arguments(build)
    build.add_argument("--backend", choices=("espeak", "elevenlabs"), default=None,
                       help="render backend (default: elevenlabs if ELEVENLABS_API_KEY is set, else espeak)")
    build.add_argument("--voice", default=None,
                       help=f"voice (espeak default {ESPEAK_DEFAULT_VOICE}; ElevenLabs voice id, "
                            "default $ELEVENLABS_VOICE_ID or a stock voice)")
    build.add_argument("--model", default=None,
                       help="ElevenLabs model (default $ELEVENLABS_MODEL_ID or eleven_multilingual_v2)")
    build.add_argument("--force", action="store_true", help="render every phrase")
    build.add_argument("--only", nargs="+", default=(), metavar="KEY", help="render only these keys")
    build.set_defaults(func=run_build)

    check = commands.add_parser("check", help="exit 0 only if every catalogue phrase has valid audio, "
                                              "all rendered alike")
    add_cache_arguments(check)
    check.add_argument("--backend", choices=BACKENDS, default=None,
                       help="every phrase must have been made by this backend (default: as most of the cache)")
    check.add_argument("--voice", default=None, help="every phrase must have been rendered with this voice")
    check.add_argument("--model", default=None, help="every phrase must have been rendered with this model")
    check.set_defaults(func=run_check)

    importer = commands.add_parser("import", help="import 8 kHz signed 16-bit <key>.raw files of the earlier Eko")
    add_cache_arguments(importer)
    importer.add_argument("source", type=Path, metavar="DIR", help="directory of <key>.raw files")
    importer.set_defaults(func=run_import)


def make_backend(args: argparse.Namespace):
    """The backend named by the flags and environment."""
    name = args.backend or ("elevenlabs" if os.environ.get("ELEVENLABS_API_KEY") else "espeak")
    if name == "espeak":
        return EspeakBackend(voice=args.voice or ESPEAK_DEFAULT_VOICE)
    from eko_rtp.cache.elevenlabs_backend import ElevenLabsBackend

    return ElevenLabsBackend.from_environment(voice=args.voice, model=args.model)


def run_build(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.phrases)
    check_only_keys(catalogue, args.only)
    backend = make_backend(args)

    async def build_then_close():
        try:
            return await build_cache(cache_dir=args.cache, catalogue=catalogue, backend=backend,
                                     force=args.force, only=args.only)
        finally:
            await backend.aclose()  # the ElevenLabs backend's HTTP connections

    try:
        summary = trio.run(build_then_close)
    except BaseExceptionGroup as group:
        # Ctrl-C lands in whichever render task was running; trio's nursery wraps it.
        # Every file already stored is complete, so report it as a plain interrupt.
        _, others = group.split(KeyboardInterrupt)
        if others is None:
            print("\ninterrupted: the phrases stored so far are complete; build again to finish", file=sys.stderr)
            raise KeyboardInterrupt from None
        raise
    return 1 if summary.failed else 0


def run_check(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.phrases)
    manifest, manifest_problem = read_manifest(args.cache)
    if manifest_problem is not None:
        print(f"manifest: {manifest_problem}")
    inspected = inspect_cache(args.cache, catalogue, manifest)
    problems = [problem for problem in inspected.values() if problem]
    for problem in problems:
        print(problem)
    expected = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    mismatches = mixed_settings([key for key, problem in inspected.items() if problem is None], manifest, expected)
    for mismatch in mismatches:
        print(mismatch)
    valid = len(catalogue) - len(problems)
    summary = f"{valid} of {len(catalogue)} phrases valid"
    if mismatches:
        unlike = "the settings asked for" if expected else "the rest"
        summary += f"; {len(mismatches)} rendered unlike {unlike}"
    print(summary, file=sys.stderr)
    hint = rebuild_hint(mismatches)
    if hint is not None:
        print(f"to render them like the rest: {hint}", file=sys.stderr)
    return 1 if problems or mismatches else 0


def run_import(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.phrases)
    summary = import_linear16(args.source, cache_dir=args.cache, catalogue=catalogue)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"imported {len(summary.imported)} phrases", file=sys.stderr)
    return 0
