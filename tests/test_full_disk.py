"""A destination that fills up, or is read-only, on real small filesystems (tmpfs; needs root).

Wanted, through the installed command: exit 1 and no traceback; an `error` row saying the
destination is full (or a read-only file system, naming the folder) for each file that could
not be placed, and no further try on that filesystem once it is full; the journal never lost
(a report on the full disk goes on in the data folder, and says where); no partial or temporary
file left; every photo present exactly once; and an `--undo` that puts back all of it, or,
when it cannot write its own record, changes nothing and says why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conftest import read_csv
from fault_support import fill, remount, tmpfs
from photos import photos
from safety_support import content_counts, inventory

from notcat_sort.actions import PLACING_ACTIONS
from notcat_sort.pipeline import ACTION_THREADS

FULL = re.compile(r"the destination \S+ is full \(No space left on device\)")


def _library(folder: Path, count: int, pad: int = 0) -> Path:
    """`count` real JPEGs, padded with `pad` random bytes after their end (which decoders ignore)."""
    folder.mkdir()
    for photo in photos(count):
        (folder / photo.name).write_bytes(photo.read_bytes() + os.urandom(pad))
    return folder


def _hidden(*roots: Path) -> list[Path]:
    """Partial copies, temporary reports: anything hidden."""
    return [path for root in roots for path in root.rglob(".*")]


def _final(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    final: dict[str, dict[str, str]] = {}
    for row in rows:
        final[row["path"]] = row
    return final


def _check_full(run, source: Path, action: str) -> dict[str, dict[str, str]]:
    """What every run onto a full disk must show; the final rows by path."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    rows = _final(run.rows())
    if action == "copy":
        assert sorted(rows) == sorted(str(path) for path in source.iterdir()), "every photo is named in the report"
    failed = [row for row in rows.values() if row["status"] == "error"]
    assert failed and all(FULL.search(row["error"]) for row in failed), failed[:3]
    tried = [row for row in failed if row["error"].startswith(f"{action} failed")]
    assert len(tried) <= ACTION_THREADS, "once full, the disk is not tried again file by file"
    assert len(failed) > len(tried), [row["error"] for row in failed]
    assert {row["status"] for row in rows.values()} <= {"done", "error"}
    return rows


def test_copy_onto_a_disk_that_fills_up(run_cli, tmp_path: Path) -> None:
    source = _library(tmp_path / "photos", 24, pad=100_000)
    before = inventory(source)
    with tmpfs(tmp_path / "small", "1m") as small:
        run = run_cli(source, "--copy", "--out", small, "-j", "1")  # the report too goes to the small disk
        rows = _check_full(run, source, "copy")
        assert "done" in {row["status"] for row in rows.values()}, "what fitted was copied"
        assert run.report_path is not None and run.report_path.parent == small
        assert not _hidden(small, source), "no partial copy, no temporary report"
        assert inventory(source) == before
        copies = {path: digest for path, digest in inventory(small).items() if b"/filler" not in path}
        done = [row for row in rows.values() if row["status"] == "done"]
        assert sorted(copies.values()) == sorted(bytes.fromhex(row["sha256"]) for row in done)
        assert max(Counter(copies.values()).values()) == 1, "each photo copied once"


