"""The review of one run: the photos its report names, where each is now, and corrections.

A correction of a photo the run placed (moved, copied or linked into OUT/cat/...) moves that
file to the other label's folder with the CLI's own file actions (`plan` and `execute`: never
overwrite, `name (1).jpg` when taken), its sidecars with it, journalled in the same report like
any move: a fsynced `started` row naming the file where it is and where it goes, then the outcome.
Those rows come after the run's, so `notcat-sort --undo REPORT` first moves the photo back to
the folder the run chose, then puts back what the run did. In a dry run's report nothing was
placed: a correction there changes only the label recorded in the report. Every correction is
also kept for training (see corrections.py), and can be undone while the server runs: the photo
goes back where it was (journalled the same way) and the corrections folder is as it was before.
Naming a cat photo keeps a copy of it as an example of that cat (see known.py), for the next
`--group-cats --known-cats` run; it changes no file of the run, and can be undone the same way.

Only files the report names are ever opened; the client refers to a photo by its number here.
"""

from __future__ import annotations

import csv
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from notcat_sort.actions import PLACING_ACTIONS, Action, Kind, OnConflict, Outcome, execute, perform, plan
from notcat_sort.cats import UNKNOWN
from notcat_sort.content import sha256_file
from notcat_sort.decide import SORTED_LABELS, Label
from notcat_sort.model import DOMESTIC
from notcat_sort.report import EARLIER_FIELDS, FIELDS, ReportWriter, Row, Status, read_report
from notcat_sort.serve.corrections import Correction, CorrectionsFolder
from notcat_sort.serve.known import KnownCatsFolder
from notcat_sort.sidecars import RAW_SUFFIXES, companion_name, companions

_PLACED = (Status.DONE, Status.DUPLICATE_REMOVED)
_RELABEL_ONLY = (Status.PLANNED, Status.SKIPPED)
_COMPANION_SUFFIXES = (".xmp", ".aae", *RAW_SUFFIXES)  # rows for files carried with an image
_LISTED = {label.value for label in (*SORTED_LABELS, Label.ERROR)}
REVIEW_LABELS = SORTED_LABELS  # what a reviewer can give a photo: cat, not-cat, or back to unsure


class ReportError(Exception):
    """The report cannot be reviewed: unreadable, not a report, or from another version."""


class NotFound(Exception):
    """No photo of the review has that number."""


class Refused(Exception):
    """A correction that cannot be made as things are; nothing was changed unless it says so."""


@dataclass(frozen=True)
class Step:
    """What a photo was before one correction (or naming) made by this server: what its undo restores."""

    label: Label
    location: Path
    row: Row
    cat: str
    correction: Correction | None
    known: str | None = None  # for a naming: the name it had before ("" for none)
    dropped: str = ""  # for a correction out of cat: the name it lost with it


@dataclass
class Entry:
    id: int
    row: Row  # the run's latest row for this photo (for a photo not placed, the latest correction's)
    label: Label  # as the run decided, or as corrected since
    at: str  # where the photo is now (a string: 30,000 Paths would cost the start-up seconds)
    placed: bool  # the run put it at `location`: a correction moves it
    run_label: Label  # what the run decided
    cat: str = ""  # --group-cats: the cat's id (`unknown` for none); "" for a photo that is no cat
    run_cat: str = ""  # the cat id the run gave it
    known: str = ""  # the cat it is an example of, named on the page
    undo: list[Step] = field(default_factory=list)  # this server's corrections of it, the latest last

    @property
    def location(self) -> Path:
        return Path(self.at)

    @location.setter
    def location(self, path: Path) -> None:
        self.at = os.fspath(path)

    @property
    def source(self) -> Path:
        return Path(self.row.path)

    @cached_property
    def folder(self) -> str:
        """The folder the photo was in before the run (a string: the list filters 30,000 of these)."""
        return os.path.dirname(self.row.path)

    @cached_property
    def p_cat(self) -> float | None:
        return float(self.row.p_cat) if self.row.p_cat else None

    @cached_property
    def breed(self) -> str:
        """The breed the run named for a cat photo, `domestic` for a cat of no confident breed, "" for none."""
        return self.row.breed or (DOMESTIC if self.row.breed_p else "")

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id, "name": os.path.basename(self.at), "path": self.at, "folder": self.folder,
            "label": self.label.value, "p_cat": self.p_cat, "action": self.row.action, "status": self.row.status,
            "error": self.row.error, "run_label": self.run_label.value, "cat": self.cat, "known": self.known,
            "undo": len(self.undo), "breed": self.breed, "mood": self.row.mood,
        }


