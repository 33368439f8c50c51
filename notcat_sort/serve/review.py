"""The review of one run: the photos its report names, where each is now, and corrections.

A correction of a photo the run placed (moved, copied or linked into OUT/cat/...) moves that
file to the other label's folder with the CLI's own file actions (`plan` and `execute`: never
overwrite, `name (1).jpg` when taken), its sidecars with it, journalled in the same report like
any move: a fsynced `started` row naming the file where it is and where it goes, then the outcome.
Those rows come after the run's, so `notcat-sort --undo REPORT` first moves the photo back to
the folder the run chose, then puts back what the run did. In a dry run's report nothing was
placed: a correction there changes only the label recorded in the report. Every correction is
also kept for training (see corrections.py).

Only files the report names are ever opened; the client refers to a photo by its number here.
"""

from __future__ import annotations

import csv
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from notcat_sort.actions import PLACING_ACTIONS, Action, Kind, OnConflict, Outcome, execute, perform, plan
from notcat_sort.content import sha256_file
from notcat_sort.decide import SORTED_LABELS, Label
from notcat_sort.report import FIELDS, ReportWriter, Row, Status, read_report
from notcat_sort.serve.corrections import TRAINING_LABELS, CorrectionsFolder
from notcat_sort.sidecars import RAW_SUFFIXES, companion_name, companions

_PLACED = (Status.DONE, Status.DUPLICATE_REMOVED)
_RELABEL_ONLY = (Status.PLANNED, Status.SKIPPED)
_COMPANION_SUFFIXES = (".xmp", ".aae", *RAW_SUFFIXES)  # rows for files carried with an image


class ReportError(Exception):
    """The report cannot be reviewed: unreadable, not a report, or from another version."""


class NotFound(Exception):
    """No photo of the review has that number."""


class Refused(Exception):
    """A correction that cannot be made as things are; nothing was changed unless it says so."""


@dataclass
class Entry:
    id: int
    row: Row  # the run's latest row for this photo
    label: Label  # as the run decided, or as corrected since
    location: Path  # where the photo is now
    placed: bool  # the run put it at `location`: a correction moves it
    run_label: Label  # what the run decided

    @property
    def source(self) -> Path:
        return Path(self.row.path)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id, "name": self.location.name, "path": str(self.location), "label": self.label.value,
            "p_cat": float(self.row.p_cat) if self.row.p_cat else None, "action": self.row.action,
            "status": self.row.status, "run_label": self.run_label.value,
        }


