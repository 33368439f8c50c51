"""What to do when the destination name is taken (modelled on organize's conflict modes)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from notcat_sort.actions.common import sha256_file


class OnConflict(str, Enum):
    RENAME = "rename"  # keep both: `name (1).jpg`
    SKIP = "skip"  # leave the source where it is


def same_content(path: Path, sha256: str | None, source: Path) -> bool:
    try:
        if path.stat().st_size != source.stat().st_size:
            return False
        return sha256_file(path) == (sha256 or sha256_file(source))
    except OSError:
        return False


def numbered(destination: Path, number: int) -> Path:
    return destination.with_name(f"{destination.stem} ({number}){destination.suffix}")


def resolve(source: Path, destination: Path, sha256: str | None, mode: OnConflict) -> tuple[str, Path]:
    """("free", path to use) or ("identical", existing copy) or ("taken", destination)."""
    candidate, number = destination, 0
    while os.path.lexists(candidate):
        if same_content(candidate, sha256, source):
            return "identical", candidate
        if mode is OnConflict.SKIP:
            return "taken", destination
        number += 1
        candidate = numbered(destination, number)
    return "free", candidate

