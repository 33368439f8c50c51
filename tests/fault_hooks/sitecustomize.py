"""Test-only faults, loaded at interpreter start-up by the CLI subprocesses of the fault tests
(this folder is put on their PYTHONPATH; Python imports `sitecustomize` from it by itself).
Every fault is off unless its variable is set, and each is a real one, in the process itself:

- NOTCAT_TEST_DECODER_CRASH=TEXT: opening an image whose bytes contain TEXT dereferences a NULL
  pointer (a real SIGSEGV, as a native decoder's bug would give);
- NOTCAT_TEST_DECODER_KILL=TEXT: opening such an image SIGKILLs the process (a `kill -9` while
  that file is being decoded);
- NOTCAT_TEST_DECODE_LOG=FILE: each opening of an image with one of those texts, or with the text
  of NOTCAT_TEST_DECODE_WATCH, first appends `PID TEXT` to FILE (which process decoded it);
- NOTCAT_TEST_CORRUPT_COPY=TEXT: a `.notcat-partial` copy whose name contains TEXT gets one byte
  flipped just before it is fsynced (a write that comes out one byte wrong).
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
from pathlib import Path

_CRASH = os.environ.get("NOTCAT_TEST_DECODER_CRASH", "").encode()
_KILL = os.environ.get("NOTCAT_TEST_DECODER_KILL", "").encode()
_WATCH = os.environ.get("NOTCAT_TEST_DECODE_WATCH", "").encode()
_LOG = os.environ.get("NOTCAT_TEST_DECODE_LOG")
_CORRUPT = os.environ.get("NOTCAT_TEST_CORRUPT_COPY")


def _content(source: object) -> bytes:
    if isinstance(source, (str, bytes, os.PathLike)):
        return Path(os.fsdecode(source)).read_bytes()
    if isinstance(source, io.BytesIO):
        return source.getvalue()
    return b""


def _watch_decoding() -> None:
    from PIL import Image

    opened = Image.open

    def open_image(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        content = _content(source)
        for marker, fault in ((_CRASH, "crash"), (_KILL, "kill"), (_WATCH, "")):
            if marker and marker in content:
                if _LOG:
                    with open(_LOG, "a") as log:
                        log.write(f"{os.getpid()} {marker.decode()}\n")
                if fault == "crash":
                    ctypes.string_at(0)  # reads address 0: SIGSEGV
                if fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
        return opened(source, *args, **kwargs)

    Image.open = open_image


def _corrupt_copies() -> None:
    synced = os.fsync

    def fsync(descriptor: int) -> None:
        try:
            name = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            name = ""
        if _CORRUPT and _CORRUPT in os.path.basename(name) and name.endswith(".notcat-partial"):
            with open(f"/proc/self/fd/{descriptor}", "r+b") as copy:
                middle = os.fstat(copy.fileno()).st_size // 2
                copy.seek(middle)
                byte = copy.read(1)
                copy.seek(middle)
                copy.write(bytes([byte[0] ^ 0xFF]))
        synced(descriptor)

    os.fsync = fsync


if _CRASH or _KILL or _WATCH:
    _watch_decoding()
if _CORRUPT:
    _corrupt_copies()
