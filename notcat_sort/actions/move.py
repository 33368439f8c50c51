"""Move: an atomic no-replace rename on one filesystem; across filesystems a verified copy,
and only then the removal of the source."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from notcat_sort.actions.common import fsync_dir, remove, rename_noreplace
from notcat_sort.actions.copy import copy_verified
from notcat_sort.content import sha256_file


def _unchanged(before: os.stat_result, path: Path) -> bool:
    after = os.stat(path)
    return (before.st_ino, before.st_size, before.st_mtime_ns) == (after.st_ino, after.st_size, after.st_mtime_ns)


def move_new(source: Path, target: Path, sha256: str | None) -> None:
    try:
        rename_noreplace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        before = os.stat(source)
        copy_verified(source, target, sha256)
        if not _unchanged(before, source):  # written to while we copied: keep both
            raise OSError(f"source changed while it was being copied; both kept: {source}") from None
        remove(source)
    fsync_dir(target.parent)
    fsync_dir(source.parent)


def remove_duplicate(source: Path, existing: Path) -> None:
    """Remove `source` because `existing` already holds the same bytes, checked again right now."""
    if existing.is_symlink() or sha256_file(source) != sha256_file(existing):
        raise OSError(f"{existing} no longer holds the same bytes; source kept")
    if os.path.samefile(source, existing) and os.stat(source).st_nlink == 1:  # one name, seen twice
        raise OSError(f"{existing} is the source itself; nothing to do")
    remove(source)
