"""The shared data beside the checkout (../shared: the labelled pool and camera samples).

Tests that need it skip when it is absent, except under CI (`CI=true`), where a missing
../shared is a failure: a CI run that silently skipped them would prove nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(path: Path) -> str:
    return f"{path} is not here (the tests that use ../shared need it beside the checkout)"


def need(path: Path) -> Path:
    """`path` under ../shared; skips the test when it is absent (fails it under CI)."""
    if not path.exists():
        if IN_CI:
            pytest.fail(missing(path))
        pytest.skip(missing(path))
    return path


def requires(path: Path) -> pytest.MarkDecorator:
    """A module or test mark: skip when `path` is absent, except under CI, where the test runs and fails."""
    return pytest.mark.skipif(not path.exists() and not IN_CI, reason=missing(path))
