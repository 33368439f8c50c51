"""Sidecars (.xmp in both namings, .aae) and, with --with-raw, RAW partners travel with their image."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from shared_data import SHARED, requires

from notcat_sort.sidecars import companion_name, companions

SAMPLE = SHARED / "samples" / "orientation" / "Landscape_1.jpg"
CLI = Path(sys.executable).parent / "notcat-sort"
SIDECARS = {"IMG_0001.jpg.xmp": b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>", "IMG_0001.xmp": b"<lr/>",
            "IMG_0001.AAE": b"<plist/>"}

pytestmark = requires(SAMPLE)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "IMG_0001.jpg")
    for name, content in SIDECARS.items():
        (folder / name).write_bytes(content)
    return folder


def sort(tmp_path, *args):
    """Everything is a cat at --threshold 0, so each file's destination is known."""
    report = tmp_path / "report.csv"
    completed = subprocess.run(
        [str(CLI), *map(str, args), "--threshold", "0", "-j", "1", "--report", str(report)],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}, capture_output=True, text=True,
    )
    return completed, {Path(row["path"]).name: row for row in csv.DictReader(report.open())}


def test_companion_names_follow_the_image():
    image, target = Path("a/IMG_0001.JPG"), Path("b/IMG_0001 (1).JPG")
    assert companion_name(Path("a/IMG_0001.JPG.xmp"), image, target) == Path("b/IMG_0001 (1).JPG.xmp")
    assert companion_name(Path("a/IMG_0001.xmp"), image, target) == Path("b/IMG_0001 (1).xmp")
    assert companion_name(Path("a/IMG_0001.CR2"), image, target) == Path("b/IMG_0001 (1).CR2")


def test_discovery(photos):
    (photos / "IMG_0001.CR2").write_bytes(b"II*\x00raw")
    (photos / "IMG_00011.xmp").write_bytes(b"other")
    image = photos / "IMG_0001.jpg"
    assert sorted(p.name for p in companions(image)) == sorted(SIDECARS)
    assert sorted(p.name for p in companions(image, with_raw=True)) == sorted([*SIDECARS, "IMG_0001.CR2"])


def test_move_takes_the_sidecars_along(photos, tmp_path):
    done, rows = sort(tmp_path, photos, "--move")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in photos.iterdir() if p.is_file()) == []
    for name, content in SIDECARS.items():
        assert (photos / "cat" / name).read_bytes() == content
        assert rows[name]["status"] == "done" and rows[name]["destination"] == str(photos / "cat" / name)


def test_copy_with_a_conflict_renames_sidecars_like_the_image(photos, tmp_path):
    (photos / "cat").mkdir()
    (photos / "cat" / "IMG_0001.jpg").write_bytes(b"a different photo")
    done, rows = sort(tmp_path, photos, "--copy")
    assert done.returncode == 0, done.stderr[-2000:]
    assert rows["IMG_0001.jpg"]["destination"] == str(photos / "cat" / "IMG_0001 (1).jpg")
    for name, content in SIDECARS.items():
        renamed = name.replace("IMG_0001", "IMG_0001 (1)")
        assert (photos / "cat" / renamed).read_bytes() == content
        assert (photos / name).read_bytes() == content  # copied, not moved


def test_a_sidecar_whose_name_is_taken_stays_and_is_reported(photos, tmp_path):
    (photos / "cat").mkdir()
    (photos / "cat" / "IMG_0001.AAE").write_bytes(b"someone else's edits")
    done, rows = sort(tmp_path, photos, "--move")
    assert done.returncode == 1
    assert rows["IMG_0001.AAE"]["status"] == "error" and "left in place" in rows["IMG_0001.AAE"]["error"]
    assert (photos / "IMG_0001.AAE").read_bytes() == SIDECARS["IMG_0001.AAE"]
    assert (photos / "cat" / "IMG_0001.AAE").read_bytes() == b"someone else's edits"
    assert (photos / "cat" / "IMG_0001.jpg.xmp").exists()


def test_with_raw_the_partner_travels_and_is_not_sorted_alone(photos, tmp_path):
    raw = b"II*\x00" + bytes(200)  # TIFF magic, like CR2/NEF/DNG
    (photos / "IMG_0001.CR2").write_bytes(raw)
    done, rows = sort(tmp_path, photos, "--move", "--with-raw")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (photos / "cat" / "IMG_0001.CR2").read_bytes() == raw
    assert rows["IMG_0001.CR2"]["status"] == "done"
    assert rows["IMG_0001.CR2"]["p_cat"] == rows["IMG_0001.jpg"]["p_cat"] and len(rows) == 5


def test_without_with_raw_a_raw_file_is_left_alone(photos, tmp_path):
    (photos / "IMG_0001.CR2").write_bytes(b"II*\x00" + bytes(200))  # TIFF magic, like CR2/NEF/DNG
    done, rows = sort(tmp_path, photos, "--move")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMG_0001.CR2" not in rows  # not sorted on its own: it is not an image we can classify
    assert (photos / "IMG_0001.CR2").exists() and (photos / "cat" / "IMG_0001.jpg").exists()
