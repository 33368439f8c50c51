"""A decoder that crashes the process on one file must not make a library unsortable.

libjpeg, libheif, libraw and libjxl are native code: a segfault or an abort there ends the
whole process, with no exception to turn into an error row, and a rerun would end at the same
file. So every process that decodes notes, in the user data folder, which files it is decoding
right now: a slot per decoding thread in a small file (`decoding/in-flight-*`) that it holds
locked while it lives and removes when it exits normally. A process that died leaves its file
behind, unlocked; the next process to decode anything (a rerun, a restarted watcher, the
cluster worker that Dask gives the task again) takes it over, and each file that was in
flight becomes a suspect (`decoding/suspects/KEY`).

A suspect is decoded in a child process, one file at a time. If the child survives, the file
was innocent (say it was in flight at a `kill -9`) and what the child decoded is used. If the
child dies, the file is quarantined (`decoding/crashed/KEY`): an error row "the image decoder
crashed on this file", and no process decodes it again while its key is the same, that is,
until the file changes. KEY is the file's stat key (device, inode, size, mtime), or the sha256
of bytes sent from elsewhere (a cluster worker given the file's content).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

# A slot holds a 4-byte length and then `KEY\0PATH`; PATH_MAX is 4096 bytes on Linux.
_SLOT = 8192
_LENGTH = 4
_LOG_PREFIX = "in-flight-"


def default_folder() -> Path:
    return Path(user_data_dir("notcat-sort")) / "decoding"


@dataclass(frozen=True)
class Crash:
    """A file that killed the process decoding it."""

    path: str
    reason: str  # how the child died, e.g. "killed by SIGSEGV"
    sha256: str = ""

    @property
    def message(self) -> str:
        return (f"the image decoder crashed on this file ({self.reason}); it is not decoded again until the "
                "file changes")


def _record(key: str, path: str) -> bytes:
    data = key.encode("ascii") + b"\0" + os.fsencode(path)
    data = data[:_SLOT - _LENGTH]
    return len(data).to_bytes(_LENGTH, "little") + data


def _in_flight(log: bytes) -> Iterator[tuple[str, str]]:
    """(key, path) of each file a log's slots say was being decoded."""
    for start in range(0, len(log) - _LENGTH + 1, _SLOT):
        length = int.from_bytes(log[start:start + _LENGTH], "little")
        if 0 < length <= _SLOT - _LENGTH:
            key, _, path = log[start + _LENGTH:start + _LENGTH + length].partition(b"\0")
            yield key.decode("ascii", "replace"), os.fsdecode(path)


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` with `data` (a temporary name first, so a reader never sees half of it)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class DecoderGuard:
    """This process's in-flight slots, and the suspects and crashes that all processes share."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._suspects = folder / "suspects"
        self._crashed = folder / "crashed"
        self._lock = threading.Lock()  # the slots and the file that holds them
        self._isolating = threading.Lock()  # one child at a time
        # One refresh at a time: a thread that found a dead process's file locked by another thread's
        # take-over would otherwise read the suspects before that take-over wrote them, and decode one here.
        self._refreshing = threading.Lock()
        self._log: int | None = None
        self._log_path: Path | None = None
        self._unusable = False  # the folder cannot be written: decode unguarded
        self._free: list[int] = []
        self._slots = 0
        self._known_suspects: set[str] = set()
        self._known_crashed: set[str] = set()

    # --- what is known ---

    def refresh(self) -> None:
        """Take over the in-flight files of processes that died, and read the suspects and crashes."""
        with self._refreshing:
            try:
                entries = list(os.scandir(self.folder))
            except OSError:  # no folder yet: nothing ever crashed here
                return
            for entry in entries:
                if entry.name.startswith(_LOG_PREFIX) and entry.path != str(self._log_path):
                    self._take_over(Path(entry.path))
            self._known_suspects = self._names(self._suspects)
            self._known_crashed = self._names(self._crashed)

    @staticmethod
    def _names(folder: Path) -> set[str]:
        try:
            return {name for name in os.listdir(folder) if not name.startswith(".")}
        except OSError:
            return set()

    def _take_over(self, log: Path) -> None:
        """If the process that wrote `log` is gone (its lock is free), make its files in flight suspects."""
        try:
            descriptor = os.open(log, os.O_RDONLY)
        except OSError:
            return
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # its process is alive (or another one is taking it over)
            if os.stat(log).st_ino != os.fstat(descriptor).st_ino:
                return  # taken over and removed meanwhile
            with os.fdopen(os.dup(descriptor), "rb") as handle:
                content = handle.read()
            for key, path in _in_flight(content):
                if key not in self._names(self._crashed):
                    self._suspects.mkdir(parents=True, exist_ok=True)
                    _write_new(self._suspects / key, os.fsencode(path))
            log.unlink()
        except OSError:
            pass  # a read-only data folder: nothing can be learnt here
        finally:
            os.close(descriptor)

    def crashed(self, key: str) -> Crash | None:
        if key not in self._known_crashed:
            return None
        try:
            record = json.loads((self._crashed / key).read_text(encoding="utf-8"))
            return Crash(record["path"], record["reason"], record.get("sha256", ""))
        except (OSError, ValueError, KeyError):
            return Crash("", "reason not recorded")

    def suspect(self, key: str) -> bool:
        return key in self._known_suspects

    # --- decoding in this process ---

    @contextmanager
    def in_flight(self, key: str, path: str) -> Iterator[None]:
        """Decode in this process, the file noted as in flight meanwhile. Without a data folder to
        note it in, decoding goes on unguarded: the run must not depend on it."""
        slot = self._take_slot()
        if slot is None:
            yield
            return
        assert self._log is not None
        try:
            os.pwrite(self._log, _record(key, path), slot * _SLOT)
        except OSError:
            pass
        try:
            yield
        finally:
            with suppress(OSError):
                os.pwrite(self._log, bytes(_LENGTH), slot * _SLOT)
            with self._lock:
                self._free.append(slot)

    def _take_slot(self) -> int | None:
        with self._lock:
            if self._log is None and (self._unusable or not self._open_log()):
                return None
            if self._free:
                return self._free.pop()
            self._slots += 1
            return self._slots - 1

    def _open_log(self) -> bool:
        """Make this process's in-flight file, locked before it gets the name others look for."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{_LOG_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            temporary = self.folder / f".{name}"
            descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.replace(temporary, self.folder / name)
        except OSError:
            self._unusable = True
            return False
        self._log, self._log_path = descriptor, self.folder / name
        atexit.register(self.close)
        return True

    def close(self) -> None:
        """At a normal exit: nothing is in flight any more."""
        with self._lock:
            if self._log is None or self._log_path is None:
                return
            with suppress(OSError):
                self._log_path.unlink()
            os.close(self._log)
            self._log = self._log_path = None

    # --- decoding a suspect in a child ---

    def isolate(self, key: str, path: str, decode: Callable[..., Any], *args: Any) -> Any:
        """`decode(*args)` for the suspect `key` in a child process: its result, or a Crash (also
        recorded, so that no process tries the file again while it is unchanged)."""
        with self._isolating:
            done = subprocess.run([sys.executable, "-m", __name__], input=pickle.dumps((decode, args)),
                                  capture_output=True, check=False)
            if done.returncode == 0:
                result = pickle.loads(done.stdout)
            else:
                reason = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
                          else f"exit status {done.returncode}")
                result = Crash(path, reason, _sha256(path))
                with suppress(OSError):
                    self._crashed.mkdir(parents=True, exist_ok=True)
                    _write_new(self._crashed / key, json.dumps(vars(result)).encode("utf-8"))
                self._known_crashed.add(key)
            with suppress(OSError):
                (self._suspects / key).unlink()
            self._known_suspects.discard(key)
            return result


def _sha256(path: str) -> str:
    """For the crash record: the digest of what crashed (hashing never runs a decoder)."""
    from notcat_sort.content import sha256_file

    try:
        return sha256_file(Path(path))
    except OSError:
        return ""


_guards: dict[Path, DecoderGuard] = {}
_guards_lock = threading.Lock()


def decoder_guard() -> DecoderGuard:
    """This process's guard over its data folder (as the environment names it now)."""
    folder = default_folder()
    with _guards_lock:
        if folder not in _guards:
            _guards[folder] = DecoderGuard(folder)
        return _guards[folder]


def _child() -> None:
    """Run one pickled call and pickle its result to stdout; whatever the call prints goes to stderr."""
    output = sys.stdout.buffer
    sys.stdout = sys.stderr
    decode, args = pickle.loads(sys.stdin.buffer.read())
    output.write(pickle.dumps(decode(*args)))
    output.flush()


if __name__ == "__main__":
    _child()
