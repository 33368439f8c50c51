"""Move: an atomic no-replace rename on one filesystem; across filesystems a verified copy,
and only then the removal of the source."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from notcat_sort.actions.common import Outcome, fsync_dir
from notcat_sort.actions.conflict import OnConflict, resolve
from notcat_sort.actions.copy import copy_verified, place_new
from notcat_sort.report import Status


def move(source: Path, destination: Path, sha256: str | None, on_conflict: OnConflict, dry_run: bool) -> Outcome:
    state, target = resolve(source, destination, sha256, on_conflict)
    if state == "taken":
        return Outcome(Status.SKIPPED, target, "destination exists with different content (--on-conflict skip)")
    if state == "identical":
        if not dry_run:
            os.unlink(source)  # its identical copy is already sorted
        return Outcome(Status.PLANNED if dry_run else Status.DONE, target, "")
    if dry_run:
        return Outcome(Status.PLANNED, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        place_new(source, target, keep_source=False)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        copy_verified(source, target, sha256)
        os.unlink(source)
    fsync_dir(target.parent)
    return Outcome(Status.DONE, target)
