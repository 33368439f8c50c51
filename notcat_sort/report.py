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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TextIO


class Status:
    PLANNED = "planned"  # dry run: what would happen
    STARTED = "started"  # journal: about to put the file at `destination`
    STARTED_REMOVE_DUPLICATE = "started-remove-duplicate"  # journal: about to remove a moved file's duplicate source
    DONE = "done"
    DUPLICATE_REMOVED = "duplicate-removed"  # move: an identical copy was already at `destination`
    SKIPPED = "skipped"  # nothing to do, e.g. already sorted
    UNDONE = "undone"  # --undo put it back
    ERROR = "error"


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


FIELDS = [field.name for field in fields(Row)]
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


def format_p(p_cat: float | None) -> str:
    return "" if p_cat is None else f"{p_cat:.4f}"


class ReportWriter:
    """Append-only CSV writer; `write(..., durable=True)` fsyncs, for journal entries."""

    def __init__(self, path: Path | None) -> None:
        """`path=None` streams to stdout (`--report -`)."""
        self.path = path
        self._handle: TextIO
        if path is None:
            import sys

            self._handle = sys.stdout
            new = True
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            if not new and _is_regular(path) and not _is_report(path):
                raise FileExistsError(errno.EEXIST, "exists and is not a notcat-sort report", str(path))
            self._handle = open(path, "a", **_ENCODING)
        self._csv = csv.DictWriter(self._handle, fieldnames=FIELDS, lineterminator="\n")
        # One row per file already, unless journal rows are written or an earlier run's are there.
        self._needs_compacting = not new
        if new:
            self._csv.writeheader()
            self._handle.flush()

    def write(self, rows: Iterable[Row], durable: bool = False) -> None:
        for row in rows:
            if row.status.startswith(Status.STARTED):
                if self.path is None:
                    continue  # journal rows: stdout can be neither fsynced nor compacted, so only final rows
                self._needs_compacting = True
            self._csv.writerow(vars(row))  # flat string fields: no need for asdict's deep copy
        self._handle.flush()
        if durable and self.path is not None:
            os.fsync(self._handle.fileno())

    def close(self, compact: bool = True) -> None:
        if self.path is None:
            self._handle.flush()
            return
        self._handle.close()
        if compact and self._needs_compacting and _is_regular(self.path):  # never replace /dev/null, a FIFO or a symlink with a file
            compact_report(self.path)


def _is_regular(path: Path) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)


def _is_report(path: Path) -> bool:
    """Appending to a report resumes it; appending to anything else would rewrite it on compaction."""
    with open(path, **_ENCODING) as handle:
        return handle.readline().startswith(",".join(FIELDS[:2]) + ",")


def read_report(path: Path) -> Iterator[Row]:
    with open(path, **_ENCODING) as handle:
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
    with open(temporary, "w", **_ENCODING) as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(vars(row) for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
