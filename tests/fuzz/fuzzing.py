"""What the fuzzers share: how long they run, the "only this error escapes" check, and a linear-time check.

How long (``EKO_FUZZ``):

- unset or ``short``: the normal test run. Every fuzzer gets 200 examples, the same
  ones each run (a red suite is never luck), and a failure is reported as found,
  unshrunk, so the suite stays within its time (shrinking a call sequence can take
  minutes);
- ``shrink``: the same examples, and a failure shrunk to its smallest form;
- ``long``: a random campaign of 100 000 examples per fuzzer, failures shrunk and kept
  in ``.hypothesis/`` to be replayed first next time; ``<number>``: as ``long``, that
  many examples per fuzzer.

A campaign runs in rounds of at most ``ROUND`` examples (``conftest.py`` repeats each
test): hypothesis keeps every choice it made in one run in memory, a few hundred
kilobytes per example of a call sequence, so one run of 100 000 would need tens of
gigabytes.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator

import hypothesis
from hypothesis import HealthCheck, Phase

__all__ = ["FUZZ", "EXAMPLES", "ROUNDS", "only_raises", "assert_linear", "LONG"]

_SETTING = os.environ.get("EKO_FUZZ", "short").strip().lower()
LONG = _SETTING not in ("short", "shrink")
if _SETTING in ("short", "shrink"):
    TOTAL = 200
elif _SETTING == "long":
    TOTAL = 100_000
elif _SETTING.isdigit() and int(_SETTING) > 0:
    TOTAL = int(_SETTING)
else:
    raise ValueError(f"EKO_FUZZ must be 'short', 'shrink', 'long' or a number of examples, not {_SETTING!r}")
ROUND = 1000
ROUNDS = math.ceil(TOTAL / ROUND)
EXAMPLES = math.ceil(TOTAL / ROUNDS)
_PHASES = tuple(Phase) if _SETTING != "short" else tuple(phase for phase in Phase if phase is not Phase.shrink)

# Inputs here are deliberately large and slow to build: a fuzzer is not a unit test
# that must be quick per example, and a deadline would make a slow machine fail.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
             HealthCheck.large_base_example]

FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    phases=_PHASES,
    deadline=None,
    suppress_health_check=_SUPPRESS,
    # The short run is part of the suite: the same examples every run. The long run
    # explores, and keeps what failed in the example database to replay it first.
    derandomize=not LONG,
    database=hypothesis.settings.default.database if LONG else None,
    print_blob=True,
    # One bug at a time: a shrinking run would otherwise shrink every distinct
    # failure it met, for minutes each.
    report_multiple_bugs=False,
)


@contextlib.contextmanager
def only_raises(*allowed: type[BaseException]) -> Iterator[None]:
    """The block may raise one of ``allowed`` (the module's own error types), nothing else.

    Anything else fails the test with what escaped, so hypothesis shrinks to the
    smallest input that lets it out.
    """
    try:
        yield
    except allowed:
        pass


def _best_time(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def assert_linear(build: Callable[[int], object], parse: Callable[[object], object], *, n: int,
                  factor: int = 10, ratio: float = 20.0, repeats: int = 5, what: str = "") -> None:
    """Parsing an input of size ``factor * n`` must take under ``ratio`` times the size-``n`` input.

    ``build(size)`` makes the input (outside the timing); ``parse`` may raise anything
    the module allows, which the caller wraps. The best of ``repeats`` runs is kept
    on each side, which filters scheduler noise; linear would be ``factor`` times,
    quadratic ``factor**2``: the bound between them is generous on purpose.
    """
    small, large = build(n), build(factor * n)
    # Enough repetitions of the small one that a timer tick does not dominate it.
    inner = 1
    while _best_time(lambda: parse(small), 1) * inner < 2e-3 and inner < 4096:
        inner *= 2

    def run_small() -> None:
        for _ in range(inner):
            parse(small)

    small_time = _best_time(run_small, repeats) / inner
    large_time = _best_time(lambda: parse(large), repeats)
    assert large_time < ratio * small_time, (
        f"{what or 'parse'}: size {factor * n} took {large_time * 1e3:.2f} ms, "
        f"{large_time / small_time:.0f}x size {n} ({small_time * 1e3:.3f} ms): not linear")