def check_report(path: Path) -> None:
    """Raise ReportError unless `path` is a report this version wrote."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, csv.Error) as error:
        raise ReportError(f"cannot read the report {path}: {getattr(error, 'strerror', None) or error}") from None
    if header in (FIELDS, FIELDS[:-1]):  # without the cat_id column: a report from before --group-cats
        return
    if header[:2] == FIELDS[:2]:
        raise ReportError(f"{path} was written by another version of notcat-sort: its columns are "
                          f"{','.join(header)}; this version reads {','.join(FIELDS)}")
    raise ReportError(f"{path} is not a notcat-sort report (its first line is not {','.join(FIELDS)})")


def other_label_path(source: Path, placed: Path, old: Label, new: Label) -> Path | None:
    """Where `placed`, at OUT/old/SUB/NAME, goes under `new`: OUT/new/SUB/NAME.

    The report names the source and the destination, not OUT, so OUT/old is found as a folder
    named `old` above `placed` whose sub-path SUB ends the source's folder too. When several fit,
    a sort in place (OUT is the folder that was sorted, so it begins the source's path) takes the
    deepest, since the scan never enters OUT/old; a sort into --out the shallowest. None if none fits."""
    folders, source_folders = placed.parent.parts, source.parent.parts
    fits = [index for index, name in enumerate(folders) if name == old.value
            and len(folders) - index - 1 <= len(source_folders)
            and folders[index + 1:] == source_folders[len(source_folders) - (len(folders) - index - 1):]]
    in_place = [index for index in fits if folders[:index] == source_folders[:index]]
    if not fits:
        return None
    chosen = max(in_place) if in_place else min(fits)
    return Path(*folders[:chosen], new.value, *folders[chosen + 1:], placed.name)


def _is_photo(row: Row) -> bool:
    return row.label in {label.value for label in SORTED_LABELS} and not row.path.lower().endswith(_COMPANION_SUFFIXES)


def _moved(row: Row) -> bool:
    """Whether a correction row's move happened, judged by the row and, for an unfinished one, the disk."""
    if row.status in _PLACED:
        return True
    return row.status != Status.SKIPPED and not os.path.lexists(row.path) and os.path.lexists(row.destination)


class Review:
    def __init__(self, report: Path, corrections: CorrectionsFolder) -> None:
        check_report(report)
        self.report = report.absolute()
        self.corrections = corrections
        self._lock = threading.Lock()  # one correction at a time: each reads and appends the journal
        self.entries = self._load()

    def _load(self) -> list[Entry]:
        """Replay the report in the order it was written: the run's rows make entries, and rows that
        move a file an entry is at (corrections) move that entry."""
        by_source: dict[str, Entry] = {}
        placed_at: dict[Path, Entry] = {}
        for row in read_report(self.report):
            owner = placed_at.get(Path(row.path))
            if owner is not None and row.path != owner.row.path:
                if row.action == Action.MOVE and _moved(row):
                    del placed_at[owner.location]
                    owner.location, owner.label = Path(row.destination), Label(row.label)
                    placed_at[owner.location] = owner
                continue
            if not _is_photo(row):
                continue
            earlier = by_source.get(row.path)
            if earlier is not None:
                placed_at.pop(earlier.location, None)
            placed = row.action in PLACING_ACTIONS and row.status in _PLACED and bool(row.destination)
            entry = Entry(earlier.id if earlier else len(by_source), row, Label(row.label),
                          Path(row.destination) if placed else Path(row.path), placed,
                          earlier.run_label if earlier else Label(row.label))
            by_source[row.path] = entry
            if placed:
                placed_at[entry.location] = entry
        return sorted(by_source.values(), key=lambda entry: entry.id)

    def entry(self, entry_id: int) -> Entry:
        if not 0 <= entry_id < len(self.entries):
            raise NotFound(f"no photo number {entry_id} in this review")
        return self.entries[entry_id]

    def correct(self, entry_id: int, label: Label) -> Entry:
        """Give photo `entry_id` the label `label` (cat or not-cat), moving it if the run placed it."""
        if label not in TRAINING_LABELS:
            raise ValueError(f"a correction is cat or not-cat, not {label.value}")
        with self._lock:
            entry = self.entry(entry_id)
            if entry.label is label:
                return entry
            self._check(entry)
            previous = entry.label
            if entry.placed:
                self._move(entry, label)
            else:
                self._relabel(entry, label)
            self.corrections.record(entry.location, entry.row.sha256, label, previous, entry.row.p_cat,
                                    entry.row.path, self.report)
            return entry

    def _check(self, entry: Entry) -> None:
        if entry.row.action == Action.TAG:
            raise Refused("this run tagged sidecars; run `notcat-sort --tag` again to change a tag. Nothing was changed")
        if not (entry.placed or entry.row.status in _RELABEL_ONLY):
            raise Refused(f"the run's status for this photo is {entry.row.status}: re-run it first. Nothing was changed")
        if not os.path.lexists(entry.location):
            raise Refused(f"{entry.location} is not there any more (moved or deleted since the run). Nothing was changed")
        if os.path.islink(entry.location) or not os.path.isfile(entry.location):
            raise Refused(f"{entry.location} is not a regular file (a symbolic link?). Nothing was changed")
        if not entry.row.sha256 or sha256_file(entry.location) != entry.row.sha256:
            raise Refused(f"{entry.location} has changed since the run. Nothing was changed")

    def _relabel(self, entry: Entry, label: Label) -> None:
        destination = entry.row.destination and other_label_path(entry.source, Path(entry.row.destination),
                                                                 entry.label, label)
        row = replace(entry.row, label=label.value, destination=str(destination or ""))
        self._journal([row])
        entry.row, entry.label = row, label

    def _move(self, entry: Entry, label: Label) -> None:
        target = other_label_path(entry.source, entry.location, entry.label, label)
        if target is None:
            raise Refused(f"cannot tell which folder above {entry.location} is its {entry.label.value}/ folder. "
                          "Nothing was changed")
        image = entry.location
        planned = plan(Action.MOVE, image, target, entry.row.sha256, OnConflict.RENAME)
        assert planned.target is not None  # RENAME always finds a name
        carried = [(path, sha256_file(path)) for path in companions(image, with_raw=True)]
        started = Status.STARTED_REMOVE_DUPLICATE if planned.kind == Kind.REMOVE_DUPLICATE else Status.STARTED
        image_row = Row(str(image), label.value, entry.row.p_cat, Action.MOVE.value, str(planned.target), started, "",
                        entry.row.sha256)
        companion_rows = [replace(image_row, path=str(path), destination=str(companion_name(path, image, planned.target)),
                                  status=Status.STARTED, sha256=digest) for path, digest in carried]
        self._journal([image_row, *companion_rows])
        try:
            outcome = execute(planned)
        except OSError as error:
            self._journal([replace(image_row, status=Status.ERROR, error=f"move failed: {error}")])
            raise Refused(f"moving {image} failed: {error.strerror or error}; it is where it was") from None
        finished = [replace(image_row, status=outcome.status, error=outcome.error)]
        for row in companion_rows:
            finished.append(self._carry(row))
        self._journal(finished)
        entry.location, entry.label = planned.target, label

    @staticmethod
    def _carry(row: Row) -> Row:
        """Move a sidecar after its image, never renamed on its own (as the CLI carries it)."""
        try:
            outcome = perform(Action.MOVE, Path(row.path), Path(row.destination), row.sha256, OnConflict.SKIP)
        except OSError as error:
            outcome = Outcome(Status.ERROR, Path(row.destination), f"move failed: {error.strerror or error}")
        if outcome.status == Status.SKIPPED:
            outcome = Outcome(Status.ERROR, outcome.destination, f"not carried: {outcome.error}; left in place")
        return replace(row, status=outcome.status, error=outcome.error)

    def _journal(self, rows: list[Row]) -> None:
        writer = ReportWriter(self.report)
        try:
            writer.write(rows, durable=True)
        finally:
            writer.close(compact=False)  # keep the order of events: the review replays it
