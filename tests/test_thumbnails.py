"""The EXIF thumbnail fast path on real camera JPEGs (../shared/samples/camera).

A card's `thumbnail` band decides where the image itself is decoded. These tests give a copy of
the shipped model a band that does not depend on the model: [threshold, threshold] (a thumbnail
decides every photo it may decide) or [0, 1] (it decides none), so that which input decided is
the thumbnail checks' doing alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prerequisites import need_tool
from shared_data import SHARED, requires

from notcat_sort.decode import decode
from notcat_sort.model import Classifier, card_path, load_card
from notcat_sort.report import format_p

CAMERA = SHARED / "samples" / "camera"
# Camera JPEGs whose IFD1 thumbnail is current: 4:3 like the image, no editor, not modified later.
USABLE = ["Canon_PowerShot_S40.jpg", "exif-org/canon-ixus.jpg", "exif-org/fujifilm-dx10.jpg",
          "exif-org/nikon-e950.jpg", "exif-org/sony-cybershot.jpg", "hdr/iphone_hdr_YES.jpg",
          "tests/22-canon_tags.jpg"]
UNUSABLE = {
    "Canon_40D.jpg": "edited in GIMP (Software tag)",
    "gps/DSCN0010.jpg": "ModifyDate after DateTimeOriginal (Nikon Transfer)",
    "tests/30-type_error.jpg": "edited in Photoshop",
    "mobile/jolla.jpg": "no thumbnail",
    "orientation/landscape_6.jpg": "no thumbnail",
    "invalid/image01088.jpg": "malformed",
}

pytestmark = requires(CAMERA)


def with_band(model: Path, low: float, high: float, size: int | None = None) -> Path:
    card = json.loads(card_path(model).read_text())
    card["thumbnail"] = {"low": low, "high": high, **({"size": size} if size else {})}
    card_path(model).write_text(json.dumps(card))
    return model


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Every camera sample, under the same sub-paths."""
    folder = tmp_path / "camera"
    shutil.copytree(CAMERA, folder, ignore=shutil.ignore_patterns("README*", "*.rst"))
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def rows_by_name(result, root: Path) -> dict[str, dict[str, str]]:
    assert result.returncode in (0, 1), result.stderr
    return {str(Path(row["path"]).relative_to(root)): row for row in result.rows()}


def test_the_thumbnail_decides_where_it_is_current_and_never_where_it_is_stale(library, model_copy, run_cli):
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    rows = rows_by_name(run_cli(library, "--model", model, "--report", "-", "-j", "2", "--no-cache"), library)
    for name in USABLE:
        assert rows[name]["source"] == "thumbnail", (name, rows[name])
    for name, why in UNUSABLE.items():
        assert rows[name]["source"] in ("image", ""), (name, why, rows[name])


def test_malformed_samples_never_fail_a_photo_that_full_decoding_reads(library, model_copy, run_cli):
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    fast = rows_by_name(run_cli(library, "--model", model, "--report", "-", "-j", "2", "--no-cache"), library)
    full = rows_by_name(run_cli(library, "--model", model, "--report", "-", "-j", "2", "--no-cache",
                                "--full-decode"), library)
    assert fast.keys() == full.keys() and len(full) > 80
    readable = [name for name, row in full.items() if row["label"] != "error"]
    assert all(fast[name]["label"] != "error" for name in readable), [fast[name] for name in readable
                                                                         if fast[name]["label"] == "error"]
    assert {row["source"] for row in full.values()} <= {"image", ""}
    assert sum(row["source"] == "thumbnail" for row in fast.values()) >= len(USABLE)
    for name, row in fast.items():  # what the thumbnail did not decide, the image did, as with --full-decode
        if row["source"] == "image":
            assert row["p_cat"] == full[name]["p_cat"], name
    # A photo its thumbnail decides is hashed as it streams by: the digest is still that of every byte.
    assert all(fast[name]["sha256"] == full[name]["sha256"] for name in readable)


def test_a_thumbnail_in_the_band_is_checked_by_decoding_the_image(library, model_copy, run_cli):
    model = with_band(model_copy, 0.0, 1.0)  # every thumbnail's p_cat is in the band
    fast = rows_by_name(run_cli(library, "--model", model, "--report", "-", "-j", "1", "--no-cache"), library)
    full = rows_by_name(run_cli(library, "--model", model, "--report", "-", "-j", "1", "--no-cache",
                                "--full-decode"), library)
    assert {name: (row["p_cat"], row["source"]) for name, row in fast.items()} == \
           {name: (row["p_cat"], row["source"]) for name, row in full.items()}


def test_without_a_band_in_the_card_the_image_always_decides(library, model_copy, run_cli):
    card = json.loads(card_path(model_copy).read_text())
    card.pop("thumbnail", None)
    card_path(model_copy).write_text(json.dumps(card))
    rows = rows_by_name(run_cli(library / "exif-org", "--model", model_copy, "--report", "-", "-j", "2", "--no-cache"),
                        library / "exif-org")
    assert rows and {row["source"] for row in rows.values()} <= {"image", ""}


