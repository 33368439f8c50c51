"""Copy: to a hidden temporary name beside the destination, fsync, verify, then put in place
without replacing anything."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from notcat_sort.actions.common import (
    fsync_dir,
    operation_done,
    partial_name,
    rename_noreplace,
)
from notcat_sort.content import sha256_file


def _drop_cached_pages(descriptor: int) -> None:
    """So that reading the copy back checks what reached the disk, not the page cache."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)


def copy_verified(source: Path, target: Path, sha256: str | None) -> None:
    """Copy so that `target` either does not exist or holds exactly the source's bytes.

    A `.NAME.notcat-partial` left by a run that was killed mid-copy is ours and is replaced."""
    temporary = partial_name(target)
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as reader, open(temporary, "wb") as writer:
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
                writer.write(block)
            writer.flush()
            os.fsync(writer.fileno())
            _drop_cached_pages(writer.fileno())
        shutil.copystat(source, temporary)
        operation_done()
        if sha256 and sha256 != digest.hexdigest():
            raise OSError(f"source changed since it was classified: {source}")
        if sha256_file(temporary) != digest.hexdigest():
            raise OSError(f"copy does not match source after writing: {target}")
        rename_noreplace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    fsync_dir(target.parent)
