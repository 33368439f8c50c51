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
import io
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING

from platformdirs import user_data_dir

from notcat_sort.model import Trait

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
    # A cat photo's breed and mood, from a model that outputs them (empty otherwise): `breed` is empty
    # where no breed is confident (or the top one is `domestic`), `breed_p` the likeliest breed's p all the same (never `domestic`'s).
    breed: str = ""
    breed_p: str = ""
    mood: str = ""
    mood_p: str = ""


FIELDS = [field.name for field in fields(Row)]
# The columns of reports written by earlier versions, each read with the later columns empty.
EARLIER_FIELDS = (FIELDS[:FIELDS.index("source")], FIELDS[:FIELDS.index("breed")])


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
        **_guessed(result),
    )


def _guessed(result: Result) -> dict[str, str]:
    """The breed and mood columns of a result (empty for an attribute it has not)."""
    columns = {}
    for trait, name in ((Trait.BREED, "breed"), (Trait.MOOD, "mood")):
        guess = result.guesses.get(trait)
        columns[name], columns[f"{name}_p"] = ("", "") if guess is None else (guess.name, format_p(guess.p))
    return columns


def rows_for(result: Result, action: str) -> list[Row]:
    """The image's row, then one per companion carried with it."""
    image = image_row(result, action)
    return [image] + [
        replace(image, path=str(companion.path), destination=str(companion.outcome.destination or ""),
                status=companion.outcome.status, error=companion.outcome.error, sha256=companion.sha256)
        for companion in result.companions
    ]


# Errors that mean the disk holding a file is full: the report then goes on in the data folder.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def data_reports_folder() -> Path:
    """Where a report goes on when the disk holding it is full: a journal is never lost."""
    return Path(user_data_dir("notcat-sort")) / "reports"


class ReportLost(OSError):
    """The report can be written neither where it was nor in the fallback folder. Nothing more may
    be done: every action is recorded before it is done."""


class ReportWriter:
    """Append-only CSV writer; `write(..., durable=True)` fsyncs, for journal entries.

    Each call goes to the file in whole `os.write`s, so the writer knows how many bytes there are
    whole rows. When the disk holding the report is full, those bytes are carried over to a new
    file of the same name in `fallback`, the report goes on there (`path` names it) and
    `on_move(old, new, why)` is told; the cut file is removed if this writer made it."""

    def __init__(self, path: Path | None, copy_to_stdout: bool = False, fallback: Path | None = None,
                 on_move: Callable[[Path, Path, str], None] | None = None) -> None:
        """`path=None` streams to stdout only (`--report -` of a run that changes nothing);
        `copy_to_stdout` also streams the final rows there while the file keeps the journal."""
        self.path = path
        self.journalled = False  # a journal row was written: the run set out to change a file
        self._stdout = _csv_writer(sys.stdout) if path is None or copy_to_stdout else None
        self._fallback, self._on_move = fallback, on_move
        self._descriptor: int | None = None
        self._size = 0  # bytes of the file that are whole rows
        self._made = False  # this writer made the file, so it may remove it once carried over
        new = True
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            if not new and _is_regular(path) and not _is_report(path):
                raise FileExistsError(errno.EEXIST, "exists and is not a notcat-sort report", str(path))
            self._made = not path.exists()
            self._descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._descriptor).st_size
            if new:
                self._append(_csv_text([], header=True), durable=False)
        # One row per file already, unless journal rows are written or an earlier run's are there.
        self._needs_compacting = not new

    def write(self, rows: Iterable[Row], durable: bool = False) -> None:
        rows = list(rows)
        if any(row.status.startswith(Status.STARTED) for row in rows):
            self.journalled = self._needs_compacting = True
        if self._stdout is not None:  # stdout can be neither fsynced nor compacted: only final rows
            self._stdout.writerows(vars(row) for row in rows if not row.status.startswith(Status.STARTED))
            sys.stdout.flush()
        if self._descriptor is not None and rows:
            self._append(_csv_text(rows), durable)

    def _append(self, text: str, durable: bool) -> None:
        assert self._descriptor is not None
        data = text.encode("utf-8", "surrogateescape")
        try:
            _write_all(self._descriptor, data)
            if durable:
                os.fsync(self._descriptor)
        except OSError as error:
            if error.errno not in DISK_FULL or self._fallback is None:
                raise
            self._carry_over(data, error)
        else:
            self._size += len(data)

    def _carry_over(self, data: bytes, error: OSError) -> None:
        """Go on in a new file in the fallback folder: the whole rows so far, then `data`, fsynced."""
        assert self._descriptor is not None and self.path is not None and self._fallback is not None
        old, descriptor = self.path, None
        try:
            os.ftruncate(self._descriptor, self._size)  # drop what got through of `data`
        except OSError:
            pass
        os.close(self._descriptor)
        self._descriptor = None
        try:
            self._fallback.mkdir(parents=True, exist_ok=True)
            new = _free_name(self._fallback / old.name)
            descriptor = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            with open(old, "rb") as cut:
                _write_all(descriptor, cut.read(self._size))
            _write_all(descriptor, data)
            os.fsync(descriptor)
        except OSError as failure:
            if descriptor is not None:
                os.close(descriptor)
            raise ReportLost(failure.errno, f"the disk holding {old} is full ({error.strerror}) and the report "
                                            f"cannot go on in {self._fallback} either ({failure.strerror or failure})") from failure
        self._descriptor, self.path, self._size = descriptor, new, self._size + len(data)
        if self._made:
            try:
                os.unlink(old)  # its rows are all in the new file; a cut copy left behind would mislead
            except OSError:
                pass
        self._made = True
        if self._on_move is not None:
            self._on_move(old, new, error.strerror or str(error))

    def close(self, compact: bool = True) -> None:
        if self._stdout is not None:
            sys.stdout.flush()
        if self._descriptor is None or self.path is None:
            return
        os.close(self._descriptor)
        self._descriptor = None
        if compact and self._needs_compacting and _is_regular(self.path):  # never replace /dev/null, a FIFO or a symlink with a file
            compact_report(self.path)


def _write_all(descriptor: int, data: bytes) -> None:
    """Write all of `data`; an error part-way (a full disk) raises, having written a part."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _free_name(path: Path) -> Path:
    candidate, number = path, 1
    while os.path.lexists(candidate):
        candidate, number = path.with_name(f"{path.stem}-{number}{path.suffix}"), number + 1
    return candidate


def _csv_text(rows: list[Row], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(vars(row) for row in rows)  # flat string fields: no need for asdict's deep copy
    return buffer.getvalue()


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


def compact_report(path: Path) -> bool:
    """Rewrite the report with one row per file, atomically. False when it cannot be (a full
    disk, say): the report is then left as it is, a valid journal with several rows per file."""
    rows = final_rows(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with _open(temporary, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(vars(row) for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return False
    return True
