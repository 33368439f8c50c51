"""Helpers shared by the safety tests: image trees, content inventories, CLI runs.

The images are generated (tests/photos.py), so these tests run from a bare checkout too."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from photos import photos

CLI = Path(sys.executable).parent / "notcat-sort"
KILL_HOOK = "NOTCAT_SORT_TEST_KILL_AFTER_OPS"


def sample_photos(count: int) -> list[Path]:
    """`count` distinct small JPEGs to copy from."""
    return photos(count)


def image_tree(root: Path, count: int) -> Path:
    """`count` images, half in a subfolder, one with a space in its name."""
    for number, image in enumerate(sample_photos(count)):
        folder = root / ("sub" if number % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, folder / (f"photo {number}.jpg" if number == 0 else image.name))
    return root


def inventory(*roots: Path) -> dict[bytes, bytes]:
    """Every regular file under `roots` (hidden ones included), path bytes -> sha256 of content."""
    files = {}
    for root in roots:
        for folder, _, names in os.walk(os.fsencode(root)):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path) and not name.endswith(b".csv"):
                    with open(path, "rb") as handle:
                        files[path] = hashlib.sha256(handle.read()).digest()
    return files


def content_counts(*roots: Path) -> Counter:
    return Counter(inventory(*roots).values())


def run_cli(*args: object, cache: Path, env: dict[str, str] | None = None, user: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """The installed console script, with its own cache; as `user` via setpriv when given."""
    command = [str(CLI), *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user if user != 'nobody' else 'nogroup'}",
                   "--clear-groups", *command]
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache), "XDG_DATA_HOME": str(cache / "data"), **(env or {})}
    result = subprocess.run(command, capture_output=True, env=environment, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


def other_filesystem(than: Path) -> Path | None:
    """/dev/shm when it is a different filesystem from `than`, for real cross-filesystem moves."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(than).st_dev:
        return shm
    return None


def sort_in_process(roots: list[Path], action: str | None, report: Path, out: Path | None = None,
                    on_conflict: str = "rename"):
    """The real pipeline and model, in this process with one job: fast enough for many examples."""
    from notcat_sort.actions import Action, OnConflict
    from notcat_sort.classify import ClassifySettings
    from notcat_sort.decide import Policy
    from notcat_sort.model import default_model_path, load_card
    from notcat_sort.pipeline import SortSettings, sort_paths
    from notcat_sort.report import ReportWriter

    card = load_card(default_model_path())
    settings = SortSettings(ClassifySettings(card, jobs=1, batch_size=4), Policy(card.threshold),
                            action=Action(action) if action else None,
                            out=out, on_conflict=OnConflict(on_conflict))
    writer = ReportWriter(report)
    try:
        return list(sort_paths(roots, settings, writer))
    finally:
        writer.close()


def undo_in_process(report: Path):
    from notcat_sort.report import ReportWriter
    from notcat_sort.undo import undo, undo_report_path

    writer = ReportWriter(undo_report_path(report))
    try:
        return list(undo(report, writer))
    finally:
        writer.close()
