"""The prediction cache: a re-run, a moved, renamed or copied file classify nothing again; a
changed file or a different model does; --no-cache neither reads nor writes it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from photos import photos as generated_photos

from notcat_sort.cache import VERSION
from notcat_sort.classify import ClassifySettings, Prediction, classify
from notcat_sort.content import sha256_file
from notcat_sort.model import card_path, default_model_path, load_card
from notcat_sort.scan import Candidate

CLI = Path(sys.executable).parent / "notcat-sort"


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with a few distinct photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in generated_photos(4):
        shutil.copy2(source, folder / source.name)
    return folder


@pytest.fixture
def settings(tmp_path) -> ClassifySettings:
    return ClassifySettings(load_card(default_model_path()), jobs=1, batch_size=3,
                            cache_path=tmp_path / "cache" / "predictions.sqlite3")


def run(settings: ClassifySettings, *paths: Path) -> dict[Path, Prediction]:
    candidates = [Candidate(path, path.parent) for path in paths]
    return {p.candidate.path: p for batch in classify(candidates, settings) for p in batch}


def test_rerun_moved_renamed_and_copied_files_come_from_the_cache(photos, settings, tmp_path):
    files = sorted(photos.iterdir())
    first = run(settings, *files)
    assert all(p.p_cat is not None and not p.cached for p in first.values())

    moved = tmp_path / "sorted" / "cat" / files[0].name
    moved.parent.mkdir(parents=True)
    files[0].rename(moved)
    renamed = files[1].with_name("renamed.jpg")
    files[1].rename(renamed)
    copied = tmp_path / "copy-of-" / files[2].name
    copied.parent.mkdir()
    shutil.copyfile(files[2], copied)  # new inode and mtime: known by content only
    again = run(settings, moved, renamed, copied, files[2], files[3])

    assert [p.cached for p in again.values()] == [True] * 5, again
    for before, after in [(files[0], moved), (files[1], renamed), (files[2], copied), (files[3], files[3])]:
        assert again[after].p_cat == first[before].p_cat
        assert again[after].sha256 == first[before].sha256


def test_a_changed_file_is_classified_again(photos, settings):
    files = sorted(photos.iterdir())
    first = run(settings, files[0])[files[0]]
    files[0].write_bytes(files[1].read_bytes())  # same name, other content
    again = run(settings, files[0])[files[0]]
    assert not again.cached
    assert again.sha256 != first.sha256


def test_a_different_model_does_not_use_another_models_predictions(photos, settings, model_copy):
    files = sorted(photos.iterdir())
    run(settings, *files)
    # Another model file that still loads: the same graph with another doc_string (field 6 of the
    # ONNX ModelProto, appended: the last value wins), and its card updated to match.
    model_copy.write_bytes(model_copy.read_bytes() + b"\x32\x05other")
    card = json.loads(card_path(model_copy).read_text())
    card_path(model_copy).write_text(json.dumps({**card, "sha256": sha256_file(model_copy)}))
    other = replace(settings, card=load_card(model_copy))
    assert not any(p.cached for p in run(other, *files).values())
    assert all(p.cached for p in run(settings, *files).values())


def test_cached_rerun_loads_no_model(photos, settings, model_copy):
    """Stat-key hits are answered on the calling thread: no classify threads, no model session.
    Shown with the same model identity (card and sha256) over a file onnxruntime cannot load."""
    files = sorted(photos.iterdir())
    run(settings, *files)
    card = load_card(model_copy)  # checked against the file, which is then spoilt
    model_copy.write_bytes(b"not an onnx model")
    broken = replace(settings, card=card, jobs=2)
    again = run(broken, *files)
    assert list(again) == files and all(p.cached and p.error is None for p in again.values())
    uncached = run(replace(broken, cache_path=None), *files)  # the same files, needing the model, fail
    assert all(p.error and p.error.startswith("model failed") for p in uncached.values())


def test_an_unusable_cache_only_costs_speed(photos, settings):
    settings.cache_path.parent.mkdir()
    settings.cache_path.write_bytes(b"this is not an SQLite database\n" * 64)
    predictions = run(settings, *sorted(photos.iterdir()))
    assert all(p.p_cat is not None and p.error is None for p in predictions.values())


def sort(photos: Path, cache_home: Path, *options: str) -> str:
    result = subprocess.run(
        [str(CLI), str(photos), "-j", "1", "--report", "-", *options],
        env={**os.environ, "XDG_CACHE_HOME": str(cache_home)}, capture_output=True, text=True, check=True,
    )
    return result.stderr


def test_cli_rerun_uses_the_cache_and_no_cache_bypasses_it(photos, tmp_path):
    cache_home = tmp_path / "xdg-cache"
    sort(photos, cache_home)
    assert "4 from cache" in sort(photos, cache_home)
    uncached_home = tmp_path / "untouched"
    assert "0 from cache" in sort(photos, uncached_home, "--no-cache")
    assert not list(uncached_home.rglob("*.sqlite3"))


def _rewrite_keeping_stat_key(path: Path) -> None:
    """Change a file's bytes in place while keeping its inode, size and mtime: what the stat-key
    cache cannot see (and a person almost never does)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def _placed(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {Path(row["path"]).name: row for row in rows}


def test_rerun_knows_the_copies_it_placed_by_their_stat_key(photos, run_cli, tmp_path):
    """Re-running over an already-sorted library reads no destination: the copies were recorded
    when placed. Proof: a copy altered behind the cache's back still counts as already sorted;
    without the cache it is read and found different."""
    out = tmp_path / "sorted"
    first = run_cli(photos, "--copy", "--out", out, "-j", "1", "--report", "-")
    assert first.returncode == 0, first.stderr
    altered = Path(next(row["destination"] for row in first.rows()))
    _rewrite_keeping_stat_key(altered)

    cached = _placed(run_cli(photos, "--copy", "--out", out, "-j", "1", "--report", "-").rows())
    assert {row["status"] for row in cached.values()} == {"skipped"}
    assert cached[altered.name]["destination"] == str(altered)

    uncached = _placed(run_cli(photos, "--copy", "--out", out, "-j", "1", "--no-cache", "--report", "-").rows())
    assert uncached[altered.name]["status"] == "done"
    assert Path(uncached[altered.name]["destination"]).name == f"{altered.stem} (1){altered.suffix}"


def test_a_move_reads_both_files_before_removing_a_duplicate_whatever_the_cache_says(photos, run_cli, tmp_path):
    """The cache may say a destination is identical, but a source is removed only after both
    files are hashed again right then."""
    out = tmp_path / "sorted"
    assert run_cli(photos, "--copy", "--out", out, "-j", "1").returncode == 0
    sources = sorted(photos.iterdir())
    altered = next(out.rglob(sources[0].name))
    _rewrite_keeping_stat_key(altered)

    moved = run_cli(photos, "--move", "--out", out, "-j", "1", "--report", "-")
    assert moved.returncode == 1
    rows = _placed(moved.rows())
    assert rows[sources[0].name]["status"] == "error"
    assert "no longer holds the same bytes; source kept" in rows[sources[0].name]["error"]
    assert sources[0].exists()
    assert {rows[s.name]["status"] for s in sources[1:]} == {"duplicate-removed"}
    assert not any(s.exists() for s in sources[1:])


def _stale_cache(path: Path, version: int, model: str, digest: str, p_cat: float) -> None:
    """A cache file as another version of notcat-sort left it, with a prediction for `digest`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE predictions (model TEXT, digest TEXT, p_cat REAL, PRIMARY KEY (model, digest))")
        db.execute("INSERT INTO predictions VALUES (?, ?, ?)", (model, digest, p_cat))
        db.execute(f"PRAGMA user_version = {version}")


@pytest.mark.parametrize("version", [0, VERSION + 1], ids=["unversioned", "other-version"])
def test_a_cache_of_another_version_is_emptied_not_believed(photos, settings, version):
    image = sorted(photos.iterdir())[0]
    _stale_cache(settings.cache_path, version, settings.card.sha256, sha256_file(image), 0.123456)

    prediction = run(settings, image)[image]

    assert not prediction.cached and prediction.p_cat != 0.123456
    with closing(sqlite3.connect(settings.cache_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        assert db.execute("SELECT p_cat FROM predictions").fetchall() == [(prediction.p_cat,)]
    assert run(settings, image)[image].cached  # and the new entry serves the next run


def _unfit_cache(path: Path) -> None:
    """The right version but tables that do not fit: every look-up fails."""
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE predictions (nothing_here TEXT)")
        db.execute("CREATE TABLE files (nor_here TEXT)")
        db.execute(f"PRAGMA user_version = {VERSION}")


def test_a_cache_that_cannot_answer_only_costs_speed(photos, settings, tmp_path):
    files = sorted(photos.iterdir())
    _unfit_cache(settings.cache_path)

    predictions = run(replace(settings, jobs=2), *files)

    assert all(p.p_cat is not None and p.error is None and not p.cached for p in predictions.values())
    _unfit_cache(tmp_path / "xdg" / "notcat-sort" / "predictions.sqlite3")  # where the CLI looks
    result = subprocess.run([str(CLI), str(photos), "--copy", "--out", tmp_path / "out", "-j", "1"],
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}, capture_output=True, text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == len(files)
