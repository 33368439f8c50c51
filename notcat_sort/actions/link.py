"""Link: a hard link, or a symbolic link where hard links cannot reach (another filesystem)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from notcat_sort.actions.common import fsync_dir, operation_done


def link_new(source: Path, target: Path) -> None:
    """Both calls create `target` only if absent (EEXIST otherwise), so nothing is replaced."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        os.symlink(os.path.abspath(source), target)
    operation_done()
    fsync_dir(target.parent)
