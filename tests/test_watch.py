"""Watch mode: the settle/ignore/journal rules on their own, then the real command in a subprocess."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from photos import photos
from prerequisites import requires

from notcat_sort.cache import FileKey
from notcat_sort.pipeline import StopFlag
from notcat_sort.report import Row, Status, read_report
from notcat_sort.watch import Journal, Retries, Scope, Settler, open_for_writing, should_flush

CLI = Path(sys.executable).parent / "notcat-sort"
SETTLE = 0.5
OUTPUT_FOLDERS = ("cat", "not-cat", "unsure")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the rules, without an observer -------------------------------------------------------------

def test_scope_ignores_temporary_names_hidden_files_outputs_and_the_report(tmp_path):
    scope = Scope(tmp_path, tuple(tmp_path / name for name in OUTPUT_FOLDERS), tmp_path / "notcat-sort-watch.csv")
    for name in ("a.jpg", "sub/b.JPG", "IMG_0001"):
        assert scope.accepts(str(tmp_path / name)), name
    for name in ("a.jpg.part", "a.crdownload", "a.jpg.tmp", "a.jpg~", ".a.jpg.Xy12Ab", "sub/.hidden/a.jpg",
                 "cat/a.jpg", "not-cat/sub/a.jpg", "unsure/a.jpg", "notcat-sort-watch.csv"):
        assert not scope.accepts(str(tmp_path / name)), name
    assert not scope.accepts("/elsewhere/a.jpg")
    assert scope.enters(str(tmp_path)) and scope.enters(str(tmp_path / "sub"))
    assert not scope.enters(str(tmp_path / "cat")) and not scope.enters(str(tmp_path / "cat" / "sub"))


def test_open_for_writing_sees_writers_not_readers(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    with open(path, "rb"):
        assert open_for_writing([str(path)]) == set()
    with open(path, "ab"):
        assert open_for_writing([str(path)]) == {str(path)}


def test_settler_waits_until_unchanged_for_the_settle_time_and_closed(tmp_path):
    now = [0.0]
    settler = Settler(SETTLE, clock=lambda: now[0])
    path = tmp_path / "photo.jpg"
    writer = open(path, "wb")  # noqa: SIM115 - held open across the checks, closed below
    writer.write(b"\xff\xd8\xff first chunk")
    writer.flush()
    settler.observe(str(path))
    now[0] = 0.4
    assert settler.ready() == []  # not settled yet
    writer.write(b" second chunk")
    writer.flush()
    os.utime(path, ns=(1, 2))  # a distinct mtime even on coarse clocks
    now[0] = 0.6
    assert settler.ready() == []  # changed since observed: waits again from 0.6
    now[0] = 1.2
    assert settler.ready() == []  # unchanged, but this test still has it open for writing
    writer.close()
    now[0] = 1.5
    assert settler.ready() == []  # closed, but its wait restarted at 1.2
    now[0] = 1.8
    assert settler.ready() == [str(path)] and len(settler) == 0

    gone = tmp_path / "gone.jpg"
    gone.write_bytes(b"data")
    settler.observe(str(gone))
    gone.unlink()
    now[0] = 5.0
    assert settler.ready() == [] and len(settler) == 0


def test_should_flush_keeps_bursts_together():
    assert not should_flush(0, 0.0, 0, 64, SETTLE)
    assert should_flush(3, 0.0, 0, 64, SETTLE)  # nothing else coming
    assert not should_flush(3, 0.1, 200, 64, SETTLE)  # a burst is still settling: wait for more
    assert should_flush(64, 0.1, 200, 64, SETTLE)  # enough for a large batch
    assert should_flush(3, SETTLE, 200, 64, SETTLE)  # but never hold a file back for long


def test_retries_send_one_probe_per_wait_then_all_once_it_goes_through():
    now = [0.0]
    retries = Retries(10.0, 40.0, clock=lambda: now[0])
    assert retries.seconds_to_next() is None and retries.due() == []
    for path in ("a", "b", "c"):
        retries.failed(path)  # the destination was full for all three
    assert retries.seconds_to_next() == 10.0 and retries.due() == []
    now[0] = 10.0
    assert retries.due() == ["a"] and retries.due() == []  # one probe, nothing more while it is out
    assert retries.seconds_to_next() is None
    retries.failed("a")  # still full: twice the wait, then the limit
    assert retries.seconds_to_next() == 20.0
    now[0] = 30.0
    assert retries.due() == ["b"]
    retries.failed("b")
    now[0] = 70.0
    assert retries.due() == ["c"]
    retries.failed("c")
    assert retries.seconds_to_next() == 40.0  # the limit, not 80
    now[0] = 110.0
    [probe] = retries.due()
    retries.handled(probe)  # it went through: the others at once, and the wait starts over
    assert retries.seconds_to_next() == 0.0 and sorted(retries.due()) == sorted({"a", "b", "c"} - {probe})
    assert len(retries) == 0 and retries.seconds_to_next() is None
    retries.failed("d")
    assert retries.seconds_to_next() == 10.0
    retries.handled("d")  # gone from the folder: nothing left to try
    assert retries.seconds_to_next() is None and retries.due() == []


def test_journal_skips_only_unchanged_files_with_a_final_row_for_the_same_action(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"content")
    key, digest = FileKey.of(path.stat()), sha256(b"content")

    def row(status: str, action: str = "copy", error: str = "", label: str = "cat") -> Row:
        return Row(str(path), label, "0.9", action, "", status, error, digest)

    assert Journal("copy", [row(Status.DONE)]).handled(str(path), key)
    assert Journal("copy", [row(Status.ERROR, error="cannot decode image", label="error")]).handled(str(path), key)
    full = "copy failed: the destination /mnt is full (No space left on device)"
    assert not Journal("copy", [row(Status.ERROR, error=full)]).handled(str(path), key)  # the next start tries again
    assert Journal("move", [row(Status.DONE, "move"), row(Status.UNDONE, "undo-move")]).handled(str(path), key)
    assert not Journal("copy", [row(Status.DONE), row(Status.STARTED)]).handled(str(path), key)
    assert not Journal("copy", [row(Status.INTERRUPTED, error=StopFlag().reason)]).handled(str(path), key)
    assert not Journal("link", [row(Status.DONE)]).handled(str(path), key)  # another action: do it
    assert not Journal("move", [row(Status.DONE, "move")]).handled(str(path), key)  # a new arrival
    path.write_bytes(b"changed")
    assert not Journal("copy", [row(Status.DONE)]).handled(str(path), FileKey.of(path.stat()))


# --- the real command ---------------------------------------------------------------------------

def _unique_images(count: int) -> list[bytes]:
    """`count` small images, distinct by content."""
    return [path.read_bytes() for path in photos(count)]


def _start(folder: Path, tmp_path: Path, action: str, log_name: str, *options: str, jobs: int = 1) -> subprocess.Popen:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data")}
    log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - the watcher writes to it until it is stopped
    return subprocess.Popen(
        [str(CLI), "--watch", str(folder), f"--{action}", "--settle", str(SETTLE), "-j", str(jobs), *options],
        env=env, stdout=log, stderr=log,
    )


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120)


def _wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rows(folder: Path) -> list[Row]:
    report = folder / "notcat-sort-watch.csv"
    return list(read_report(report)) if report.exists() else []


def _finished(folder: Path, path: Path) -> bool:
    return any(row.path == str(path) and row.status != Status.STARTED for row in _rows(folder))


def _sorted_hashes(folder: Path) -> Counter:
    return Counter(sha256(file.read_bytes()) for name in OUTPUT_FOLDERS if (folder / name).is_dir()
                   for file in (folder / name).rglob("*") if file.is_file())


@requires(Path("/proc/self/fd").is_dir(), "needs Linux /proc")
def test_watch_sorts_every_arrival_exactly_once_across_a_restart(tmp_path, model_copy):
    images = _unique_images(208)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    expected: dict[Path, bytes] = {}  # every image that must end up sorted, by its name in the inbox

    def put(name: str, data: bytes) -> Path:
        (inbox / name).write_bytes(data)
        expected[inbox / name] = data
        return inbox / name

    for number in range(3):
        put(f"early-{number}.jpg", images[number])
    # The model is loaded once and kept: its file is spoilt once the first batch is sorted, and
    # every later batch of this watcher must still be classified.
    watcher = _start(inbox, tmp_path, "move", "first.log", "--model", str(model_copy), jobs=2)
    _wait_for(lambda: all(_finished(inbox, path) for path in expected), "the files already there")
    model_copy.write_bytes(b"no longer a model")

    # Temporary names, written in full, are left alone until renamed.
    part, rsync_temp = inbox / "incoming.jpg.part", inbox / ".incoming-2.jpg.Xy12Ab"
    part.write_bytes(images[3])
    rsync_temp.write_bytes(images[4])

    # A slow writer: chunks, and one pause longer than the settle time with the file still open.
    slow, data = inbox / "slow.jpg", images[5]
    chunks = [data[i:i + len(data) // 4 + 1] for i in range(0, len(data), len(data) // 4 + 1)]
    with open(slow, "wb") as writer:
        for number, chunk in enumerate(chunks):
            writer.write(chunk)
            writer.flush()
            time.sleep(3 * SETTLE if number == 1 else SETTLE / 3)
            written = sum(len(c) for c in chunks[:number + 1])
            assert slow.exists() and slow.stat().st_size == written, "touched before it was complete"
            assert not any(row.path == str(slow) for row in _rows(inbox))
    expected[slow] = data
    _wait_for(lambda: _finished(inbox, slow), "the slowly written file")
    assert part.read_bytes() == images[3] and rsync_temp.read_bytes() == images[4]
    assert not any(row.path in (str(part), str(rsync_temp)) for row in _rows(inbox))
    part.rename(inbox / "incoming.jpg")
    rsync_temp.rename(inbox / "incoming-2.jpg")
    expected[inbox / "incoming.jpg"], expected[inbox / "incoming-2.jpg"] = images[3], images[4]

    # A burst, with a corrupt file among it; stop part-way through.
    (inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 40)
    burst_dir = tmp_path / "burst"
    burst_dir.mkdir()
    for number, image in enumerate(images[6:206]):
        (burst_dir / f"burst-{number:03}.jpg").write_bytes(image)
        expected[inbox / f"burst-{number:03}.jpg"] = image
    for file in burst_dir.iterdir():
        shutil.copy(file, inbox / file.name)
    _wait_for(lambda: sum(row.path.startswith(str(inbox / "burst-")) and row.status == Status.DONE
                          for row in _rows(inbox)) >= 20, "part of the burst")
    assert _stop(watcher) in (0, 1)  # 1 once the corrupt file has been reported

    # Arrivals while it is down, then a restart.
    put("while-down-1.jpg", images[206])
    put("while-down-2.jpg", images[207])
    watcher = _start(inbox, tmp_path, "move", "second.log", jobs=2)
    try:
        _wait_for(lambda: all(_finished(inbox, path) for path in [*expected, inbox / "corrupt.jpg"]),
                  "every file after the restart")
    finally:
        assert _stop(watcher) in (0, 1)

    rows = [row for row in _rows(inbox) if row.status != Status.STARTED]
    assert Counter(row.path for row in rows) == Counter([str(path) for path in expected] + [str(inbox / "corrupt.jpg")])
    by_path = {row.path: row for row in rows}
    for path, content in expected.items():
        assert by_path[str(path)].status == Status.DONE and by_path[str(path)].sha256 == sha256(content), path
    assert by_path[str(inbox / "corrupt.jpg")].status == Status.ERROR
    assert by_path[str(inbox / "corrupt.jpg")].error
    assert _sorted_hashes(inbox) == Counter(sha256(content) for content in expected.values())
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["corrupt.jpg", "notcat-sort-watch.csv"]


def test_watch_copy_restart_processes_nothing_twice_and_polling_sees_arrivals(tmp_path):
    images = _unique_images(5)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for number in range(3):
        (inbox / f"photo-{number}.jpg").write_bytes(images[number])
    watcher = _start(inbox, tmp_path, "copy", "first.log")
    _wait_for(lambda: all(_finished(inbox, inbox / f"photo-{n}.jpg") for n in range(3)), "the first files")
    assert _stop(watcher) == 0
    (inbox / "photo-3.jpg").write_bytes(images[3])
    watcher = _start(inbox, tmp_path, "copy", "second.log", "--polling")
    try:
        # All four are seen by the first scan and flushed as one batch, so by the time the new one
        # is reported the journal has decided about the other three.
        _wait_for(lambda: _finished(inbox, inbox / "photo-3.jpg"), "the file that arrived while down")
        (inbox / "photo-4.jpg").write_bytes(images[4])
        _wait_for(lambda: _finished(inbox, inbox / "photo-4.jpg"), "a file found by polling")
    finally:
        assert _stop(watcher) == 0

    rows = [row for row in _rows(inbox) if row.status != Status.STARTED]
    assert sorted(row.path for row in rows) == [str(inbox / f"photo-{n}.jpg") for n in range(5)]
    assert {row.status for row in rows} == {Status.DONE}
    assert all((inbox / f"photo-{n}.jpg").read_bytes() == images[n] for n in range(5))
    assert _sorted_hashes(inbox) == Counter(sha256(image) for image in images)
    # The log says what happened to each file as it happens, not a periodic count.
    logged = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    for row in rows:
        assert f"done {row.label}: {row.path} -> {row.destination}" in logged, logged
    assert "files so far" not in logged and "sorted 1 files" not in logged


@pytest.mark.parametrize("corrupt", [False, True], ids=["all-sorted", "one-failed"])
def test_ctrl_c_ends_a_watch_with_the_status_the_readme_and_help_give(tmp_path, corrupt):
    """A watcher runs until it is stopped, so Ctrl-C is how it ends, not an interruption: 0, or 1 if a
    file failed (README and --help say the same), and a summary of what it sorted, not a rate of arrivals."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for number, image in enumerate(_unique_images(2)):
        (inbox / f"photo-{number}.jpg").write_bytes(image)
    if corrupt:
        (inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 40)
    watcher = _start(inbox, tmp_path, "copy", "watch.log")
    _wait_for(lambda: all(_finished(inbox, path) for path in inbox.glob("*.jpg")), "the files there at start")
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=120) == (1 if corrupt else 0)
    log = (tmp_path / "watch.log").read_text()
    files = 3 if corrupt else 2
    assert re.search(rf"^{files} files sorted while watching for \d+ s, 0 from cache$", log, flags=re.MULTILINE), log
    assert "/s)" not in log and f"failed: {int(corrupt)}" in log.splitlines()

    rule = "--watch runs until Ctrl-C or SIGTERM stops it, and then exits 0, or 1 if any file failed."
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    help_text = " ".join(subprocess.run([str(CLI), "--help"], capture_output=True, text=True).stdout.split())
    assert rule.replace("--watch", "`--watch`") in readme and rule in help_text
