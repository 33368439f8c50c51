"""File actions: atomic no-replace moves, verified cross-filesystem moves, conflicts, Ctrl-C."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from prerequisites import need_that
from safety_support import (
    CLI,
    KILL_HOOK,
    content_counts,
    image_tree,
    inventory,
    other_filesystem,
    run_cli,
    sample_photos,
    sort_in_process,
    undo_in_process,
)

from notcat_sort.actions import Kind, OnConflict, common, execute, plan
from notcat_sort.actions.common import partial_name, rename_noreplace
from notcat_sort.actions.copy import copy_verified
from notcat_sort.content import sha256_file
from notcat_sort.report import Status, final_rows


def test_same_filesystem_move_is_a_rename_and_undo_restores_it(tmp_path: Path) -> None:
    source = image_tree(tmp_path / "photos", 4)
    before = inventory(source)
    inodes = {os.stat(p).st_ino for p in map(os.fsdecode, before)}
    results = sort_in_process([source], "move", tmp_path / "r.csv")
    assert {r.outcome.status for r in results} == {Status.DONE}
    assert {os.stat(r.outcome.destination).st_ino for r in results} == inodes  # renamed, not copied
    assert sorted(inventory(source).values()) == sorted(before.values())
    undo_in_process(tmp_path / "r.csv")
    assert inventory(source) == before
    assert not any((source / label).exists() for label in ("cat", "not-cat", "unsure"))  # emptied folders tidied


def test_cross_filesystem_move_verifies_the_copy_before_removing_the_source(tmp_path: Path) -> None:
    other = other_filesystem(tmp_path)
    need_that(other is not None, "/dev/shm is not a separate filesystem here")
    assert other is not None
    [image] = sample_photos(1)
    out = Path(tempfile.mkdtemp(dir=other, prefix="notcat-xfs-"))
    try:
        states = []
        for kill_after in (1, 2, 0):  # 0: no kill
            shutil.rmtree(out)
            photos = tmp_path / f"photos{kill_after}"
            photos.mkdir()
            shutil.copy2(image, photos / "a.jpg")
            result = run_cli(photos, "--move", "--out", out, "-j", "1", "--report", tmp_path / f"r{kill_after}.csv",
                             cache=tmp_path / "cache", env={KILL_HOOK: str(kill_after)} if kill_after else {})
            [target] = [p for p in out.rglob("a.jpg")] or [None]
            partials = list(out.rglob("*.notcat-partial"))
            states.append((result.returncode, (photos / "a.jpg").exists(), target is not None, len(partials)))
            for copy in [target, *partials]:
                if copy is not None:
                    assert sha256_file(copy) == sha256_file(image)
        assert states == [
            (-signal.SIGKILL, True, False, 1),  # copied to a hidden temporary name, fsynced; source kept
            (-signal.SIGKILL, True, True, 0),  # verified and renamed into place; source still kept
            (0, False, True, 0),  # only then the source is removed
        ]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_cross_filesystem_move_keeps_the_source_when_verification_fails(tmp_path: Path) -> None:
    other = other_filesystem(tmp_path)
    need_that(other is not None, "/dev/shm is not a separate filesystem here")
    assert other is not None
    source = tmp_path / "a.jpg"
    shutil.copy2(sample_photos(1)[0], source)
    out = Path(tempfile.mkdtemp(dir=other, prefix="notcat-xfs-"))
    try:
        planned = plan("move", source, out / "cat" / "a.jpg", "0" * 64, OnConflict.RENAME)  # not its hash
        with pytest.raises(OSError, match="changed since it was classified"):
            execute(planned)
        assert source.exists() and list(out.rglob("*")) == [out / "cat"]  # no copy, no partial left
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def clash(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A source, a destination already holding identical bytes, and one holding different bytes."""
    first, second = sample_photos(2)
    source = tmp_path / "in" / "a.jpg"
    source.parent.mkdir()
    shutil.copy2(first, source)
    same, different = tmp_path / "same" / "a.jpg", tmp_path / "different" / "a.jpg"
    for path, content in ((same, first), (different, second)):
        path.parent.mkdir()
        shutil.copy2(content, path)
    return source, same, different


def test_identical_destination_means_already_sorted(clash) -> None:
    source, same, _ = clash
    digest = sha256_file(source)
    for action in ("copy", "link"):
        planned = plan(action, source, same, digest, OnConflict.RENAME)
        assert (planned.kind, execute(planned).status) == (Kind.SKIP, Status.SKIPPED)
    planned = plan("move", source, same, digest, OnConflict.RENAME)
    assert execute(planned).status == Status.DUPLICATE_REMOVED
    assert not source.exists() and sha256_file(same) == digest


