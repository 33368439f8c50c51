"""Watch mode: sort each image that lands in a folder, once it is complete.

The decisions are kept apart from the observer plumbing so they can be tested on their own:
`Scope` says which paths are ours to sort (not temporary names, not the output folders),
`Settler` says when a file is complete (its size and mtime unchanged for the settle time and
no process holding it open for writing), `Journal` says what the report already records as
handled, `Retries` says when to try again a file that found its destination full, and
`should_flush` keeps batches large. `watch()` wires them to a watchdog observer
and feeds batches through the same `pipeline.sort_files` as a one-off run; the model session
is loaded once and kept across those calls.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from notcat_sort.actions import Action
from notcat_sort.cache import FileKey
from notcat_sort.content import sha256_file
from notcat_sort.decide import Label
from notcat_sort.pipeline import Result, SortSettings, sort_files
from notcat_sort.report import ReportWriter, Row, Status, final_rows, image_row
from notcat_sort.scan import Candidate, is_image_file, scan
from notcat_sort.undo import undo_report_path

# Names that downloaders, browsers, editors and copy tools give a file until it is complete.
TEMPORARY_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".swp", "~")
# File events that can mean new or changed content; opened/closed-without-write/attrib events
# are left out, since reading or hard-linking a file to sort it would otherwise re-trigger it.
WATCHED_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
                  DirCreatedEvent, DirMovedEvent]
POLL_INTERVAL = 1.0  # seconds between snapshots with --polling
# A file whose action failed while the file itself is fine (a full or read-only destination) is tried
# again after this many settle times (60 s at the default 3 s), then twice as long each time, up to the second.
RETRY_SETTLES = (20.0, 200.0)
IDLE_WAKE = 0.5  # seconds: how often an idle watcher checks for a stop request


def is_temporary_name(name: str) -> bool:
    """Partial downloads, editor backups and dot-files (rsync writes `.name.XXXXXX`)."""
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


@dataclass(frozen=True)
class Scope:
    """Which paths under the watched folder are ours to sort."""

    root: Path
    output_folders: tuple[Path, ...]
    report: Path | None = None

    def enters(self, folder: str) -> bool:
        """A folder to look into: the root, or one that is not hidden and not where we sort to."""
        path = Path(folder)
        return path == self.root or not (
            path.name.startswith(".") or any(path.is_relative_to(out) for out in self.output_folders))

    def accepts(self, path: str) -> bool:
        """A file to consider: inside root, outside the output folders, not a temporary name."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return False
        if not parts or any(part.startswith(".") for part in parts) or is_temporary_name(parts[-1]):
            return False
        if Path(path) == self.report:
            return False
        return not any(Path(path).is_relative_to(folder) for folder in self.output_folders)


def _writable(fdinfo: str) -> bool:
    try:
        with open(fdinfo) as handle:
            for line in handle:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


def open_for_writing(paths: Collection[str], proc: str = "/proc") -> set[str]:
    """Those of `paths` that a process we may inspect has open for writing (Linux /proc/*/fd).

    Elsewhere, or for other users' processes, this finds nothing and the settle time alone decides."""
    wanted = {os.path.realpath(path): path for path in paths}
    found: set[str] = set()
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_folder = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_folder)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_folder}/{fd}")
            except OSError:
                continue
            if target in wanted and _writable(f"{proc}/{pid}/fdinfo/{fd}"):
                found.add(wanted[target])
    return found


def _signature(path: str) -> FileKey | None:
    try:
        return FileKey.of(os.stat(path))
    except OSError:
        return None


