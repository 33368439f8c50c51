"""Link: a hard link, or a symbolic link where hard links cannot reach (another filesystem)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from notcat_sort.actions.common import Outcome
from notcat_sort.actions.conflict import OnConflict, resolve
from notcat_sort.report import Status


def link(source: Path, destination: Path, sha256: str | None, on_conflict: OnConflict, dry_run: bool) -> Outcome:
    state, target = resolve(source, destination, sha256, on_conflict)
    if state == "taken":
        return Outcome(Status.SKIPPED, target, "destination exists with different content (--on-conflict skip)")
    if state == "identical":
        return Outcome(Status.SKIPPED, target, "already sorted: an identical file is there")
    if dry_run:
        return Outcome(Status.PLANNED, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        os.symlink(os.path.abspath(source), target)
    return Outcome(Status.DONE, target)
