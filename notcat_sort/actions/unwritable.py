"""Destinations that cannot take more files: a full disk, a quota used up, a read-only mount.

Once a file action fails for one of these reasons, every later file bound for the same
filesystem would fail the same way, one by one (on a big library, thousands of partial copies
written and removed). `Unwritable` remembers the filesystem so the rest are not tried.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from notcat_sort.report import DISK_FULL


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The root of the filesystem that holds (or would hold) `path`."""
    path = Path(os.path.abspath(_existing(path)))
    device = os.stat(path).st_dev
    while path.parent != path and os.stat(path.parent).st_dev == device:
        path = path.parent
    return path


def _read_only(folder: Path) -> str:
    return f"cannot write in {folder}: it is on a read-only file system (mounted at {mount_point(folder)})"


def read_only_problem(folder: Path) -> str | None:
    """What to say about writing in `folder` when its filesystem is mounted read-only; else None."""
    try:
        return _read_only(folder) if os.statvfs(folder).f_flag & os.ST_RDONLY else None
    except OSError:
        return None


def describe(error: OSError, target: Path) -> str | None:
    """What a failure to write `target` says about its filesystem (`the destination /mnt/usb is
    full (No space left on device)`), or None when it says nothing about it."""
    code = error.errno or 0
    if code in DISK_FULL:
        return f"the destination {mount_point(target)} is full ({os.strerror(code)})"
    if code == errno.EROFS:
        return _read_only(_existing(target.parent))
    return None


class Unwritable:
    """The filesystems found full or read-only during a run, by device; safe across threads."""

    def __init__(self) -> None:
        self._found: dict[int, str] = {}
        self._lock = threading.Lock()

    def note(self, error: OSError, target: Path) -> str | None:
        """Remember `target`'s filesystem if `error` says it takes no more; what to say, or None."""
        reason = describe(error, target)
        if reason is not None:
            try:
                device = os.stat(_existing(target)).st_dev
            except OSError:
                return reason
            with self._lock:
                self._found.setdefault(device, reason)
        return reason

    def reason(self, target: Path) -> str | None:
        """Why nothing more can be written where `target` would go, if its filesystem was found so."""
        if not self._found:
            return None
        try:
            device = os.stat(_existing(target)).st_dev
        except OSError:
            return None
        with self._lock:
            return self._found.get(device)
