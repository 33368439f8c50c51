"""Copy: to a hidden temporary name beside the destination, fsync, verify, then put in place
without replacing anything."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from notcat_sort.actions.common import (
    fsync_dir,
    operation_done,
    partial_name,
    rename_noreplace,
)
from notcat_sort.content import READ_BLOCK, sha256_file

# copy_file_range errors that mean "not here" (another filesystem, an old kernel, FUSE, ...).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL,
                   errno.EBADF, errno.EPERM, errno.ETXTBSY}


def _drop_cached_pages(descriptor: int) -> None:
    """So that reading the copy back checks what reached the disk, not the page cache."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)


def _copy_in_kernel(reader: BinaryIO, writer: BinaryIO) -> int:
    """Bytes copied by copy_file_range (no trip through this process; a reflink or a server-side
    copy where the filesystem has them), from both files' start; 0 where it is not available."""
    if not hasattr(os, "copy_file_range"):
        return 0
    size, copied = os.fstat(reader.fileno()).st_size, 0
    try:
        while copied < size:
            count = os.copy_file_range(reader.fileno(), writer.fileno(), size - copied)
            if count == 0:  # some filesystems report success and copy nothing: finish by hand
                break
            copied += count
    except OSError as error:
        if error.errno not in _NO_KERNEL_COPY:
            raise
    return copied


def _copy_rest(reader: BinaryIO, writer: BinaryIO, offset: int, digest=None) -> None:
    """From `offset` to the end by reading and writing, feeding `digest` (a hashlib object) if given."""
    reader.seek(offset)
    writer.seek(offset)
    for block in iter(lambda: reader.read(READ_BLOCK), b""):
        if digest is not None:
            digest.update(block)
        writer.write(block)


def copy_verified(source: Path, target: Path, sha256: str | None) -> None:
    """Copy so that `target` either does not exist or holds exactly the bytes whose digest is
    `sha256` (the content that was classified), or, without one, the source's bytes as read.

    The copy is read back from disk and hashed; that one hash is the whole check, so the source
    is not hashed again unless the check fails (to say which side changed). A
    `.NAME.notcat-partial` left by a run that was killed mid-copy is ours and is replaced."""
    temporary = partial_name(target)
    try:
        with open(source, "rb") as reader, open(temporary, "wb") as writer:
            if sha256 is None:  # nothing to check against but the bytes as they are read
                digest = hashlib.sha256()
                _copy_rest(reader, writer, 0, digest)
                sha256 = digest.hexdigest()
            else:
                _copy_rest(reader, writer, _copy_in_kernel(reader, writer))
            writer.flush()
            os.fsync(writer.fileno())
            _drop_cached_pages(writer.fileno())
        shutil.copystat(source, temporary)
        operation_done()
        if sha256_file(temporary) != sha256:
            if sha256_file(source) != sha256:
                raise OSError(f"source changed since it was classified: {source}")
            raise OSError(f"copy does not match source after writing: {target}")
        rename_noreplace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    fsync_dir(target.parent)
