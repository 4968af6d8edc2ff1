"""Fixtures shared across the suite."""

from __future__ import annotations

import pytest

from server_helpers import build_cache


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory):
    """The whole phrase catalogue rendered once per test session (espeak-ng, offline)."""
    return build_cache(tmp_path_factory.mktemp("phrase-cache"))
