"""Bad input never stops a batch: each bad file becomes an `error` row with a clear reason and
stays exactly as it was, while the good files around it are sorted."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from prerequisites import need_that, need_tool, unavailable
from safety_support import inventory, run_cli, sample_photos, sort_in_process
from shared_data import SHARED, need

from notcat_sort.actions import OnConflict, execute, plan
from notcat_sort.content import sha256_file
from notcat_sort.report import Status, final_rows

CAMERA = SHARED / "samples" / "camera"
WEIRD_NAMES = [b"with space.jpg", b"new\nline.jpg", b"caf\xe9 latin-1.jpg"]
DAMAGED_EXIF = "damaged-exif.jpg"


def _with_damaged_exif(jpeg: bytes) -> bytes:
    """`jpeg` with a first EXIF block whose Make tag points past its end (Pillow warns "Tag data
    larger than file" and skips it) and whose orientation is still readable."""
    entries = struct.pack("<HHII", 0x010F, 2, 100, 38) + struct.pack("<HHHHI", 0x0112, 3, 1, 6, 0)
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0)
    segment = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


def _build_bad_tree(root: Path) -> dict[str, str]:
    """Bad inputs (name -> words its error must contain), good images with awkward names,
    and the malformed-EXIF camera samples."""
    good, other = sample_photos(2)
    root.mkdir()
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (root / "text.jpg").write_text("this is a shopping list, not a photo\n")
    Image.new("1", (6000, 6000)).save(root / "bomb.png")  # 36 MP in a few kB
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    os.symlink(".", root / "folder-loop")
    for name in WEIRD_NAMES:
        shutil.copy2(good if b"space" in name else other, os.path.join(os.fsencode(root), name))
    (root / DAMAGED_EXIF).write_bytes(_with_damaged_exif(other.read_bytes()))
    if CAMERA.is_dir():
        (root / "camera").mkdir()
        for sample in [*(CAMERA / "tests").iterdir(), *(CAMERA / "invalid").glob("*.jpg"), CAMERA / "corrupted.jpg"]:
            shutil.copy2(sample, root / "camera" / sample.name)
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "bomb.png": "--max-pixels",
        "loop-a.jpg": "symbolic link loop",
        "loop-b.jpg": "symbolic link loop",
    }


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """One real `--move` run of the CLI over every kind of bad input, then `--undo` of it."""
    base = tmp_path_factory.mktemp("bad")
    photos, out = base / "photos", base / "sorted"
    expected = _build_bad_tree(photos)
    before = inventory(photos)
    moved = run_cli(photos, "--move", "--out", out, "-j", "2", "--max-pixels", "20000000",
                    "--report", base / "r.csv", cache=base / "cache")
    rows = {os.fsencode(row.path): row for row in final_rows(base / "r.csv")}
    after_move = inventory(photos, out)
    undone = run_cli("--undo", base / "r.csv", cache=base / "cache")
    return dict(photos=photos, expected=expected, before=before, moved=moved, rows=rows,
                after_move=after_move, undone=undone, after_undo=inventory(photos), out=out)


def test_the_batch_finishes_with_exit_status_1_and_no_traceback(bad_run) -> None:
    assert bad_run["moved"].returncode == 1
    assert b"Traceback" not in bad_run["moved"].stderr


@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "loop-a.jpg", "loop-b.jpg"])
def test_each_bad_file_is_an_error_row_with_a_reason_and_stays_put(bad_run, name: str) -> None:
    path = os.path.join(os.fsencode(bad_run["photos"]), name.encode())
    row = bad_run["rows"][path]
    assert (row.status, row.label) == (Status.ERROR, "error")
    assert bad_run["expected"][name] in row.error
    if not os.path.islink(path):
        assert bad_run["after_move"][path] == bad_run["before"][path]


def test_malformed_exif_samples_are_sorted_or_reported_never_lost(bad_run) -> None:
    camera = [row for path, row in bad_run["rows"].items() if b"/camera/" in path]
    if not camera:
        need(CAMERA)
    assert all(row.status in (Status.DONE, Status.ERROR) and (row.status == Status.DONE or row.error) for row in camera)
    assert sorted(bad_run["after_move"].values()) == sorted(bad_run["before"].values())


def test_damage_pillow_recovers_from_is_sorted_without_a_warning_on_the_terminal(bad_run) -> None:
    """Decoding runs on several threads, where `warnings.catch_warnings()` is unsafe: Pillow's
    warnings are filtered once, so none reaches stderr."""
    row = bad_run["rows"][os.path.join(os.fsencode(bad_run["photos"]), DAMAGED_EXIF.encode())]
    assert row.status == Status.DONE and row.error == ""
    assert b"Warning" not in bad_run["moved"].stderr, bad_run["moved"].stderr[-2000:]


