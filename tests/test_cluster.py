"""`--cluster`: classification on a real Dask cluster on loopback, everything else on this machine.

Each test runs the installed `notcat-sort` against real worker processes: a `LocalCluster` that
the command starts (`--cluster local:2`), or a `dask scheduler` and `dask worker --nworkers 2`
started here, which a test can kill or hide files from. Results are compared with a local run
over the same files, never with known labels: the workers run the same per-file classification
as local threads (EXIF thumbnails, RAW previews, embeddings), so rows and cache entries match.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import read_csv
from prerequisites import need_module, need_that
from shared_data import SHARED, need
from test_thumbnails import CAMERA, USABLE, with_band

from notcat_sort.content import sha256_file
from notcat_sort.model import card_path

distributed = need_module("distributed", "the cluster extra: pip install '.[cluster]'")
psutil = need_module("psutil", "the cluster extra: pip install '.[cluster]'")

DASK = Path(sys.executable).parent / "dask"
SLOW = 600  # seconds a cluster run may take on a machine that others keep busy
RAW_WITH_PREVIEWS = ["FujiFilm.raf", "Panasonic.rw2"]  # ExifTool's samples that have a readable preview


def photos(root: Path, shared: Path, count: int) -> Path:
    """`count` small real photos of both labels, half of them in a subfolder."""
    pool = shared / "datasets" / "catnotcat"
    cats, others = sorted((pool / "cat").glob("petimages-*.jpg")), sorted((pool / "not-cat").glob("petimages-*.jpg"))
    picked = [photo for pair in zip(cats, others, strict=False) for photo in pair][:count]
    for number, photo in enumerate(picked):
        folder = root / ("sub" if number % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, folder / photo.name)
    return root


def camera_photos(root: Path) -> Path:
    """Camera JPEGs whose EXIF thumbnail is current (the fast path) and RAW files with a preview."""
    root.mkdir(parents=True, exist_ok=True)
    for photo in [need(CAMERA / name) for name in USABLE] + [need(SHARED / "samples" / "raw" / name) for name in RAW_WITH_PREVIEWS]:
        shutil.copyfile(photo, root / photo.name)
        (root / photo.name).chmod(0o644)
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` but reports: sub-path -> sha256."""
    return {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix != ".csv"}