def test_the_report_goes_on_in_the_data_folder_when_its_disk_is_full(run_cli, cli_env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    source = _library(tmp_path / "photos", 40)
    before = inventory(source)
    data_reports = Path(cli_env["XDG_DATA_HOME"]) / "notcat-sort" / "reports"
    with tmpfs(tmp_path / "small", "1m") as small:
        fill(small, leave=8192)  # the report's first rows fit, the rest do not
        run = run_cli(source, "--copy", "--out", small, "-j", "1")
        _check_full(run, source, "copy")
        assert run.report_path is not None and run.report_path.parent == data_reports, run.stderr
        assert f"it goes on, with every row so far, in {run.report_path}" in run.stderr
        assert not list(small.glob("*.csv")), "the cut report is not left on the full disk"
        assert not _hidden(small, source)
        undone = run_cli("--undo", run.report_path)
        assert undone.returncode == 0, undone.stderr
        assert inventory(source) == before and set(inventory(small)) == {bytes(small / "filler")}


def test_move_onto_a_full_disk_keeps_every_photo_once_and_undo_puts_all_back(run_cli, tmp_path: Path) -> None:
    source = _library(tmp_path / "photos", 24, pad=100_000)
    before, contents = inventory(source), content_counts(source)
    report = tmp_path / "elsewhere" / "move.csv"
    with tmpfs(tmp_path / "small", "1m") as small:
        run = run_cli(source, "--move", "--out", small, "-j", "1", "--report", report)
        rows = _check_full(run, source, "move")
        assert len(rows) == 24, "every photo is named in the report"
        assert "done" in {row["status"] for row in rows.values()}, "what fitted was moved"
        assert content_counts(source, small) == contents, "every photo present exactly once"
        assert not _hidden(small, source)
        undone = run_cli("--undo", report)
        assert undone.returncode == 0, undone.stderr
        assert inventory(source) == before, "every photo back where it was, byte for byte"
        assert not inventory(small)


def test_an_undo_that_cannot_write_its_record_changes_nothing(run_cli, cli_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    source = _library(tmp_path / "photos", 6)
    out = tmp_path / "out"
    with tmpfs(tmp_path / "reports", "1m") as reports:
        report = reports / "copy.csv"
        assert run_cli(source, "--copy", "--out", out, "-j", "1", "--report", report).returncode == 0
        copies = inventory(out)
        assert len(copies) == 6

        # Its folder is read-only now, and so is the data folder: nowhere to write the undo record.
        cli_env["XDG_DATA_HOME"] = str(reports / "data")
        remount(reports, read_only=True)
        refused = run_cli("--undo", report)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "cannot write its record" in refused.stderr and "nothing was undone" in refused.stderr
        assert inventory(out) == copies

        # Writable but full: the record goes on in the data folder, and the undo is done.
        remount(reports, read_only=False)
        cli_env["XDG_DATA_HOME"] = str(tmp_path / "data")
        fill(reports, leave=0)
        undone = run_cli("--undo", report)
        assert undone.returncode == 0 and "Traceback" not in undone.stderr, undone.stderr
        assert "it goes on, with every row so far, in" in undone.stderr
        assert not inventory(out) and not _hidden(reports)
        [record] = (tmp_path / "data" / "notcat-sort" / "reports").glob("*.undo.csv")
        assert {row["status"] for row in read_csv(record.read_text())} == {"undone"}


def test_a_read_only_destination_is_called_read_only(run_cli, tmp_path: Path) -> None:
    source = _library(tmp_path / "photos", 6)
    with tmpfs(tmp_path / "readonly", "1m", read_only=True) as readonly:
        refused = run_cli(source, "--copy", "--out", readonly / "sorted")
        assert refused.returncode == 2, refused.stderr
        assert f"cannot write in {readonly}: it is on a read-only file system" in refused.stderr
        assert "permission denied" not in refused.stderr


def test_label_folders_on_a_read_only_filesystem_fail_each_file_once(run_cli, tmp_path: Path) -> None:
    """--out is writable, but its label folders are read-only mounts (a filesystem that went
    read-only during the run looks the same): each file's row names the folder and says why."""
    source = _library(tmp_path / "photos", 12)
    before = inventory(source)
    out = tmp_path / "out"
    with tmpfs(out / "cat", "1m", read_only=True), tmpfs(out / "not-cat", "1m", read_only=True):
        for action in sorted(PLACING_ACTIONS):
            run = run_cli(source, f"--{action}", "--out", out, "-j", "1", "--report", tmp_path / f"{action}.csv")
            assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
            rows = list(_final(run.rows()).values())
            assert len(rows) == 12 and {row["status"] for row in rows} == {"error"}
            label_folders = {str(out / "cat"), str(out / "not-cat")}
            for row in rows:
                folder = re.search(r"cannot write in (\S+): it is on a read-only file system", row["error"])
                assert folder and folder.group(1) in label_folders, row["error"]
            assert sum(row["error"].startswith(f"{action} failed") for row in rows) <= 2 * ACTION_THREADS
            assert inventory(source) == before
    shutil.rmtree(out, ignore_errors=True)


class _Watcher:
    """The installed CLI watching in a subprocess, stopped as systemd stops it (SIGTERM) on leaving."""

    def __init__(self, command: list[str], env: dict[str, str], report: Path) -> None:
        self.report = report
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def until(self, wanted: Callable[[list[dict[str, str]]], bool], seconds: float = 120) -> list[dict[str, str]]:
        """The report's rows (in order) once `wanted` holds for them."""
        deadline = time.monotonic() + seconds
        while not (self.report.exists() and wanted(rows := read_csv(self.report.read_text()))):
            assert self.process.poll() is None and time.monotonic() < deadline, "the watcher did not get there"
            time.sleep(0.05)
        return rows

    def __enter__(self) -> _Watcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr


def _all_tried(rows: list[dict[str, str]]) -> bool:
    final = _final(rows)
    return len(final) == 4 and all(row["status"] != "started" for row in final.values())


def _all_done(rows: list[dict[str, str]]) -> bool:
    return {row["status"] for row in _final(rows).values()} == {"done"}


def _watch_command(cli: Path, inbox: Path, out: Path, report: Path, settle: float) -> list[str]:
    return [str(cli), "--watch", str(inbox), "--copy", "--out", str(out), "--settle", str(settle), "-j", "1",
            "--report", str(report)]


def test_a_watcher_tries_files_that_found_the_disk_full_again_at_its_next_start(cli: Path, cli_env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    inbox = _library(tmp_path / "inbox", 4)
    before = inventory(inbox)
    with tmpfs(tmp_path / "small", "1m") as small:
        fill(small, leave=0)
        report = tmp_path / "watch.csv"
        command = _watch_command(cli, inbox, small, report, settle=0.5)
        with _Watcher(command, cli_env, report) as watcher:
            full = _final(watcher.until(_all_tried))
        assert all(FULL.search(row["error"]) for row in full.values()), full
        (small / "filler").unlink()  # room again
        with _Watcher(command, cli_env, report) as watcher:
            watcher.until(_all_done)
        assert sorted(inventory(small).values()) == sorted(before.values())


def test_a_running_watcher_sorts_the_files_that_found_the_disk_full_once_there_is_room(
        cli: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    """Without a restart: one file is tried again after a wait (20 settle times, then twice as long
    each time), and once it goes through, all the others; a disk that stays full gets one try per wait."""
    inbox = _library(tmp_path / "inbox", 4)
    before = inventory(inbox)
    with tmpfs(tmp_path / "small", "1m") as small:
        fill(small, leave=0)
        report = tmp_path / "watch.csv"

        def errors(rows: list[dict[str, str]]) -> list[dict[str, str]]:
            return [row for row in rows if row["status"] == "error"]

        with _Watcher(_watch_command(cli, inbox, small, report, settle=0.1), cli_env, report) as watcher:
            first = errors(watcher.until(_all_tried))
            assert len(first) == 4 and all(FULL.search(row["error"]) for row in first), first
            tried_again = errors(watcher.until(lambda rows: len(errors(rows)) >= 6))
            assert len(tried_again) == 6, "still full: one file is tried per wait, not all of them"
            assert all(FULL.search(row["error"]) for row in tried_again)
            (small / "filler").unlink()  # room again, while it watches
            watcher.until(_all_done, seconds=60)
        assert sorted(inventory(small).values()) == sorted(before.values())
