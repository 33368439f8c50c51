"""A decoder that crashes the process on one file (a real SIGSEGV, in the CLI's own process, from
the test-only hooks in tests/fault_hooks) ends that run, but never makes a library unsortable:
the rerun decodes the files that were in flight in a child process, one at a time; the one that
kills its child becomes an error row and is not decoded again until it changes; the others,
innocent, come out classified. The same holds for a watcher restarted after the crash and for a
cluster whose worker the crash kills; serve decodes uploads in child processes, so such an upload
ends neither the server nor the uploads sent beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_csv
from fault_support import with_faults
from photos import photo_bytes, photos
from prerequisites import need_module, requires

from notcat_sort.decoder_guard import DecoderGuard
from notcat_sort.report import Status, read_report

CRASH = "NOTCAT-TEST-DECODER-CRASH"
CRASHED = "the image decoder crashed on this file"


def _library(folder: Path, count: int, marked: dict[str, str]) -> Path:
    """`count` small JPEGs, and for each name in `marked` one whose bytes end in that text (after
    the JPEG's end, where a decoder ignores it), so that the hooks can tell it by its content."""
    folder.mkdir(parents=True)
    for photo in photos(count):
        shutil.copyfile(photo, folder / photo.name)
    for number, (name, text) in enumerate(marked.items()):
        (folder / name).write_bytes(photo_bytes(1000 + number) + text.encode())
    return folder


def _decodes(log: Path) -> list[tuple[int, str]]:
    """(pid, marker) of each opening of a marked image, in order."""
    if not log.exists():
        return []
    return [(int(pid), marker) for pid, marker in (line.split() for line in log.read_text().splitlines())]


def _run(cli: Path, env: dict[str, str], *args: object) -> tuple[int, int, str]:
    """(pid, exit status, stderr) of one run of the installed command."""
    process = subprocess.Popen([str(cli), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    return process.pid, process.returncode, stderr


def _final(report: Path) -> dict[str, dict[str, str]]:
    """The last row of each file of a report, by file name."""
    return {Path(row["path"]).name: row for row in read_csv(report.read_text())}


def test_a_crashing_file_is_quarantined_and_the_rest_sorted(cli: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    photos_folder = _library(tmp_path / "photos", 6, {"crash.jpg": CRASH})
    log, out = tmp_path / "decodes.log", tmp_path / "out"
    env = with_faults(cli_env, NOTCAT_TEST_DECODER_CRASH=CRASH, NOTCAT_TEST_DECODE_LOG=str(log))
    command = (photos_folder, "--copy", "--out", out, "-j", "2", "--batch-size", "2")

    first_pid, status, stderr = _run(cli, env, *command)
    assert status == -signal.SIGSEGV, stderr  # the crash is real, and ends the run that meets it
    assert _decodes(log) == [(first_pid, CRASH)]

    pid, status, stderr = _run(cli, env, *command, "--report", tmp_path / "second.csv")
    assert status == 1 and "Traceback" not in stderr, stderr
    rows = _final(tmp_path / "second.csv")
    assert rows["crash.jpg"]["label"] == "error" and CRASHED in rows["crash.jpg"]["error"], rows["crash.jpg"]
    assert (photos_folder / "crash.jpg").exists()
    others = {name: row for name, row in rows.items() if name != "crash.jpg"}
    assert len(others) == 6 and {row["status"] for row in others.values()} == {"done"}
    assert sorted(path.name for path in out.rglob("*.jpg")) == sorted(others)
    [(child, _)] = _decodes(log)[1:]  # the child dies at its first look at the file
    assert child != pid, "the rerun decoded the suspect in a child process, not in its own"

    # Quarantined: not decoded again, by any process, while the file is unchanged.
    _, status, stderr = _run(cli, env, *command, "--report", tmp_path / "third.csv")
    assert status == 1 and "Traceback" not in stderr, stderr
    assert CRASHED in _final(tmp_path / "third.csv")["crash.jpg"]["error"]
    assert len(_decodes(log)) == 2

    # Changed (a good copy of the photo now): decoded and sorted like any other.
    (photos_folder / "crash.jpg").write_bytes(photo_bytes(1000))
    _, status, stderr = _run(cli, env, *command, "--report", tmp_path / "fourth.csv")
    assert status == 0, stderr
    assert _final(tmp_path / "fourth.csv")["crash.jpg"]["status"] == "done"


def test_innocent_files_in_flight_at_a_kill_9_come_out_classified(cli: Path, cli_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """The first run is SIGKILLed while it decodes `victim.jpg` (with -j 2, another file may be in
    flight too): on the rerun each file in flight is decoded in a child, survives, and is sorted."""
    victim = "NOTCAT-TEST-IN-FLIGHT"
    photos_folder = _library(tmp_path / "photos", 8, {"victim.jpg": victim})
    log, out = tmp_path / "decodes.log", tmp_path / "out"
    command = (photos_folder, "--copy", "--out", out, "-j", "2", "--batch-size", "2")

    _, status, stderr = _run(cli, with_faults(cli_env, NOTCAT_TEST_DECODER_KILL=victim), *command)
    assert status == -signal.SIGKILL, stderr

    watching = with_faults(cli_env, NOTCAT_TEST_DECODE_WATCH=victim, NOTCAT_TEST_DECODE_LOG=str(log))
    pid, status, stderr = _run(cli, watching, *command, "--report", tmp_path / "rerun.csv")
    assert status == 0, stderr
    rows = _final(tmp_path / "rerun.csv")
    assert rows["victim.jpg"]["label"] in ("cat", "not-cat") and rows["victim.jpg"]["status"] == "done"
    assert len(rows) == 9 and all(row["status"] in ("done", "skipped") for row in rows.values())
    decoders = {decoder for decoder, _ in _decodes(log)}
    assert decoders and pid not in decoders, "the file in flight at the kill was decoded in a child"
    assert not (tmp_path / "xdg-data" / "notcat-sort" / "decoding" / "crashed").exists()


@requires(Path("/proc/self/fd").is_dir(), "watch mode needs Linux /proc")
def test_a_watcher_restarted_after_a_decoder_crash_sorts_on(cli: Path, cli_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    inbox = _library(tmp_path / "inbox", 4, {"crash.jpg": CRASH})
    env = with_faults(cli_env, NOTCAT_TEST_DECODER_CRASH=CRASH)
    command = [str(cli), "--watch", str(inbox), "--move", "--settle", "0.5", "-j", "1"]
    crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGSEGV, crashed.stderr

    watcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        report = inbox / "notcat-sort-watch.csv"
        while not (report.exists() and {Path(row.path).name for row in read_report(report)
                                        if row.status in (Status.DONE, Status.ERROR)} >= {"crash.jpg"}
                   and len(list((inbox / "not-cat").rglob("*.jpg")) + list((inbox / "cat").rglob("*.jpg"))) == 4):
            assert watcher.poll() is None, watcher.communicate()[1]
            assert time.monotonic() < deadline, "timed out waiting for the restarted watcher"
            time.sleep(0.1)
        assert watcher.poll() is None, "the watcher keeps running"
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    final = {Path(row.path).name: row for row in read_report(report)}
    assert CRASHED in final["crash.jpg"].error and (inbox / "crash.jpg").exists()
    assert Counter(row.status for name, row in final.items() if name != "crash.jpg") == {"done": 4}


@pytest.mark.parametrize("send_bytes", [False, True], ids=["by-path", "send-bytes"])
def test_a_cluster_worker_killed_by_the_decoder_does_not_stop_the_run(cli: Path, cli_env: dict[str, str],
                                                                      tmp_path: Path, send_bytes: bool) -> None:
    """The crash kills a LocalCluster worker process; Dask gives its task to a worker again, whose
    decoder guard (in the same data folder) finds the dead worker's files in flight, decodes them
    apart and quarantines the culprit: the run completes, with the one error row. (Files sent as
    bytes are known to the guard by their digest.)"""
    need_module("distributed", "the cluster extra: pip install '.[cluster]'")
    photos_folder = _library(tmp_path / "photos", 6, {"crash.jpg": CRASH})
    env = with_faults(cli_env, NOTCAT_TEST_DECODER_CRASH=CRASH)
    _, status, stderr = _run(cli, env, photos_folder, "--copy", "--out", tmp_path / "out", "--batch-size", "2",
                             "--cluster", "local:2", "--report", tmp_path / "report.csv",
                             *(["--cluster-send-bytes"] if send_bytes else []))
    assert status == 1 and "Traceback" not in stderr, stderr
    rows = _final(tmp_path / "report.csv")
    assert CRASHED in rows["crash.jpg"]["error"], rows["crash.jpg"]
    assert Counter(row["status"] for name, row in rows.items() if name != "crash.jpg") == {"done": 6}
    assert os.path.exists(photos_folder / "crash.jpg")


def test_an_upload_that_crashes_the_decoder_does_not_end_the_server(tmp_path: Path) -> None:
    """serve decodes uploads in child processes: the crashing upload gets an error that says so, the uploads
    sent beside it come back classified, and the server goes on answering."""
    from concurrent.futures import ThreadPoolExecutor

    need_module("starlette", "the serve extra: pip install '.[serve]'")
    from serve_support import environment, start_server

    server = start_server(env=with_faults(environment(tmp_path), NOTCAT_TEST_DECODER_CRASH=CRASH))
    crashing = photo_bytes(1000) + CRASH.encode()
    innocent = [photo.read_bytes() for photo in photos(3)]

    def classify(data: bytes) -> tuple[int, dict]:
        with server.client() as client:
            answer = client.post("/api/classify", content=data)
            return answer.status_code, answer.json()

    try:
        with ThreadPoolExecutor(4) as pool:  # at once, so that the innocent ones are in the child that dies
            (status, crashed), *others = list(pool.map(classify, [crashing, *innocent]))
        assert status == 422 and "the image decoder crashed on this file" in crashed["error"], crashed
        assert [code for code, _ in others] == [200, 200, 200], others
        assert server.process.poll() is None
        assert classify(innocent[0])[0] == 200 and classify(crashing)[0] == 422  # and again, from a new child
    finally:
        server.stop()


def test_threads_that_refresh_at_once_all_see_what_a_dead_process_had_in_flight(tmp_path: Path) -> None:
    """Each pool thread refreshes the guard before its batch: one that finds the dead process's in-flight
    file locked by another thread's take-over must still see the suspect once its refresh returns (else
    it decodes the file in this process, and the crash ends this run too: a flake of the test above)."""
    for attempt in range(20):
        folder = tmp_path / str(attempt)
        died = subprocess.run([sys.executable, "-c",
                               "import os, signal, sys; from pathlib import Path\n"
                               "from notcat_sort.decoder_guard import DecoderGuard\n"
                               "with DecoderGuard(Path(sys.argv[1])).in_flight('key', '/photos/crash.jpg'):\n"
                               "    os.kill(os.getpid(), signal.SIGKILL)", str(folder)], check=False)
        assert died.returncode == -signal.SIGKILL
        guard, start, seen = DecoderGuard(folder), threading.Barrier(4), []
        threads = [threading.Thread(target=_refresh_then_look, args=(guard, start, seen)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [True] * 4, (attempt, seen)


def _refresh_then_look(guard: DecoderGuard, start: threading.Barrier, seen: list[bool]) -> None:
    """A pool thread's start of a batch: refresh the guard (all at once), then ask about the file."""
    start.wait()
    guard.refresh()
    seen.append(guard.suspect("key"))