def by_path(rows: list[dict[str, str]], root: Path, out: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Report rows keyed by sub-path below `root`: label, p_cat, status, error, sha256, the
    destination below `out`, which input decided (source) and the cat."""
    return {
        str(Path(row["path"]).relative_to(root)): (
            row["label"], row["p_cat"], row["status"], row["error"], row["sha256"],
            str(Path(row["destination"]).relative_to(out)) if out and row["destination"] else row["destination"],
            row["source"], row["cat_id"],
        )
        for row in rows
    }


def cache_entries(cache_home: Path, source: Path) -> dict[str, list[tuple]]:
    """What a run left in the prediction cache for the next one: the predictions with their
    embeddings and sources, the cats, and the stat keys of the files under `source` (a copy's
    own stat keys are its run's)."""
    here = {(stat.st_dev, stat.st_ino) for stat in (path.stat() for path in source.rglob("*") if path.is_file())}
    with sqlite3.connect(cache_home / "notcat-sort" / "predictions.sqlite3") as db:
        entries = {table: sorted(db.execute(f"SELECT * FROM {table}")) for table in ("predictions", "cats", "cat_photos")}
        entries["files"] = sorted(row for row in db.execute("SELECT * FROM files") if row[:2] in here)
    assert len(entries["predictions"]) == len(entries["files"]) == len(here), "every file classified and cached"
    return entries


def wait_for(condition, what: str, timeout: float = SLOW, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before {what}: give it more files")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def report_rows(report: Path) -> int:
    return max(0, len(report.read_text(errors="replace").splitlines()) - 1) if report.exists() else 0


class DaskCluster:
    """`dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on loopback, as subprocesses.
    With `hide`, the workers run in their own mount namespace with an empty tmpfs over that
    folder: they cannot read what this machine reads there."""

    def __init__(self, folder: Path, hide: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._log = (folder / "dask.log").open("w")
        self.scheduler: subprocess.Popen | None = None
        self.workers: subprocess.Popen | None = None
        try:
            self._start(folder, hide)
        except BaseException:
            self.close()  # a cluster that did not come up must not outlive the test either
            raise

    def _start(self, folder: Path, hide: Path | None) -> None:
        scheduler_file = folder / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", scheduler_file], stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, "the scheduler to start", 180)
        self.address = json.loads(scheduler_file.read_text())["address"]
        command = [str(DASK), "worker", self.address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                   "--local-directory", str(folder / "workers"), "--death-timeout", "180"]
        if hide is not None:
            command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                       'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide), *command]
        self.workers = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        with distributed.Client(self.address, timeout=30) as client:
            client.wait_for_workers(2, timeout=180)

    def close(self) -> None:
        for process in (self.workers, self.scheduler):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        self._log.close()


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[type[DaskCluster]]:
    """Start clusters with `dask_cluster(folder, hide=None)`; all are stopped after the test."""
    started: list[DaskCluster] = []

    def start(folder: Path, hide: Path | None = None) -> DaskCluster:
        started.append(DaskCluster(folder, hide))
        return started[-1]

    yield start  # type: ignore[misc]
    for cluster in started:
        cluster.close()


def popen_cli(cli: Path, env: dict[str, str], *args: object, own_group: bool = False) -> subprocess.Popen:
    """`own_group`: in a process group of its own, as a command at a terminal is."""
    return subprocess.Popen([str(cli), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=own_group)


def assert_stopped_cleanly(rows: list[dict[str, str]], source: Path, before: dict[str, str],
                           some_moved: bool = True) -> None:
    """Each file the report says was moved is at its destination, intact; every other file is
    where it was, unchanged; and not every file was handled (the run did stop part-way).
    `some_moved`: the stop came after a batch was acted on (Ctrl-C may land before any file of
    the batch in hand is touched; those are reported as interrupted)."""
    moved = {str(Path(row["path"]).relative_to(source)): row for row in rows if row["status"] == "done"}
    assert len(moved) < len(before), "the run stopped part-way"
    assert moved or not some_moved, "some files were sorted before the stop"
    for path, row in moved.items():
        assert not (source / path).exists()
        assert sha256_file(Path(row["destination"])) == before[path] == row["sha256"]
    for path, digest in before.items():
        if path not in moved:
            assert sha256_file(source / path) == digest, f"{path} was left as it was"
    assert {row["status"] for row in rows} <= {"done", "interrupted"}


def test_cluster_usage_errors(run_cli, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    for args, message in [
        (["--cluster", "scheduler:8786"], "expected tcp://HOST:PORT"),
        (["--cluster", "local:0"], "expected tcp://HOST:PORT"),
        (["--cluster-send-bytes"], "--cluster-send-bytes goes with --cluster"),
        (["--cluster", "local:2", "-j", "2"], "--jobs sets the threads of a local run"),
    ]:
        result = run_cli(tmp_path / "photos", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_cluster_without_the_extra_is_a_usage_error_naming_it(run_cli, cli_env, tmp_path: Path) -> None:
    """As where dask.distributed is not installed: importing it fails."""
    missing = tmp_path / "no-distributed"
    missing.mkdir()
    (missing / "distributed.py").write_text("raise ModuleNotFoundError(\"No module named 'distributed'\", "
                                            "name='distributed')\n")
    cli_env["PYTHONPATH"] = str(missing)
    (tmp_path / "photos").mkdir()
    result = run_cli(tmp_path / "photos", "--cluster", "local:2", timeout=SLOW)
    assert result.returncode == 2, result.stderr
    assert "pip install 'notcat-sort[cluster]'" in result.stderr and "distributed" in result.stderr


def test_copy_on_a_local_cluster_gives_what_a_local_run_gives(run_cli, cli_env, model_copy, tmp_path: Path,
                                                              shared: Path) -> None:
    """Rows, files (cat/<cat-id>/ folders from the embeddings included) and cache entries alike.
    The card's band is [threshold, threshold], so a current EXIF thumbnail decides its photo
    whatever the model."""
    source = photos(tmp_path / "photos", shared, 24)
    camera_photos(source / "camera")
    count = 24 + len(USABLE) + len(RAW_WITH_PREVIEWS)
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    here, there = tmp_path / "here", tmp_path / "there"
    common = ["--copy", "--group-cats", "--model", model, "--batch-size", "4"]
    cli_env["XDG_CACHE_HOME"] = str(tmp_path / "cache-here")
    local = run_cli(source, *common, "--out", here, "--report", tmp_path / "here.csv")
    assert local.returncode == 0, local.stderr
    cli_env["XDG_CACHE_HOME"] = str(tmp_path / "cache-there")
    remote = run_cli(source, *common, "--out", there, "--cluster", "local:2", "--report", tmp_path / "there.csv",
                     timeout=SLOW)
    assert remote.returncode == 0, remote.stderr
    assert "cluster local:2: 2 workers, 2 threads; workers read the files by path" in remote.stderr
    assert "cluster local:2: " in remote.stderr and "took part" in remote.stderr
    assert by_path(remote.rows(), source, there) == by_path(local.rows(), source, here)
    assert len(remote.rows()) == count and all(row["status"] == "done" for row in remote.rows())
    sources = Counter(row["source"] for row in remote.rows())
    assert sources["thumbnail"] == len(USABLE) and sources["preview"] == len(RAW_WITH_PREVIEWS), sources
    assert tree(there) == tree(here) and len(tree(there)) == count
    assert cache_entries(tmp_path / "cache-there", source) == cache_entries(tmp_path / "cache-here", source)
    # The cluster run cached what it classified under this machine's stat keys: a rerun reads nothing.
    rerun = run_cli(source, *common, "--out", there, "--report", tmp_path / "rerun.csv")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{count} files in" in rerun.stderr and f"{count} from cache" in rerun.stderr, rerun.stderr


def test_move_survives_a_worker_killed_mid_run(cli, cli_env, run_cli, tmp_path: Path, shared: Path) -> None:
    """SIGKILL one of the LocalCluster's worker processes while batches are out: its batches run
    again on the other worker (or its replacement), and every file is moved exactly once."""
    source = photos(tmp_path / "photos", shared, 120)
    expected = by_path(run_cli(source, "--batch-size", "2", "--no-cache", "--report", "-").rows(), source)
    contents = Counter(tree(source).values())
    report = tmp_path / "move.csv"
    run = popen_cli(cli, cli_env, source, "--move", "--batch-size", "2", "--cluster", "local:2", "--report", report)
    try:
        wait_for(lambda: report_rows(report) >= 2, "the first files were moved", process=run)
        workers = [child for child in psutil.Process(run.pid).children()
                   if "spawn_main" in " ".join(child.cmdline())]
        assert len(workers) == 2, [child.cmdline() for child in workers]
        workers[0].send_signal(signal.SIGKILL)
        assert run.poll() is None, "the run ended before the worker was killed: give it more files"
        workers[0].wait(timeout=10)
        _, stderr = run.communicate(timeout=SLOW)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    rows = read_csv(report.read_text())
    assert sorted(by_path(rows, source)) == sorted(expected), "one row per file"
    for path, row in by_path(rows, source).items():
        label, p_cat, status, error, digest, destination, decided_by, _ = row
        assert (label, p_cat, error, digest, decided_by) == (*expected[path][:2], "", expected[path][4], expected[path][6])
        assert status == "done" and Path(destination).is_file() and sha256_file(Path(destination)) == digest
    sorted_contents = Counter(digest for folder in ("cat", "not-cat", "unsure") if (source / folder).exists()
                              for digest in tree(source / folder).values())
    assert sorted_contents == contents, "every file exactly once, by content"
    assert not [path for path in tree(source) if path.split("/")[0] not in ("cat", "not-cat", "unsure")]


def test_a_cluster_that_goes_away_stops_the_run_cleanly_and_a_rerun_completes(
        cli, cli_env, run_cli, dask_cluster, tmp_path: Path, shared: Path) -> None:
    source = photos(tmp_path / "photos", shared, 120)
    before = tree(source)
    cluster = dask_cluster(tmp_path / "dask")
    report = tmp_path / "first.csv"
    run = popen_cli(cli, cli_env, source, "--move", "--batch-size", "2", "--cluster", cluster.address,
                    "--report", report)
    try:
        wait_for(lambda: report_rows(report) >= 2, "the first files were moved", process=run)
        assert cluster.scheduler is not None
        cluster.scheduler.send_signal(signal.SIGKILL)
        _, stderr = run.communicate(timeout=SLOW)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr
    assert f"cluster {cluster.address} failed" in stderr and "run again to finish" in stderr
    assert_stopped_cleanly(read_csv(report.read_text()), source, before)

    rerun = run_cli(source, "--move", "--report", tmp_path / "rerun.csv")
    assert rerun.returncode == 0, rerun.stderr
    after = tree(source)
    assert not [path for path in after if path.split("/")[0] not in ("cat", "not-cat", "unsure")]
    assert Counter(after.values()) == Counter(before.values()), "every file exactly once, by content"


def test_send_bytes_sorts_a_folder_the_workers_cannot_read(run_cli, dask_cluster, tmp_path: Path,
                                                             shared: Path) -> None:
    private = tmp_path / "private"
    source = photos(private / "photos", shared, 12)
    camera_photos(source / "camera")  # thumbnails and RAW previews from bytes, not from a path
    need_that(subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode == 0,
         "cannot make a mount namespace here (unshare --user --mount) to hide files from the workers")
    cluster = dask_cluster(tmp_path / "dask", hide=private)
    local = run_cli(source, "--no-cache", "--report", "-")
    assert local.returncode == 0, local.stderr

    by_path_mode = run_cli(source, "--cluster", cluster.address, "--no-cache", "--report", "-", timeout=SLOW)
    assert by_path_mode.returncode == 1, "the workers must not see the files for this test to mean anything"
    assert {row["label"] for row in by_path_mode.rows()} == {"error"}
    assert all("cannot read it" in row["error"] and "--cluster-send-bytes" in row["error"]
               for row in by_path_mode.rows())

    sent = run_cli(source, "--cluster", cluster.address, "--cluster-send-bytes", "--no-cache", "--report", "-", timeout=SLOW)
    assert sent.returncode == 0, sent.stderr
    assert "the files' bytes are sent from here" in sent.stderr
    assert by_path(sent.rows(), source) == by_path(local.rows(), source)


def test_ctrl_c_at_a_terminal_stops_the_run_not_its_workers(cli, cli_env, tmp_path: Path, shared: Path) -> None:
    """Ctrl-C signals the terminal's whole foreground process group, the LocalCluster's worker
    processes included: the run stops as it does without a cluster, and no worker dies noisily."""
    source = photos(tmp_path / "photos", shared, 80)
    before = tree(source)
    report = tmp_path / "run.csv"
    run = popen_cli(cli, cli_env, source, "--move", "--batch-size", "2", "--cluster", "local:2", "--report", report,
                    own_group=True)
    try:
        wait_for(lambda: report_rows(report) >= 2, "the first files were moved", process=run)
        os.killpg(run.pid, signal.SIGINT)
        _, stderr = run.communicate(timeout=SLOW)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    rows = read_csv(report.read_text())
    assert rows, "the report has the batch that was in hand"
    assert_stopped_cleanly(rows, source, before, some_moved=False)
