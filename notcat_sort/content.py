"""A file's identity is its content: the sha256 that the cache, the actions and undo all agree on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

# How a caller learns a file's digest: by reading it (sha256_file) or from what it already knows.
DigestOf = Callable[[Path], str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
