"""What to do when the destination name is taken (modelled on organize's conflict modes)."""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from enum import Enum
from pathlib import Path

from notcat_sort.content import DigestOf, sha256_file


class OnConflict(str, Enum):
    RENAME = "rename"  # keep both: `name (1).jpg`
    SKIP = "skip"  # leave the source where it is


def holds_same_file(existing: Path, source: Path, sha256: str | None, follow_symlinks: bool,
                    digest_of: DigestOf = sha256_file) -> bool:
    """Whether `existing` already holds the source's bytes. A symbolic link counts only when
    `follow_symlinks` and it leads to the source itself (a re-run of --link); for a move it never
    does, since removing the source would leave the link dangling."""
    try:
        if stat.S_ISLNK(os.lstat(existing).st_mode):
            return follow_symlinks and os.path.samefile(existing, source)
        if existing.stat().st_size != source.stat().st_size:
            return False
        return digest_of(existing) == (sha256 or digest_of(source))
    except OSError:
        return False


def numbered(destination: Path, number: int) -> Path:
    return destination.with_name(f"{destination.stem} ({number}){destination.suffix}")


def resolve(
    source: Path, destination: Path, sha256: str | None, mode: OnConflict,
    follow_symlinks: bool = True, reserved: Collection[Path] = (), digest_of: DigestOf = sha256_file,
) -> tuple[str, Path]:
    """("free", path to use) or ("identical", the copy already there) or ("taken", destination).

    `reserved` names are treated as taken: they are promised to other files of the same batch.
    `digest_of` may answer from a cache: an "identical" verdict only ever skips work, and a move
    re-hashes both files before it removes a duplicate source."""
    candidate, number = destination, 0
    while candidate in reserved or os.path.lexists(candidate):
        if candidate not in reserved and holds_same_file(candidate, source, sha256, follow_symlinks, digest_of):
            return "identical", candidate
        if mode is OnConflict.SKIP:
            return "taken", destination
        number += 1
        candidate = numbered(destination, number)
    return "free", candidate
