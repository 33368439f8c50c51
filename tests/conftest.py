"""Shared fixtures for tests that run the installed `notcat-sort` console script on real files.

    def test_something(run_cli, tmp_path, shared):
        photos = tmp_path / "photos"; ...copy images from `shared` into it...
        result = run_cli(photos, "--copy", "-j", "1")
        assert result.returncode == 0
        rows = result.rows()  # the CSV report, one dict per file
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prerequisites import IN_CI
from shared_data import SHARED, missing, need

from notcat_sort.model import card_path, default_model_path

CLI = Path(sys.executable).parent / "notcat-sort"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI a missing ../shared fails the run up front, instead of skipping most of it."""
    if IN_CI and not (SHARED / "datasets" / "catnotcat").is_dir():
        pytest.exit(f"CI=true: {missing(SHARED / 'datasets' / 'catnotcat')}", returncode=1)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared data folder; tests that need it skip when it is absent (fail under CI)."""
    need(SHARED / "datasets" / "catnotcat")
    return SHARED


@pytest.fixture(scope="session")
def cli() -> Path:
    """The installed console script (not `python -m`), as a user runs it."""
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: install the project (pip install -e '.[test]') into this venv")
    return CLI


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """The shipped model and its card, copied into tmp for a test that alters one of them."""
    model = tmp_path / "model-copy" / default_model_path().name
    model.parent.mkdir()
    shutil.copyfile(default_model_path(), model)
    shutil.copyfile(card_path(default_model_path()), card_path(model))
    return model


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment for CLI subprocesses: the prediction cache and dry-run reports in tmp."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "XDG_DATA_HOME": str(tmp_path / "xdg-data")}


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    report_arg: str | None = None  # the value given to --report, if any

    @property
    def report_path(self) -> Path | None:
        """The report file: as given with --report, else as the run names it on stderr (`report: PATH`)."""
        if self.report_arg is not None:
            return None if self.report_arg == "-" else Path(self.report_arg)
        found = re.findall(r"^report: (.+)$", self.stderr, flags=re.MULTILINE)
        return Path(found[-1]) if found else None

    def rows(self) -> list[dict[str, str]]:
        """The report as one dict per row: from stdout with `--report -`, else from its file."""
        if self.report_arg == "-":
            return read_csv(self.stdout)
        if self.report_path is None:
            raise AssertionError(f"the run named no report; stderr:\n{self.stderr}")
        return read_csv(self.report_path.read_text(encoding="utf-8"))


@pytest.fixture
def run_cli(cli: Path, cli_env: dict[str, str], tmp_path: Path):
    """`run_cli(*args, cwd=None, timeout=120)`: run notcat-sort, return a CliRun.

    stdin is closed and stdout/stderr are pipes, as in cron or CI, so the plain view is used."""

    def run(*args: object, cwd: Path | None = None, timeout: float = 120) -> CliRun:
        done = subprocess.run(
            [str(cli), *map(str, args)], cwd=cwd or tmp_path, env=cli_env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )
        words = list(map(str, args))
        report = words[words.index("--report") + 1] if "--report" in words[:-1] else None
        if report not in (None, "-"):
            report = str((cwd or tmp_path) / report)  # as the command saw it
        return CliRun(done.returncode, done.stdout, done.stderr, report)

    return run
