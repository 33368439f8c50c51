"""A copy that comes out one byte wrong, injected into the write itself (tests/fault_hooks flips a
byte of the `.notcat-partial` copy just before it is fsynced, in the CLI's own process), is
caught when the copy is read back: the source stays, the partial is removed, and the row says
why. A check that hashed the source instead of what was written would let it through."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import read_csv
from fault_support import tmpfs, with_faults
from photos import photos
from safety_support import inventory

VICTIM = "victim"


def _library(folder: Path) -> Path:
    folder.mkdir()
    for number, photo in enumerate(photos(4)):
        shutil.copyfile(photo, folder / (f"{VICTIM}.jpg" if number == 2 else photo.name))
    return folder


def _check(run, source: Path, out: Path, before: dict[bytes, bytes], action: str) -> None:
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    rows = {Path(row["path"]).name: row for row in run.rows()}
    victim = rows.pop(f"{VICTIM}.jpg")
    assert victim["status"] == "error" and "copy does not match source after writing" in victim["error"], victim
    assert {row["status"] for row in rows.values()} == {"done"} and len(rows) == 3
    victim_path = bytes(source / f"{VICTIM}.jpg")
    assert inventory(source)[victim_path] == before[victim_path], "the source stays, unchanged"
    written = inventory(out)
    assert not [path for path in written if Path(path.decode()).name.startswith(".")], "no partial is left"
    assert not [path for path in written if VICTIM.encode() in path], "no bad copy is put in place"
    others = sorted(digest for path, digest in before.items() if path != victim_path)
    assert sorted(written.values()) == others, "the other files are sorted intact"
    if action == "move":
        assert list(inventory(source)) == [victim_path]


def test_a_copy_that_comes_out_wrong_keeps_its_source(run_cli, cli_env: dict[str, str], tmp_path: Path) -> None:
    source = _library(tmp_path / "photos")
    before = inventory(source)
    cli_env.update(with_faults(cli_env, NOTCAT_TEST_CORRUPT_COPY=VICTIM))
    run = run_cli(source, "--copy", "--out", tmp_path / "out", "-j", "1", "--report", tmp_path / "copy.csv")
    _check(run, source, tmp_path / "out", before, "copy")


def test_a_move_across_filesystems_whose_copy_comes_out_wrong_keeps_its_source(
        run_cli, cli_env: dict[str, str], tmp_path: Path) -> None:
    source = _library(tmp_path / "photos")
    before = inventory(source)
    cli_env.update(with_faults(cli_env, NOTCAT_TEST_CORRUPT_COPY=VICTIM))
    with tmpfs(tmp_path / "other", "64m") as other:
        run = run_cli(source, "--move", "--out", other, "-j", "1", "--report", tmp_path / "move.csv")
        _check(run, source, other, before, "move")
        undone = run_cli("--undo", tmp_path / "move.csv")
        assert undone.returncode == 0, undone.stderr
        assert inventory(source) == before and not inventory(other)
    assert len(read_csv((tmp_path / "move.csv").read_text())) == 4