def test_names_with_spaces_newlines_and_non_utf8_bytes_round_trip(bad_run) -> None:
    for name in WEIRD_NAMES:
        row = bad_run["rows"][os.path.join(os.fsencode(bad_run["photos"]), name)]
        assert row.status == Status.DONE and os.fsencode(row.destination).endswith(name)
    assert bad_run["undone"].returncode == 0, bad_run["undone"].stderr[-2000:]
    assert bad_run["after_undo"] == bad_run["before"]  # every name, byte for byte, back in place


def test_a_file_that_vanishes_before_it_is_read_is_an_error(tmp_path: Path) -> None:
    results = sort_in_process([tmp_path / "gone.jpg"], "move", tmp_path / "r.csv")
    assert [(r.outcome.status, r.failed) for r in results] == [(Status.ERROR, True)]
    assert "no such file" in final_rows(tmp_path / "r.csv")[0].error


def test_a_file_that_vanishes_before_it_is_moved_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    shutil.copy2(sample_photos(1)[0], source)
    planned = plan("move", source, tmp_path / "cat" / "a.jpg", sha256_file(source), OnConflict.RENAME)
    source.unlink()
    with pytest.raises(FileNotFoundError):
        execute(planned)
    assert not (tmp_path / "cat" / "a.jpg").exists()


def test_unreadable_files_and_an_unwritable_destination_as_an_unprivileged_user(tmp_path: Path) -> None:
    """Root reads anything, so the CLI runs as `nobody`: a file it may not read is an error row; an
    --out it may not write is refused before any file is read, naming --out."""
    need_that(os.geteuid() == 0, "needs root, to run the CLI as another user")
    need_tool("setpriv", "util-linux")
    base = Path(tempfile.mkdtemp(prefix="notcat-nobody-"))
    try:
        os.chmod(base, 0o755)
        photos, locked_out, open_out = base / "photos", base / "locked", base / "open"
        photos.mkdir()
        locked_out.mkdir(mode=0o755)  # root's: read-only for nobody
        for image in sample_photos(2):
            shutil.copy2(image, photos / image.name)
        secret = photos / "secret.jpg"
        shutil.copy2(sample_photos(3)[-1], secret)
        os.chmod(secret, 0)
        (base / "cache").mkdir()
        open_out.mkdir()
        subprocess.run(["chown", "-R", "nobody:nogroup", str(photos), str(base / "cache"), str(open_out)], check=True)
        os.chown(secret, 0, 0)
        before = inventory(photos)

        refused = run_cli(photos, "--move", "--out", locked_out / "sorted", "-j", "1",
                          cache=base / "cache", user="nobody")
        assert refused.returncode == 2 and b"--out" in refused.stderr and b"--report" not in refused.stderr
        assert f"cannot write in {locked_out}".encode() in refused.stderr, refused.stderr
        assert b"error: " not in refused.stderr and inventory(photos) == before  # no file was tried

        result = run_cli(photos, "--copy", "--out", open_out, "-j", "1", "--report", base / "cache" / "r.csv",
                         cache=base / "cache", user="nobody")
        assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr[-2000:]
        rows = {Path(row.path).name: row for row in final_rows(base / "cache" / "r.csv")}
        assert rows["secret.jpg"].status == Status.ERROR and "permission denied" in rows["secret.jpg"].error
        others = [row for name, row in rows.items() if name != "secret.jpg"]
        assert len(others) == 2 and all(r.status == Status.DONE for r in others)
        assert inventory(photos) == before and stat.S_IMODE(secret.stat().st_mode) == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 256 kB filesystem, when this machine lets us mount one."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        unavailable("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _big_images(folder: Path, count: int) -> None:
    """Real images padded past 100 kB each (JPEG ignores bytes after its end marker)."""
    folder.mkdir()
    for image in sample_photos(count):
        (folder / image.name).write_bytes(image.read_bytes() + os.urandom(100_000))


def test_a_full_destination_keeps_every_source(tmp_path: Path, small_tmpfs: Path) -> None:
    photos = tmp_path / "photos"
    _big_images(photos, 5)
    before = inventory(photos)
    results = sort_in_process([photos], "move", tmp_path / "r.csv", out=small_tmpfs)
    errors = [r for r in results if r.outcome.status == Status.ERROR]
    assert errors and all("No space left on device" in r.outcome.error for r in errors)
    assert sorted(inventory(photos, small_tmpfs).values()) == sorted(before.values())  # nothing lost, no partials
    assert all(r.prediction.candidate.path.exists() for r in errors)


def test_a_read_only_destination_keeps_every_source(tmp_path: Path, small_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    photos = tmp_path / "photos"
    _big_images(photos, 2)
    before = inventory(photos)
    results = sort_in_process([photos], "move", tmp_path / "r.csv", out=small_tmpfs)
    assert [r.outcome.status for r in results] == [Status.ERROR] * 2
    assert all("it is on a read-only file system" in r.outcome.error for r in results)
    assert inventory(photos) == before
