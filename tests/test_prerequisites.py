"""A missing prerequisite (a tool, an extra) skips a test here and fails it under CI=true, in every
test module: each asks prerequisites.py, none skips on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SKIPPING_CALLS = {"skip", "importorskip", "skipif"}  # pytest.skip(...), pytest.importorskip(...), pytest.mark.skipif(...)


def _skips(module: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in SKIPPING_CALLS:
            found.append(f"{module.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_test_module_decides_on_its_own_to_skip() -> None:
    modules = [path for path in sorted(TESTS.glob("*.py")) if path.name != "prerequisites.py"]
    assert [skip for module in modules for skip in _skips(module)] == []


# Each: (test module, how to take one prerequisite away, what the failure names).
HIDE_EXIFTOOL = {"PATH": str(Path(sys.executable).parent)}  # the venv's scripts only: no exiftool
CASES = [
    ("test_tag.py", HIDE_EXIFTOOL, None, "exiftool is not installed"),
    ("test_serve.py", {}, "starlette", "starlette is not installed (the serve extra"),
    ("test_cluster.py", {}, "distributed", "distributed is not installed (the cluster extra"),
]


def _pytest_without(module: str, env: dict[str, str], hidden: str | None, ci: bool, tmp: Path) -> subprocess.CompletedProcess[str]:
    """pytest on one test module (whose every test needs the prerequisite) in a subprocess, with a module made unimportable (as when its extra
    is not installed) or a PATH without a tool."""
    hide = f"sys.modules[{hidden!r}] = None; " if hidden else ""
    code = f"import sys; {hide}import pytest; sys.exit(pytest.main({[str(TESTS / module), '-x', '-q', '-p', 'no:cacheprovider']!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "CI": "true" if ci else "false",
                               "XDG_CACHE_HOME": str(tmp / "cache"), "XDG_DATA_HOME": str(tmp / "data")})


@pytest.mark.parametrize("module, env, hidden, named", CASES, ids=[case[0] for case in CASES])
def test_a_missing_prerequisite_skips_here_and_fails_under_ci(tmp_path: Path, module: str, env: dict[str, str],
                                                               hidden: str | None, named: str) -> None:
    local = _pytest_without(module, env, hidden, ci=False, tmp=tmp_path)
    assert local.returncode in (0, 5) and "skipped" in local.stdout and "passed" not in local.stdout, local.stdout[-3000:]
    ci = _pytest_without(module, env, hidden, ci=True, tmp=tmp_path)
    assert ci.returncode != 0 and f"CI=true: {named}" in ci.stdout, ci.stdout[-3000:]