def test_duplicate_source_is_kept_if_the_copy_changed_since_planning(clash) -> None:
    source, same, _ = clash
    planned = plan("move", source, same, sha256_file(source), OnConflict.RENAME)
    same.write_bytes(b"edited meanwhile")
    with pytest.raises(OSError, match="no longer holds the same bytes"):
        execute(planned)
    assert source.exists()


@pytest.mark.parametrize("action", ["move", "copy", "link"])
def test_different_content_gets_a_new_name_or_is_skipped(clash, action: str) -> None:
    source, _, different = clash
    digest, theirs = sha256_file(source), sha256_file(different)
    skipped = plan(action, source, different, digest, OnConflict.SKIP)
    assert execute(skipped).status == Status.SKIPPED and source.exists()
    outcome = execute(plan(action, source, different, digest, OnConflict.RENAME))
    assert outcome.destination == different.with_name("a (1).jpg")
    assert sha256_file(outcome.destination) == digest and sha256_file(different) == theirs


def test_a_name_taken_after_planning_is_never_overwritten(clash, monkeypatch) -> None:
    source, _, different = clash
    target = different.with_name("b.jpg")
    for fallback in (False, True):  # renameat2, then the hard-link fallback
        if fallback:
            monkeypatch.setattr(common, "_renameat2", None)
        planned = plan("move", source, target, sha256_file(source), OnConflict.RENAME)
        target.write_bytes(b"someone else's file")
        with pytest.raises(FileExistsError):
            execute(planned)
        assert target.read_bytes() == b"someone else's file" and source.exists()
        target.unlink()


@pytest.mark.parametrize("in_kernel", [True, False], ids=["copy_file_range", "read-write"])
def test_a_copy_is_checked_against_the_classified_content(tmp_path: Path, monkeypatch, in_kernel: bool) -> None:
    """Whether the kernel copies (copy_file_range) or this process does (elsewhere, e.g. macOS),
    the copy read back from disk must hash to the classified digest or it is not put in place."""
    if not in_kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    source = tmp_path / "a.jpg"
    shutil.copy2(sample_photos(1)[0], source)
    out = tmp_path / "out"
    out.mkdir()
    copy_verified(source, out / "classified.jpg", sha256_file(source))
    copy_verified(source, out / "unclassified.jpg", None)  # checked against the bytes as read
    for copy in (out / "classified.jpg", out / "unclassified.jpg"):
        assert copy.read_bytes() == source.read_bytes()
        assert copy.stat().st_mtime_ns == source.stat().st_mtime_ns
    with pytest.raises(OSError, match="source changed since it was classified"):
        copy_verified(source, out / "stale.jpg", "0" * 64)
    assert sorted(p.name for p in out.iterdir()) == ["classified.jpg", "unclassified.jpg"]  # no partial left


def test_rename_noreplace_renames(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"x" and not (tmp_path / "a").exists()
    (tmp_path / "c").write_bytes(b"y")
    with pytest.raises(OSError) as caught:
        rename_noreplace(tmp_path / "c", tmp_path / "b")
    assert caught.value.errno == errno.EEXIST and (tmp_path / "b").read_bytes() == b"x"


def test_a_stale_partial_from_a_crash_is_replaced_not_kept(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    shutil.copy2(sample_photos(1)[0], source)
    target = tmp_path / "out" / "a.jpg"
    target.parent.mkdir()
    partial_name(target).write_bytes(b"half a cop")
    execute(plan("copy", source, target, sha256_file(source), OnConflict.RENAME))
    assert sha256_file(target) == sha256_file(source) and not partial_name(target).exists()


def test_ctrl_c_finishes_the_file_in_hand_and_writes_the_report(tmp_path: Path) -> None:
    source = image_tree(tmp_path / "photos", 24)
    before = content_counts(source)
    report = tmp_path / "r.csv"
    process = subprocess.Popen(
        [CLI, source, "--move", "-j", "1", "--batch-size", "1", "--report", report],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not any((source / label).is_dir() for label in ("cat", "not-cat")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()[-2000:]
    rows = final_rows(report)
    statuses = {row.status for row in rows}
    assert statuses <= {Status.DONE, Status.INTERRUPTED} and Status.STARTED not in statuses
    assert sum(row.status == Status.DONE for row in rows) < 24  # it did stop early
    assert content_counts(source) == before
