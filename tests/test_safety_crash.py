"""Fault injection: SIGKILL a real `--move` run at many distinct points, rerun, and prove by
content hash that no file was lost or duplicated; then undo every run and get the exact tree back.

The kill points come from the actions' test hook: NOTCAT_SORT_TEST_KILL_AFTER_OPS=N makes the CLI
SIGKILL itself right after its Nth filesystem change (a copy written, a rename, a removal). Each
run in the chain is killed after 1 or 2 changes, so the chain stops at every kind of point:
after a partial copy, after it is renamed into place but before the source is removed, after a
duplicate source is removed, and so on, each time on top of the previous crash.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from prerequisites import need_that
from safety_support import (
    KILL_HOOK,
    content_counts,
    image_tree,
    inventory,
    other_filesystem,
    run_cli,
    sample_photos,
)

from notcat_sort.report import ReportWriter, Status, read_report
from notcat_sort.undo import undo


def _tree_with_clashes(tmp_path: Path, out: Path) -> tuple[Path, Counter]:
    """Real images; at the destination, an identical copy of one (so its source is a duplicate)
    and a different image under another one's name (so it must be renamed, not overwritten)."""
    source = image_tree(tmp_path / "photos", 6)
    (source / "notes.jpg").write_text("not an image")  # an error row: must stay untouched
    duplicate, clashing = sorted(source.glob("*.jpg"))[1], sorted((source / "sub").glob("*.jpg"))[0]
    stranger = sample_photos(8)[-1]
    for label in ("cat", "not-cat"):
        (out / label / "sub").mkdir(parents=True)
        shutil.copy2(duplicate, out / label / duplicate.name)
        shutil.copy2(stranger, out / label / "sub" / clashing.name)
    return source, content_counts(out)


@pytest.mark.parametrize("cross_filesystem", [False, True], ids=["same-fs", "cross-fs"])
def test_killed_move_reruns_to_completion_and_undoes_exactly(tmp_path: Path, cross_filesystem: bool) -> None:
    if cross_filesystem:
        other = other_filesystem(tmp_path)
        need_that(other is not None, "/dev/shm is not a separate filesystem here")
        assert other is not None
        out_parent = Path(tempfile.mkdtemp(dir=other, prefix="notcat-crash-"))
    else:
        out_parent = tmp_path
    out = out_parent / "sorted"
    try:
        source, preexisting = _tree_with_clashes(tmp_path, out)
        original_source = inventory(source)
        original_out = inventory(out)
        expected = preexisting + Counter({c: 1 for c in original_source.values() if c not in preexisting})
        reports, kills = [], 0
        for number, kill_after in zip(range(40), itertools.cycle((1, 2))):
            report = tmp_path / f"run-{number}.csv"
            reports.append(report)
            result = run_cli(source, "--move", "--out", out, "-j", "1", "--batch-size", "3", "--report", report,
                             cache=tmp_path / "cache", env={KILL_HOOK: str(kill_after)})
            now = content_counts(source, out)
            assert set(original_source.values()) <= set(now), f"content lost after run {number}"
            if result.returncode != -signal.SIGKILL:
                break
            kills += 1
        assert result.returncode == 1, result.stderr[-2000:]  # 1: notes.jpg is an error row
        assert kills >= 3, "the chain should have crashed several times before finishing"
        assert content_counts(source, out) == expected  # every original exactly once; no partial left
        assert inventory(source) == {p: c for p, c in original_source.items() if p.endswith(b"notes.jpg")}
        final = [row for row in read_report(reports[-1]) if row.path.endswith("notes.jpg")]
        assert final and final[-1].status == Status.ERROR

        for report in reversed(reports):  # undo the last run first, as a person would
            writer = ReportWriter(tmp_path / f"{report.stem}.undo.csv")
            assert all(row.status != Status.ERROR for row in undo(report, writer)), report
            writer.close()
        assert inventory(source) == original_source
        assert inventory(out) == original_out
    finally:
        if cross_filesystem:
            shutil.rmtree(out_parent, ignore_errors=True)