class Settler:
    """Holds changed files until they are complete: the same (inode, size, mtime) for `settle`
    seconds, and not open for writing. A file seen to change starts its wait again."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic,
                 writers: Callable[[Collection[str]], set[str]] = open_for_writing) -> None:
        self.settle = settle
        self._clock = clock
        self._writers = writers
        self._pending: dict[str, tuple[FileKey, float]] = {}  # path -> (signature, seen unchanged since)

    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, path: str) -> None:
        """Something happened to `path`: (re)start its wait unless it is unchanged."""
        signature = _signature(path)
        if signature is None:
            self._pending.pop(path, None)
        elif path not in self._pending or self._pending[path][0] != signature:
            self._pending[path] = (signature, self._clock())

    def forget(self, path: str) -> None:
        self._pending.pop(path, None)

    def seconds_to_next(self) -> float | None:
        """How long until the earliest pending file could be complete; None when none is pending."""
        if not self._pending:
            return None
        earliest = min(since for _, since in self._pending.values())
        return max(0.0, earliest + self.settle - self._clock())

    def ready(self) -> list[str]:
        """Remove and return the files that are now complete."""
        now = self._clock()
        stable = []
        for path, (signature, since) in list(self._pending.items()):
            if now - since < self.settle:
                continue
            current = _signature(path)
            if current is None:
                del self._pending[path]
            elif current != signature:
                self._pending[path] = (current, now)
            else:
                stable.append(path)
        busy = self._writers(stable) if stable else set()
        for path in busy:  # still being written, though slowly: check again after another settle time
            self._pending[path] = (self._pending[path][0], now)
        done = [path for path in stable if path not in busy]
        for path in done:
            del self._pending[path]
        return done


def should_flush(waiting: int, oldest_wait: float, settling: int, flush_size: int, max_wait: float) -> bool:
    """Send the complete files on when nothing else is about to complete, when there are enough
    for a large batch, or when the first has waited long enough: bursts go through in big batches."""
    return waiting > 0 and (settling == 0 or waiting >= flush_size or oldest_wait >= max_wait)


class Retries:
    """Files whose action failed for a reason outside them (the destination full or read-only), and
    when to try them again while the watch goes on: a disk that had no room may have some later.

    One file goes first, as a probe, after the wait; while it fails the wait doubles (to a limit),
    and once it goes through all the others follow at once. So a disk that stays full adds one
    report row per wait, not one per file, and a freed one is used within a wait."""

    def __init__(self, first: float, most: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._first, self._most, self._clock = first, most, clock
        self._paths: dict[str, None] = {}  # in the order they failed
        self._wait = first
        self._due: float | None = None  # when the next probe goes; None while one is out or none is kept
        self._probe: str | None = None
        self._all_due = False

    def __len__(self) -> int:
        return len(self._paths)

    def failed(self, path: str) -> None:
        self._paths[path] = None
        if path == self._probe:  # still no room: wait longer
            self._probe, self._wait = None, min(self._most, 2 * self._wait)
            self._all_due = False
        if self._probe is None and self._due is None:
            self._due = self._clock() + self._wait

    def handled(self, path: str) -> None:
        """`path` went through (or is gone, or the file itself failed): not to be tried again."""
        self._paths.pop(path, None)
        if path == self._probe:  # the destination takes files again: all the others now
            self._probe, self._wait, self._all_due = None, self._first, True
        if not self._paths:
            self._due, self._all_due = None, False

    def seconds_to_next(self) -> float | None:
        if self._all_due and self._paths:
            return 0.0
        return None if self._due is None else max(0.0, self._due - self._clock())

    def due(self) -> list[str]:
        """Remove and return the files to try now."""
        if self._all_due:
            paths, self._paths, self._all_due, self._due = list(self._paths), {}, False, None
            return paths
        if self._due is None or self._clock() < self._due or not self._paths:
            return []
        self._probe = next(iter(self._paths))
        del self._paths[self._probe]
        self._due = None
        return [self._probe]


@dataclass(frozen=True)
class _Entry:
    status: str
    action: str
    sha256: str
    file_key: FileKey | None = None


class Journal:
    """What the report records as handled, so a restart or a repeated event processes nothing twice.

    A file counts as handled when its content is unchanged and its last row is final: done,
    skipped or planned for the same action, an error of the file itself (it cannot be decoded),
    or undone by `--undo` (the user took it back; read from the undo report beside this one).
    One interrupted by a stop is not, nor one whose action failed (a full or read-only
    destination, say): the next start tries it again. A `move` that is done cannot have left the file
    where it was, so a file found there again is a new arrival and is sorted."""

    FINAL = frozenset({Status.DONE, Status.SKIPPED, Status.ERROR, Status.PLANNED, Status.UNDONE})

    @classmethod
    def _final(cls, row: Row) -> bool:
        return row.status in cls.FINAL and (row.status != Status.ERROR or row.label == Label.ERROR)

    def __init__(self, action: str, rows: Iterable[Row] = ()) -> None:
        self.action = action
        self._entries: dict[str, _Entry] = {}
        for row in rows:
            if self._final(row) and row.sha256:
                self._entries[row.path] = _Entry(row.status, row.action, row.sha256)
            else:
                self._entries.pop(row.path, None)

    @classmethod
    def from_report(cls, action: str, report: Path | None) -> Journal:
        reports = [] if report is None else [report, undo_report_path(report)]
        return cls(action, itertools.chain.from_iterable(final_rows(path) for path in reports if path.exists()))

    def record(self, result: Result) -> bool:
        """Note `result`; True when its action failed with the file itself fine (to be tried again)."""
        prediction = result.prediction
        row = image_row(result, self.action)
        if self._final(row) and prediction.sha256:
            self._entries[row.path] = _Entry(row.status, row.action, prediction.sha256, prediction.file_key)
            return False
        self._entries.pop(row.path, None)
        return row.status == Status.ERROR and result.label is not Label.ERROR

    def handled(self, path: str, signature: FileKey) -> bool:
        entry = self._entries.get(path)
        if entry is None or (entry.action != self.action and entry.status != Status.UNDONE):
            return False
        if entry.action == Action.MOVE and entry.status == Status.DONE:
            return False
        if entry.file_key is not None and entry.file_key == signature:
            return True
        try:
            return sha256_file(Path(path)) == entry.sha256
        except OSError:
            return False


class _Inbox(FileSystemEventHandler):
    """Collects events from the observer thread for the main loop, and wakes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, str]] = []  # (kind, path): "file", "gone" or "folder"
        self.wake = threading.Event()

    def put(self, kind: str, path: str) -> None:
        with self._lock:
            self._events.append((kind, path))
        self.wake.set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        source, destination = os.fsdecode(event.src_path), os.fsdecode(event.dest_path)
        if event.is_directory:
            self.put("folder", destination or source)
        elif isinstance(event, (FileMovedEvent, FileDeletedEvent)):
            self.put("gone", source)
            if destination:
                self.put("file", destination)
        else:
            self.put("file", source)

    def drain(self, timeout: float) -> list[tuple[str, str]]:
        self.wake.wait(timeout)
        with self._lock:
            events, self._events = self._events, []
            self.wake.clear()
        return events


