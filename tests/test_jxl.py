"""JPEG XL photos are sorted through pillow-jxl-plugin; an image the tool cannot read is a report
row that says so, never skipped in silence."""

from __future__ import annotations

from PIL import Image
from prerequisites import need_module
from shared_data import SHARED, requires

PHOTO = SHARED / "samples" / "orientation" / "Landscape_0.jpg"


@requires(PHOTO)
def test_a_jxl_photo_is_classified_like_the_same_pixels_as_png(run_cli, tmp_path):
    need_module("pillow_jxl", "the jxl extra: pip install '.[jxl]'")
    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(PHOTO) as image:
        picture = image.convert("RGB")
    picture.save(photos / "photo.jxl", lossless=True)
    picture.save(photos / "same.png")
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in run_cli(photos, "--report", "-", "-j", "1").rows()}
    assert rows["photo.jxl"]["label"] in ("cat", "not-cat") and rows["photo.jxl"]["source"] == "image"
    assert abs(float(rows["photo.jxl"]["p_cat"]) - float(rows["same.png"]["p_cat"])) < 0.02


def test_images_it_cannot_read_are_error_rows(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>")
    (photos / "scan.exr").write_bytes(b"v/1\x01" + bytes(64))  # OpenEXR magic, which Pillow does not read
    result = run_cli(photos, "--report", "-", "-j", "1")
    assert result.returncode == 1
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in result.rows()}
    assert set(rows) == {"drawing.svg", "scan.exr"}
    assert all(row["label"] == "error" and "not an image that can be read" in row["error"] for row in rows.values())
