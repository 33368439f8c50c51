"""A file's identity is its content: the sha256 that the cache, the actions and undo all agree on."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from pathlib import Path

# How a caller learns a file's digest: by reading it (sha256_file) or from what it already knows.
DigestOf = Callable[[Path], str]
# Bytes read at a time when a file is copied.
READ_BLOCK = 1 << 20

# Bytes hashed at a time: a block that stays in the core's cache between being read and being
# hashed (with 1 MiB blocks, reading and hashing a 3 MB camera JPEG took 3.6 ms here, with 64 KiB 2.7).
HASH_BLOCK = 64 * 1024
# One block buffer per thread, reused for every file it hashes: a fresh block per read costs a
# page fault per 4 KiB.
_buffers = threading.local()


def sha256_rest(handle: io.RawIOBase | io.BufferedIOBase, digest: hashlib._Hash | None = None) -> str:
    """The hex digest of `digest` (a sha256 already fed what came before, or a new one) once fed
    the rest of `handle`."""
    digest = digest or hashlib.sha256()
    buffer: memoryview | None = getattr(_buffers, "block", None)
    if buffer is None:
        buffer = _buffers.block = memoryview(bytearray(HASH_BLOCK))
    while count := handle.readinto(buffer):
        digest.update(buffer[:count])
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as handle:
        return sha256_rest(handle)
