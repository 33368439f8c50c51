"""Helpers for the fault tests: the test-only fault hooks for CLI subprocesses, and real small
filesystems (tmpfs), which need root: without it they skip, and under CI=true they fail (prerequisites.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prerequisites import unavailable

HOOKS = Path(__file__).parent / "fault_hooks"  # its sitecustomize.py injects the faults


def with_faults(env: dict[str, str], **faults: str) -> dict[str, str]:
    """`env` for a subprocess that loads the fault hooks, with the faults given (see fault_hooks)."""
    path = os.pathsep.join(part for part in (str(HOOKS), env.get("PYTHONPATH", "")) if part)
    return {**env, "PYTHONPATH": path, **faults}


@contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real filesystem of `size` (e.g. "1m") mounted on `folder` for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, read_only: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(folder)], check=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` up to `leave` free bytes, with one file."""
    stats = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(max(0, stats.f_bavail * stats.f_frsize - leave)))
