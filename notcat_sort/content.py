"""A file's identity is its content: the sha256 that the cache, the actions and undo all agree on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

# How a caller learns a file's digest: by reading it (sha256_file) or from what it already knows.
DigestOf = Callable[[Path], str]
# Bytes read at a time when a file is streamed (hashed or copied) rather than held whole.
READ_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