@dataclass
class Changes:
    """The outcome of a correction or undo of several photos: those changed, and those refused with why."""

    changed: list[Entry] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def check_report(path: Path) -> None:
    """Raise ReportError unless `path` is a report this version wrote."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, csv.Error) as error:
        raise ReportError(f"cannot read the report {path}: {getattr(error, 'strerror', None) or error}") from None
    if header == FIELDS or header in EARLIER_FIELDS:  # an earlier report: read with the later columns empty
        return
    if header[:2] == FIELDS[:2]:
        raise ReportError(f"{path} was written by another version of notcat-sort: its columns are "
                          f"{','.join(header)}; this version reads {','.join(FIELDS)}")
    raise ReportError(f"{path} is not a notcat-sort report (its first line is not {','.join(FIELDS)})")


def other_label_path(source: Path, placed: Path, old: Label, new: Label, old_cat: str = "", new_cat: str = "") -> Path | None:
    """Where `placed`, at OUT/old/SUB/NAME, goes under `new`: OUT/new/SUB/NAME. With --group-cats
    a cat photo is at OUT/cat/<old_cat>/SUB/NAME, and one given a cat goes to OUT/cat/<new_cat>/SUB/NAME.

    The report names the source and the destination, not OUT, so OUT/old is found as a folder
    named `old` above `placed` whose sub-path SUB ends the source's folder too. When several fit,
    a sort in place (OUT is the folder that was sorted, so it begins the source's path) takes the
    deepest, since the scan never enters OUT/old; a sort into --out the shallowest. None if none fits."""
    folders, source_folders = placed.parent.parts, source.parent.parts

    def fits(skip: int) -> list[int]:
        found = []
        for index, name in enumerate(folders):
            sub = folders[index + 1 + skip:]
            if (name == old.value and folders[index + 1:index + 1 + skip] == (old_cat,) * skip
                    and len(sub) <= len(source_folders) and sub == source_folders[len(source_folders) - len(sub):]):
                found.append(index)
        return found

    skip = 1 if old_cat and fits(1) else 0
    found = fits(skip)
    if not found:
        return None
    in_place = [index for index in found if folders[:index] == source_folders[:index]]
    chosen = max(in_place) if in_place else min(found)
    return Path(*folders[:chosen], new.value, *((new_cat,) if new_cat else ()), *folders[chosen + 1 + skip:], placed.name)


def _is_photo(row: Row) -> bool:
    return row.label in _LISTED and not row.path.lower().endswith(_COMPANION_SUFFIXES)


def _moved(row: Row) -> bool:
    """Whether a correction row's move happened, judged by the row and, for an unfinished one, the disk."""
    if row.status in _PLACED:
        return True
    return row.status != Status.SKIPPED and not os.path.lexists(row.path) and os.path.lexists(row.destination)


def _sorted_by_breed(entries: list[Entry]) -> bool:
    """Whether the run was a --breed-folders one: every cat photo it placed lies in its breed's folder under cat/."""
    placed = [entry for entry in entries if entry.placed and entry.run_label is Label.CAT and entry.breed]
    return bool(placed) and all(f"{os.sep}{Label.CAT.value}{os.sep}{entry.breed}{os.sep}" in entry.row.destination
                                for entry in placed)


class Review:
    def __init__(self, report: Path, corrections: CorrectionsFolder, known: KnownCatsFolder | None = None) -> None:
        check_report(report)
        self.report = report.absolute()
        self.corrections = corrections
        self.known: KnownCatsFolder | None = None
        self._lock = threading.Lock()  # one correction at a time: each reads and appends the journal
        self.entries = self._load()
        if known is not None:
            self.remember_names(known)
        self.grouped = any(entry.cat for entry in self.entries)  # a --group-cats run: cat photos go under cat/<id>/
        self.by_breed = not self.grouped and _sorted_by_breed(self.entries)  # a --breed-folders run: cat/<breed>/
        self.version = 0  # counts the changes, so that what is worked out from the entries can be kept until the next
        self._counts: tuple[int, dict[str, int]] = (-1, {})

    def _load(self) -> list[Entry]:
        """Replay the report in the order it was written: the run's rows make entries, and rows that
        move a file an entry is at (corrections) move that entry."""
        by_source: dict[str, Entry] = {}
        placed_at: dict[str, Entry] = {}  # by the path as the report writes it
        for row in read_report(self.report):
            owner = placed_at.get(row.path)
            if owner is not None and row.path != owner.row.path:
                if row.action == Action.MOVE and _moved(row):
                    del placed_at[owner.at]
                    owner.at, owner.label, owner.cat = row.destination, Label(row.label), row.cat_id
                    placed_at[owner.at] = owner
                continue
            if not _is_photo(row):
                continue
            earlier = by_source.get(row.path)
            if earlier is not None:
                placed_at.pop(earlier.at, None)
            placed = row.action in PLACING_ACTIONS and row.status in _PLACED and bool(row.destination)
            entry = Entry(earlier.id if earlier else len(by_source), row, Label(row.label),
                          row.destination if placed else row.path, placed,
                          earlier.run_label if earlier else Label(row.label), row.cat_id,
                          earlier.run_cat if earlier else row.cat_id)
            by_source[row.path] = entry
            if placed:
                placed_at[entry.at] = entry
        return sorted(by_source.values(), key=lambda entry: entry.id)

    def remember_names(self, known: KnownCatsFolder) -> None:
        """Name photos in `known` and keep the names given from now on there."""
        self.known = known
        for entry in self.entries:
            entry.known = known.names.get(entry.row.sha256, "")

    def entry(self, entry_id: int) -> Entry:
        if not 0 <= entry_id < len(self.entries):
            raise NotFound(f"no photo number {entry_id} in this review")
        return self.entries[entry_id]

    def counts(self) -> dict[str, int]:
        """How many photos have each label now, how many in all, and how many were corrected."""
        if self._counts[0] != self.version:
            found = Counter(entry.label.value for entry in self.entries)
            self._counts = self.version, {
                "all": len(self.entries), **{label.value: found[label.value] for label in (*SORTED_LABELS, Label.ERROR)},
                "corrected": sum(entry.label is not entry.run_label for entry in self.entries)}
        return self._counts[1]

    def correct(self, entry_id: int, label: Label) -> Entry:
        """Give photo `entry_id` the label `label` (cat, not-cat or unsure), moving it if the run placed it."""
        changes = self.correct_many([entry_id], label)
        if changes.refused:
            raise Refused(changes.refused[0][1])
        return self.entry(entry_id)

    def correct_many(self, entry_ids: Iterable[int], label: Label) -> Changes:
        """Correct each photo in turn; one that cannot be corrected is refused with the reason, and the rest go on."""
        if label not in REVIEW_LABELS:
            raise ValueError(f"a correction is cat, not-cat or unsure, not {label.value}")
        return self._each(entry_ids, lambda entry: self._correct(entry, label))

    def undo_many(self, entry_ids: Iterable[int]) -> Changes:
        """Undo the latest correction this server made of each photo: back where and as it was, and the
        corrections folder as it was before."""
        return self._each(entry_ids, self._undo)

    def name_many(self, entry_ids: Iterable[int], name: str) -> Changes:
        """Keep each photo as an example of the cat `name` (a cat photo, as it is now), or of none for ""."""
        return self._each(entry_ids, lambda entry: self._name(entry, name))

    def _each(self, entry_ids: Iterable[int], change: Callable[[Entry], bool]) -> Changes:
        changes = Changes()
        with self._lock:
            for entry_id in dict.fromkeys(entry_ids):
                try:
                    entry = self.entry(entry_id)
                    if change(entry):
                        changes.changed.append(entry)
                except (NotFound, Refused) as error:
                    changes.refused.append((entry_id, str(error)))
            self.version += 1
        return changes

    def _correct(self, entry: Entry, label: Label) -> bool:
        if entry.label is label:
            return False
        self._check(entry)
        before = Step(entry.label, entry.location, entry.row, entry.cat, None, dropped=entry.known)
        self._relocate(entry, label, self._cat_for(entry, label), None)
        if entry.known and label is not Label.CAT:  # no longer an example of a cat
            self._set_name(entry, "")
        else:
            before = replace(before, dropped="")
        correction = self.corrections.record(entry.location, entry.row.sha256, label, before.label, entry.row.p_cat,
                                             entry.row.path, self.report)
        entry.undo.append(replace(before, correction=correction))
        return True

    def _name(self, entry: Entry, name: str) -> bool:
        if self.known is None:
            raise Refused("this server keeps no known cats")
        if entry.known == name:
            return False
        if name and entry.label is not Label.CAT:
            raise Refused(f"only a cat photo can be named; this one is {entry.label.value}. Nothing was changed")
        self._check(entry)
        entry.undo.append(Step(entry.label, entry.location, entry.row, entry.cat, None, entry.known))
        self._set_name(entry, name)
        return True

    def _set_name(self, entry: Entry, name: str) -> None:
        assert self.known is not None
        if name:
            self.known.add(entry.location, entry.row.sha256, name)
        else:
            self.known.remove(entry.location.name, entry.row.sha256)
        entry.known = name

    def _undo(self, entry: Entry) -> bool:
        if not entry.undo:
            raise Refused("no correction of this photo to undo since the server started "
                          "(notcat-sort --undo REPORT puts back the whole run)")
        step = entry.undo[-1]
        self._check(entry)
        if step.known is not None:
            self._set_name(entry, step.known)
            entry.undo.pop()
            return True
        if entry.placed:
            self._relocate(entry, step.label, step.cat, step.location)
        else:
            self._journal([step.row])
            entry.row, entry.label, entry.cat = step.row, step.label, step.cat
        if step.correction is not None:
            self.corrections.withdraw(step.correction, entry.location)
        if step.dropped:
            self._set_name(entry, step.dropped)
        entry.undo.pop()
        return True

    def _cat_for(self, entry: Entry, label: Label) -> str:
        """The cat id a photo given `label` gets in a --group-cats run: a cat photo the one the run gave
        it, or if the run said it was no cat, an unknown cat."""
        if not self.grouped or label is not Label.CAT:
            return ""
        return entry.run_cat or UNKNOWN

    def _folder_of(self, entry: Entry) -> str:
        """The folder under cat/ that a cat photo is in: its cat's, or in a --breed-folders run its breed's
        (where a correction has not taken it out since: `other_label_path` then finds none)."""
        return entry.cat or (entry.breed if self.by_breed and entry.label is Label.CAT else "")

    def _check(self, entry: Entry) -> None:
        if entry.row.action == Action.TAG:
            raise Refused("this run tagged sidecars; run `notcat-sort --tag` again to change a tag. Nothing was changed")
        if entry.label is Label.ERROR:
            raise Refused(f"the run could not read this photo ({entry.row.error}). Nothing was changed")
        if not (entry.placed or entry.row.status in _RELABEL_ONLY):
            raise Refused(f"the run's status for this photo is {entry.row.status}: re-run it first. Nothing was changed")
        if not os.path.lexists(entry.location):
            raise Refused(f"{entry.location} is not there any more (moved or deleted since the run). Nothing was changed")
        if os.path.islink(entry.location) or not os.path.isfile(entry.location):
            raise Refused(f"{entry.location} is not a regular file (a symbolic link?). Nothing was changed")
        if not entry.row.sha256 or sha256_file(entry.location) != entry.row.sha256:
            raise Refused(f"{entry.location} has changed since the run. Nothing was changed")

    def _relocate(self, entry: Entry, label: Label, cat: str, target: Path | None) -> None:
        """Give `entry` `label` and `cat`: move the file the run placed (to `target`, or the same place
        under the label's folder), or for a photo not placed record the new label in the report."""
        if not entry.placed:
            destination = entry.row.destination and other_label_path(entry.source, Path(entry.row.destination),
                                                                     entry.label, label, self._folder_of(entry), cat)
            row = replace(entry.row, label=label.value, destination=str(destination or ""), cat_id=cat)
            self._journal([row])
            entry.row, entry.label, entry.cat = row, label, cat
            return
        target = target or other_label_path(entry.source, entry.location, entry.label, label, self._folder_of(entry), cat)
        if target is None:
            raise Refused(f"cannot tell which folder above {entry.location} is its {entry.label.value}/ folder. "
                          "Nothing was changed")
        image = entry.location
        planned = plan(Action.MOVE, image, target, entry.row.sha256, OnConflict.RENAME)
        assert planned.target is not None  # RENAME always finds a name
        carried = [(path, sha256_file(path)) for path in companions(image, with_raw=True)]
        started = Status.STARTED_REMOVE_DUPLICATE if planned.kind == Kind.REMOVE_DUPLICATE else Status.STARTED
        image_row = Row(str(image), label.value, entry.row.p_cat, Action.MOVE.value, str(planned.target), started, "",
                        entry.row.sha256, cat)
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
        entry.location, entry.label, entry.cat = planned.target, label, cat

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
