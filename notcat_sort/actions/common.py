"""What every file action shares: its result types and the safe file primitives.

Every change to the filesystem goes through one of the primitives here, so each one can be
counted by the crash-test hook (`NOTCAT_SORT_TEST_KILL_AFTER_OPS`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from notcat_sort.report import Status

PARTIAL_SUFFIX = ".notcat-partial"


@dataclass(frozen=True)
class Outcome:
    status: Status
    destination: Path | None = None
    error: str = ""


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in `folder` survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def partial_name(target: Path) -> Path:
    """The hidden temporary name a copy is written under before it is verified and put in place."""
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


# --- Test hook --------------------------------------------------------------------------------
# NOTCAT_SORT_TEST_KILL_AFTER_OPS=N makes the process SIGKILL itself right after its Nth change to
# the filesystem, so the crash tests can stop a run at exact, distinct points. Unset in real use.
_kill_after = int(os.environ.get("NOTCAT_SORT_TEST_KILL_AFTER_OPS") or 0)
_operations = 0


def operation_done() -> None:
    global _operations
    _operations += 1
    if _kill_after and _operations >= _kill_after:
        os.kill(os.getpid(), signal.SIGKILL)


# --- Renaming without replacing ---------------------------------------------------------------
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
# The process's own symbols, libc's among them: ctypes.util.find_library("c") would run
# `ldconfig -p` in a subprocess at every start (40 ms of CPU, more on a busy machine).
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
# Errors that mean "this kernel or filesystem cannot do it that way", not "it failed".
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EMLINK}


def _renameat2_noreplace(source: Path, target: Path) -> bool:
    """True when done; False when unsupported here; raises OSError for a real failure."""
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED - {errno.EPERM}:
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target` atomically, raising FileExistsError rather than replacing it.

    renameat2(RENAME_NOREPLACE) where the kernel and filesystem have it; else a hard link and
    an unlink (also atomic for the target name); else, on filesystems with neither (some
    FUSE/SMB mounts), a check then a rename: the only racy path, and only there. Raises
    OSError(EXDEV) across filesystems, like rename(2)."""
    if not _renameat2_noreplace(source, target):
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
            os.rename(source, target)
        else:
            os.unlink(source)
    operation_done()


def remove(path: Path) -> None:
    os.unlink(path)
    operation_done()
    fsync_dir(path.parent)


def remove_empty_folder(folder: Path) -> bool:
    """Remove `folder` if it is empty; False (and nothing changed) when it is not, or is gone."""
    try:
        os.rmdir(folder)
    except OSError:
        return False
    operation_done()
    fsync_dir(folder.parent)
    return True
