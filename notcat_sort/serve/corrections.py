"""Corrections a reviewer made, kept as training data: `cat/` and `not-cat/` folders of verified
copies (the layout `python -m training fit --data DIR` reads) and `corrections.csv`, one row per
correction in the order they were made.

A photo is kept once, under its latest label: its copy is named by content (`<sha256 prefix>-<name>`),
so correcting it twice never duplicates it, and correcting it back removes the copy from the other
folder (only after checking that copy's bytes are still the photo's).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from notcat_sort.actions import Action, OnConflict, perform
from notcat_sort.actions.common import remove
from notcat_sort.content import sha256_file
from notcat_sort.decide import Label

TRAINING_LABELS = (Label.CAT, Label.NOT_CAT)


@dataclass(frozen=True)
class Correction:
    time: str
    label: str  # what the reviewer said
    previous_label: str  # what the run said
    p_cat: str
    source: str  # the photo's path in the report (before the run moved it)
    file: str  # the copy under cat/ or not-cat/, relative to the corrections folder
    sha256: str
    report: str


CORRECTION_FIELDS = [field.name for field in fields(Correction)]


class CorrectionsFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "corrections.csv"

    def record(self, photo: Path, sha256: str, label: Label, previous: Label, p_cat: str,
               source: str, report: Path) -> Correction:
        """Copy `photo` (verified) under `label`, drop it from the other label, append the log row."""
        if label not in TRAINING_LABELS:
            raise ValueError(f"a correction is cat or not-cat, not {label}")
        for folder in TRAINING_LABELS:
            (self.root / folder.value).mkdir(parents=True, exist_ok=True)
        name = f"{sha256[:16]}-{photo.name}"
        outcome = perform(Action.COPY, photo, self.root / label.value / name, sha256, OnConflict.SKIP)
        for other in TRAINING_LABELS:
            stale = self.root / other.value / name
            if other is not label and stale.is_file() and sha256_file(stale) == sha256:
                remove(stale)
        kept = Path(outcome.destination or self.root / label.value / name)
        correction = Correction(
            time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), label=label.value, previous_label=previous.value,
            p_cat=p_cat, source=source, file=str(kept.relative_to(self.root)), sha256=sha256, report=str(report),
        )
        self._append(correction)
        return correction

    def _append(self, correction: Correction) -> None:
        new = not self.log.exists() or self.log.stat().st_size == 0
        with open(self.log, "a", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CORRECTION_FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(asdict(correction))
            handle.flush()
            os.fsync(handle.fileno())