def exiftool() -> str:
    return need_tool("exiftool", "libimage-exiftool-perl")


def extracted_thumbnail(photo: Path) -> bytes:
    """The photo's IFD1 thumbnail JPEG, as exiftool reads it (not by the code under test)."""
    return subprocess.run([exiftool(), "-b", "-ThumbnailImage", str(photo)], capture_output=True, check=True).stdout


def p_cat_alone(classifier: Classifier, jpeg: bytes, size: int, orientation: int | None = None) -> str:
    """The report's p_cat of `jpeg` classified by itself at `size`, turned by `orientation`."""
    return format_p(classifier.p_cat(decode(jpeg, size, orientation=orientation)[None])[0])


@pytest.mark.parametrize("size", [None, 192, 160])
def test_the_thumbnails_verdict_is_the_thumbnails_own(library, model_copy, run_cli, size):
    """The p_cat a thumbnail gives is that of the thumbnail image, extracted by exiftool and
    classified alone at the card's thumbnail size (without one, the model's input size)."""
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold, size)
    photo = library / "exif-org" / "canon-ixus.jpg"  # orientation 1: the thumbnail is shown as stored
    thumbnail = extracted_thumbnail(photo)
    [fast] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    card = load_card(model)
    classifier = Classifier(card)
    assert fast["source"] == "thumbnail" and fast["p_cat"] == p_cat_alone(classifier, thumbnail, size or card.input_size)
    if size:  # the size is the card's doing: at the photo's input size the thumbnail says something else
        assert p_cat_alone(classifier, thumbnail, card.input_size) != fast["p_cat"]


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_the_thumbnail_is_seen_upright_as_the_photo_is(library, model_copy, run_cli, orientation):
    """A rotated photo's thumbnail is stored as the sensor saw it, like the photo: the photo's EXIF
    orientation turns both upright (read from the EXIF block the thumbnail is found in)."""
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold, 192)
    photo = library / "exif-org" / "canon-ixus.jpg"
    subprocess.run([exiftool(), "-q", "-overwrite_original", f"-IFD0:Orientation#={orientation}", str(photo)], check=True)
    thumbnail = extracted_thumbnail(photo)
    [fast] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    classifier = Classifier(load_card(model))
    upright, as_stored = (p_cat_alone(classifier, thumbnail, 192, turn) for turn in (orientation, 1))
    assert fast["source"] == "thumbnail" and fast["p_cat"] == upright != as_stored


@pytest.mark.parametrize("edit, decides", [
    (["-Software=Adobe Photoshop Lightroom Classic 13.0"], "image"),
    (["-ModifyDate=2030:01:01 00:00:00"], "image"),  # modified long after it was taken
    (["-ModifyDate<DateTimeOriginal"], "thumbnail"),  # as cameras write it
    (["-Software=Ver1.06"], "thumbnail"),  # a camera's firmware is no editor
], ids=["editor", "modified-later", "modified-when-taken", "firmware"])
def test_signs_of_editing_make_the_thumbnail_stale(library, model_copy, run_cli, edit, decides):
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    photo = library / "exif-org" / "nikon-e950.jpg"
    subprocess.run([exiftool(), "-q", "-overwrite_original", *edit, str(photo)], check=True)
    [row] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    assert row["source"] == decides, row


def test_a_thumbnail_of_another_aspect_ratio_is_not_used(library, model_copy, run_cli, tmp_path):
    from PIL import Image

    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    photo = library / "exif-org" / "nikon-e950.jpg"  # 4:3
    wide = tmp_path / "wide.jpg"
    with Image.open(photo) as image:
        image.convert("RGB").resize((160, 90)).save(wide, quality=80)  # a 16:9 crop's thumbnail
    subprocess.run([exiftool(), "-q", "-overwrite_original", f"-ThumbnailImage<={wide}", str(photo)], check=True)
    [row] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    assert row["source"] == "image", row


def test_a_jpeg_whose_headers_are_longer_than_what_is_read_first_is_decided_by_the_image(library, model_copy, run_cli):
    """The fast path reads a JPEG's first bytes for its EXIF thumbnail and hashes the rest as it streams;
    headers that do not end there (here 320 KiB of APP15 segments before the EXIF) mean the image decides."""
    threshold = json.loads(card_path(model_copy).read_text())["threshold"]
    model = with_band(model_copy, threshold, threshold)
    photo = library / "exif-org" / "nikon-e950.jpg"
    [before] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    data = photo.read_bytes()
    padding = b"".join(b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(65533) for _ in range(5))
    photo.write_bytes(data[:2] + padding + data[2:])
    [after] = run_cli(photo, "--model", model, "--report", "-", "--no-cache").rows()
    [full] = run_cli(photo, "--model", model, "--report", "-", "--no-cache", "--full-decode").rows()
    assert before["source"] == "thumbnail", before
    assert after["source"] == "image" and after["p_cat"] == full["p_cat"] and after["sha256"] == full["sha256"], (after, full)
