"""The shared data beside the checkout (../shared: the labelled pool and camera samples).

Tests that need it skip when it is absent, except under CI (`CI=true`), where a missing
../shared is a failure (see prerequisites.py): a CI run that silently skipped them would prove nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from prerequisites import requires as requires_condition
from prerequisites import unavailable

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def missing(path: Path) -> str:
    return f"{path} is not here (the tests that use ../shared need it beside the checkout)"


def need(path: Path) -> Path:
    """`path` under ../shared; skips the test when it is absent (fails it under CI)."""
    if not path.exists():
        unavailable(missing(path))
    return path


def requires(path: Path) -> pytest.MarkDecorator:
    """A module or test mark: skip when `path` is absent, except under CI, where the test runs and fails."""
    return requires_condition(path.exists(), missing(path))
