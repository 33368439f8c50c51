"""What a test needs from the machine (a tool, an extra, root, a tmpfs, a namespace, ../shared):
the one place that decides whether its absence skips the test or fails it.

Locally a missing prerequisite skips, so that a checkout without exiftool or the serve extra still
runs the rest. Under CI (`CI=true`) it fails: `.ci/run` installs every one of them, so a skip there
is a broken install that must turn the run red, not a green run that proved less than it says.
Tests call these instead of `pytest.skip`, `pytest.importorskip` or `pytest.mark.skipif`
(tests/test_prerequisites.py checks that none does)."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test (or the module, when called at import) for want of `reason`; fail it under CI."""
    if IN_CI:
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_that(condition: bool, reason: str) -> None:
    """Go on when `condition` holds; else `unavailable(reason)`."""
    if not condition:
        unavailable(reason)


def need_module(name: str, extra: str) -> ModuleType:
    """The module `name`, which `extra` (e.g. "the serve extra: pip install '.[serve]'") installs."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        unavailable(f"{name} is not installed ({extra}): {error}")


def need_tool(name: str, package: str) -> str:
    """The path of the command `name`, which the Debian package `package` installs."""
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install {package})")
    return found


def requires(condition: bool, reason: str) -> pytest.MarkDecorator:
    """A module or test mark for a prerequisite known at import: skip without it, except under CI,
    where the test runs and its own `need...` call (or its first use of the thing) fails it."""
    return pytest.mark.skipif(not condition and not IN_CI, reason=reason)
