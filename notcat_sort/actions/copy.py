"""Copy: to a hidden temporary name beside the destination, fsync, verify, then put in place
without replacing anything."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from notcat_sort.actions.common import Outcome, fsync_dir, sha256_file
from notcat_sort.actions.conflict import OnConflict, resolve
from notcat_sort.report import Status


def place_new(source: Path, target: Path, keep_source: bool) -> None:
    """Give `source` the name `target`, failing with FileExistsError rather than replacing it.

    A hard link is the portable atomic "create if absent"; the source name is then dropped
    unless it is to be kept."""
    os.link(source, target, follow_symlinks=False)
    if not keep_source:
        os.unlink(source)


def copy_verified(source: Path, target: Path, sha256: str | None) -> None:
    """Copy so that `target` either does not exist or holds exactly the source's bytes."""
    temporary = target.with_name(f".{target.name}.notcat-partial")
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(temporary, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, temporary)
    try:
        expected = digest.hexdigest()
        if sha256 and sha256 != expected:
            raise OSError(f"source changed since it was classified: {source}")
        if sha256_file(temporary) != expected:
            raise OSError(f"copy does not match source after writing: {target}")
        place_new(temporary, target, keep_source=False)
    finally:
        if temporary.exists():
            temporary.unlink()
    fsync_dir(target.parent)


def copy(source: Path, destination: Path, sha256: str | None, on_conflict: OnConflict, dry_run: bool) -> Outcome:
    state, target = resolve(source, destination, sha256, on_conflict)
    if state == "taken":
        return Outcome(Status.SKIPPED, target, "destination exists with different content (--on-conflict skip)")
    if state == "identical":
        return Outcome(Status.SKIPPED, target, "already sorted: an identical copy is there")
    if dry_run:
        return Outcome(Status.PLANNED, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_verified(source, target, sha256)
    return Outcome(Status.DONE, target)
