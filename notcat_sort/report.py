"""The CSV report, which is also the journal that makes a run undoable and resumable.

Before a file is touched, a `started` row naming the source and destination is appended and
flushed to disk; after, a row with the outcome. A run that dies leaves a valid CSV whose last
row per file says how far it got. A clean finish compacts the report to one row per file.
Names are written with `surrogateescape`, so file names that are not valid UTF-8 round-trip
byte for byte and `--undo` can find them again.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from notcat_sort.pipeline import Result


class Status(str, Enum):
    """A report row's status: what happened to the file (or, for journal rows, is about to)."""

    PLANNED = "planned"  # dry run: what would happen
    STARTED = "started"  # journal: about to put the file at `destination`
    STARTED_REMOVE_DUPLICATE = "started-remove-duplicate"  # journal: about to remove a moved file's duplicate source
    DONE = "done"
    DUPLICATE_REMOVED = "duplicate-removed"  # move: an identical copy was already at `destination`
    SKIPPED = "skipped"  # nothing to do, e.g. already sorted
    STARTED_REMOVE_FOLDER = "started-remove-folder"  # journal: about to remove a folder a move emptied
    FOLDER_REMOVED = "folder-removed"  # --remove-emptied-folders: `path` is a source folder the move emptied
    INTERRUPTED = "interrupted"  # a stop was asked for before this file was touched
    UNDONE = "undone"  # --undo put it back
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Row:
    path: str
    label: str
    p_cat: str
    action: str
    destination: str
    status: str
    error: str
    sha256: str = ""
    cat_id: str = ""  # --group-cats: which cat (or `unknown`)
    source: str = ""  # which input decided: `thumbnail` (EXIF), `preview` (a RAW's JPEG) or `image`


FIELDS = [field.name for field in fields(Row)]


def _open(path: Path, mode: str = "r") -> IO[str]:
    """Names and text as bytes would have them: file names that are not UTF-8 round-trip."""
    return open(path, mode, encoding="utf-8", errors="surrogateescape", newline="")


def run_key(report: Path) -> str:
    """What names a run in the records kept outside its report (tag undo): the report's path."""
    return os.path.abspath(report)


def format_p(p_cat: float | None) -> str:
    return "" if p_cat is None else f"{p_cat:.4f}"


def image_row(result: Result, action: str) -> Row:
    """The report row of one image's result under `action` ("none" for a report-only run)."""
    prediction, outcome = result.prediction, result.outcome
    return Row(
        path=str(prediction.candidate.path),
        label=result.label.value,
        p_cat=format_p(prediction.p_cat),
        action=action,
        destination=str(outcome.destination or ""),
        status=outcome.status,
        error=prediction.error or outcome.error,
        sha256=prediction.sha256 or "",
        cat_id=result.cat,
        source=prediction.source.value if prediction.source else "",
    )


def rows_for(result: Result, action: str) -> list[Row]:
    """The image's row, then one per companion carried with it."""
    image = image_row(result, action)
    return [image] + [
        replace(image, path=str(companion.path), destination=str(companion.outcome.destination or ""),
                status=companion.outcome.status, error=companion.outcome.error, sha256=companion.sha256)
        for companion in result.companions
    ]


class ReportWriter:
    """Append-only CSV writer; `write(..., durable=True)` fsyncs, for journal entries."""

    def __init__(self, path: Path | None, copy_to_stdout: bool = False) -> None:
        """`path=None` streams to stdout only (`--report -` of a run that changes nothing);
        `copy_to_stdout` also streams the final rows there while the file keeps the journal."""
        self.path = path
        self.journalled = False  # a journal row was written: the run set out to change a file
        self._stdout = _csv_writer(sys.stdout) if path is None or copy_to_stdout else None
        self._handle: IO[str] | None = None
        self._csv: csv.DictWriter | None = None
        new = True
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            if not new and _is_regular(path) and not _is_report(path):
                raise FileExistsError(errno.EEXIST, "exists and is not a notcat-sort report", str(path))
            self._handle = _open(path, "a")
            self._csv = _csv_writer(self._handle, header=new)
        # One row per file already, unless journal rows are written or an earlier run's are there.
        self._needs_compacting = not new

    def write(self, rows: Iterable[Row], durable: bool = False) -> None:
        for row in rows:
            record = vars(row)  # flat string fields: no need for asdict's deep copy
            if row.status.startswith(Status.STARTED):
                self.journalled = self._needs_compacting = True
            elif self._stdout is not None:  # stdout can be neither fsynced nor compacted: only final rows
                self._stdout.writerow(record)
            if self._csv is not None:
                self._csv.writerow(record)
        if self._stdout is not None:
            sys.stdout.flush()
        if self._handle is not None:
            self._handle.flush()
            if durable:
                os.fsync(self._handle.fileno())

    def close(self, compact: bool = True) -> None:
        if self._stdout is not None:
            sys.stdout.flush()
        if self._handle is None or self.path is None:
            return
        self._handle.close()
        if compact and self._needs_compacting and _is_regular(self.path):  # never replace /dev/null, a FIFO or a symlink with a file
            compact_report(self.path)


def _csv_writer(handle: IO[str], header: bool = True) -> csv.DictWriter:
    writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
        handle.flush()
    return writer


def _is_regular(path: Path) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)


def _is_report(path: Path) -> bool:
    """Appending to a report resumes it; appending to anything else would rewrite it on compaction."""
    with _open(path) as handle:
        return handle.readline().startswith(",".join(FIELDS[:2]) + ",")


def read_report(path: Path) -> Iterator[Row]:
    with _open(path) as handle:
        for record in csv.DictReader(handle):
            yield Row(**{name: record.get(name) or "" for name in FIELDS})


def final_rows(path: Path) -> list[Row]:
    """The last row recorded for each file, in first-seen order."""
    latest: dict[str, Row] = {}
    for row in read_report(path):
        latest[row.path] = row
    return list(latest.values())


def compact_report(path: Path) -> None:
    """Rewrite the report with one row per file, atomically."""
    rows = final_rows(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with _open(temporary, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(vars(row) for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
