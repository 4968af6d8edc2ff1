"""A long fuzzing campaign (``EKO_FUZZ``, see ``fuzzing.py``) runs each fuzzer in rounds."""

from __future__ import annotations

import pytest

from fuzzing import ROUNDS


@pytest.fixture
def fuzz_round(request):
    """Which round of a long campaign this is (unused by the tests: each round draws anew)."""
    return request.param


def pytest_generate_tests(metafunc):
    if ROUNDS > 1:
        metafunc.fixturenames.append("fuzz_round")
        metafunc.parametrize("fuzz_round", range(ROUNDS), indirect=True, ids=lambda n: f"round{n + 1}")
