"""Corrections a reviewer made, kept as training data: `cat/` and `not-cat/` folders of verified
copies (the layout `python -m training fit --data DIR` reads) and `corrections.csv`, one row per
correction in the order they were made.

A photo is kept once, under its latest label: its copy is named by content (`<sha256 prefix>-<name>`),
so correcting it twice never duplicates it, and correcting it back removes the copy from the other
folder (only after checking that copy's bytes are still the photo's). A photo put back to
`unsure` has no copy (the reviewer does not know either); its row says so. Withdrawing a
correction (the review page's undo) takes its row out of the log and leaves the folders as the
rows before it made them.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from notcat_sort.actions import Action, OnConflict, perform
from notcat_sort.actions.common import fsync_dir, remove
from notcat_sort.content import sha256_file
from notcat_sort.decide import Label

TRAINING_LABELS = (Label.CAT, Label.NOT_CAT)


@dataclass(frozen=True)
class Correction:
    time: str
    label: str  # what the reviewer said
    previous_label: str  # what the photo had before
    p_cat: str
    source: str  # the photo's path in the report (before the run moved it)
    file: str  # the copy under cat/ or not-cat/, relative to the corrections folder ("" for unsure)
    sha256: str
    report: str


CORRECTION_FIELDS = [field.name for field in fields(Correction)]


class CorrectionsFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "corrections.csv"

    def record(self, photo: Path, sha256: str, label: Label, previous: Label, p_cat: str,
               source: str, report: Path) -> Correction:
        """Copy `photo` (verified) under `label` (none for unsure), drop it from the other label, append the log row."""
        kept = self._keep(photo, sha256, label)
        correction = Correction(
            time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), label=label.value, previous_label=previous.value,
            p_cat=p_cat, source=source, file=str(kept.relative_to(self.root)) if kept else "", sha256=sha256,
            report=str(report),
        )
        self._append(correction)
        return correction

    def withdraw(self, correction: Correction, photo: Path) -> None:
        """Take `correction` out of the log, and give `photo` (now as before it) the copy the photo's
        correction before it made, or none."""
        rows = self._rows()
        recorded = asdict(correction)
        last = max((number for number, row in enumerate(rows) if row == recorded), default=None)
        if last is None:
            return
        del rows[last]
        self._rewrite(rows)
        earlier = [row for row in rows if row["sha256"] == correction.sha256]
        self._keep(photo, correction.sha256, Label(earlier[-1]["label"]) if earlier else Label.UNSURE,
                   [self.root / correction.file] if correction.file else [])

    def _keep(self, photo: Path, sha256: str, label: Label, stale: list[Path] | None = None) -> Path | None:
        """The photo's copy under `label` alone (or under none): made if missing; removed from the other
        folder, and from `stale` (an earlier copy, perhaps under another name), if they hold the photo."""
        for folder in TRAINING_LABELS:
            (self.root / folder.value).mkdir(parents=True, exist_ok=True)
        name = f"{sha256[:16]}-{photo.name}"
        kept = None
        if label in TRAINING_LABELS:
            outcome = perform(Action.COPY, photo, self.root / label.value / name, sha256, OnConflict.SKIP)
            kept = Path(outcome.destination or self.root / label.value / name)
        for copy in [self.root / other.value / name for other in TRAINING_LABELS] + (stale or []):
            if copy != kept and copy.is_file() and sha256_file(copy) == sha256:
                remove(copy)
        return kept

    def _rows(self) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        with open(self.log, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        temporary = self.log.with_name(f".{self.log.name}.tmp")
        with open(temporary, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CORRECTION_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.log)
        fsync_dir(self.root)

    def _append(self, correction: Correction) -> None:
        new = not self.log.exists() or self.log.stat().st_size == 0
        with open(self.log, "a", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CORRECTION_FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(asdict(correction))
            handle.flush()
            os.fsync(handle.fileno())