def _observer(polling: bool, scope: Scope) -> BaseObserver:
    if not polling:
        return Observer()

    def listdir(folder: str | None) -> Iterator[os.DirEntry]:
        """Snapshots skip the output folders, so polling costs no more as they fill up."""
        with os.scandir(folder) as entries:
            yield from (entry for entry in entries if not entry.is_dir() or scope.enters(entry.path))

    return PollingObserverVFS(os.stat, listdir, polling_interval=POLL_INTERVAL)


def watch(
    root: Path, settings: SortSettings, report: ReportWriter, journal: Journal,
    stop: Callable[[], bool], settle: float, polling: bool = False,
) -> Iterator[Result]:
    """Sort what is in `root`, then each image that arrives, until `stop()`; yield every Result.

    A stop request lets the batches already being classified finish; the files not yet
    handed over are left untouched for the next start."""
    root = Path(os.path.abspath(root))
    scope = Scope(root, tuple(settings.output_folders([root])),
                  Path(os.path.abspath(report.path)) if report.path else None)
    inbox = _Inbox()
    observer = _observer(polling, scope)
    observer.schedule(inbox, str(root), recursive=True, event_filter=WATCHED_EVENTS)
    observer.start()  # before the first scan, so nothing that lands meanwhile is missed
    settler = Settler(settle)
    retries = Retries(RETRY_SETTLES[0] * settle, RETRY_SETTLES[1] * settle)
    waiting: dict[str, float] = {}  # complete files not yet sorted -> when they became complete
    flush_size = 4 * settings.classify.jobs * settings.classify.batch_size
    inbox.put("folder", str(root))
    try:
        while not stop():
            pauses = [pause for pause in (settler.seconds_to_next(), retries.seconds_to_next()) if pause is not None]
            if waiting:
                pauses.append(settle)
            pause = min(pauses, default=None)
            for kind, path in inbox.drain(min(IDLE_WAKE, pause) if pause is not None else IDLE_WAKE):
                if kind == "folder":
                    if scope.enters(path) and os.path.isdir(path):
                        for candidate in scan([Path(path)], skip=scope.output_folders):
                            if scope.accepts(str(candidate.path)):
                                settler.observe(str(candidate.path))
                    continue
                waiting.pop(path, None)
                if kind == "gone":
                    settler.forget(path)
                    retries.handled(path)
                elif scope.accepts(path):
                    settler.observe(path)
            now = time.monotonic()
            for path in itertools.chain(settler.ready(), retries.due()):
                waiting.setdefault(path, now)
            oldest = now - min(waiting.values()) if waiting else 0.0
            if not should_flush(len(waiting), oldest, len(settler), flush_size, settle):
                continue
            batch = []
            for path in waiting:
                if (found := _candidate(path, root, journal)) is not None:
                    batch.append(found)
                else:  # gone, or handled meanwhile
                    retries.handled(path)
            waiting.clear()
            for result in sort_files(itertools.takewhile(lambda _: not stop(), batch), settings, report):
                path = str(result.prediction.candidate.path)
                if journal.record(result):
                    retries.failed(path)
                else:
                    retries.handled(path)
                yield result
    finally:
        observer.stop()
        observer.join()


def _candidate(path: str, root: Path, journal: Journal) -> Candidate | None:
    """The file as a Candidate, unless it is gone, not an image, or already handled."""
    signature = _signature(path)
    if signature is None or not is_image_file(path) or journal.handled(path, signature):
        return None
    return Candidate(Path(path), root)


def default_watch_report(settings: SortSettings, root: Path, reports_folder: Path) -> Path:
    """One fixed report per watched folder, as the journal across restarts: beside the sorted
    files when files change, else (report only) in `reports_folder`, so nothing in `root` changes."""
    root = Path(os.path.abspath(root))
    if settings.changes_files:
        return settings.output_base(root) / "notcat-sort-watch.csv"
    return reports_folder / f"notcat-sort-watch-{hashlib.sha256(os.fsencode(root)).hexdigest()[:12]}.csv"
