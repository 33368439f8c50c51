"""RAW-only photos are classified from their embedded JPEG preview and sorted with their sidecars.

The containers are real: ExifTool's own sample files (../shared/samples/raw), given a real
photo as their preview by exiftool itself (`-PreviewImage<=`, `-JpgFromRaw<=`), or for RAF,
whose preview exiftool cannot replace, by rewriting the two header fields that locate it."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from prerequisites import need_that, need_tool
from shared_data import SHARED, need, requires

from notcat_sort import embedded
from notcat_sort.decode import decode, upright
from notcat_sort.embedded import NoPreview, raw_preview

RAW = SHARED / "samples" / "raw"
PHOTO = SHARED / "samples" / "orientation" / "Landscape_0.jpg"  # any real photo will do as the preview
# exiftool's tag for the preview, per sample (NEF gets both its previews; -m: the stripped NEF has a minor error).
EMBED = {"CanonRaw.cr2": ["-PreviewImage"], "DNG.dng": ["-PreviewImage", "-JpgFromRaw"],
         "Nikon.nef": ["-PreviewImage", "-JpgFromRaw"], "Panasonic.rw2": ["-JpgFromRaw"]}

pytestmark = [requires(RAW), requires(PHOTO)]


def exiftool() -> str:
    return need_tool("exiftool", "libimage-exiftool-perl")


def preview_photo(folder: Path) -> Path:
    """A real photo, scaled as a camera's preview would be, with no EXIF of its own."""
    from PIL import Image

    photo = folder / "preview-source.jpg"
    with Image.open(PHOTO) as image:
        image.convert("RGB").resize((640, 480)).save(photo, quality=90)
    return photo


def with_raf_preview(sample: Path, jpeg: bytes, target: Path) -> None:
    """The RAF sample with `jpeg` appended and its header (offset and length at 84, 88) pointing at it."""
    data = bytearray(sample.read_bytes())
    data[84:92] = struct.pack(">II", len(data), len(jpeg))
    target.write_bytes(bytes(data) + jpeg)


def build_raws(folder: Path, orientation: int = 1) -> tuple[list[Path], bytes]:
    """Each RAW sample in `folder` with a real preview embedded; returns them and the preview's bytes."""
    need(RAW)
    tool = exiftool()
    folder.mkdir(parents=True, exist_ok=True)
    photo = preview_photo(folder.parent)
    raws = []
    for name, tags in EMBED.items():
        target = folder / name
        shutil.copyfile(RAW / name, target)
        target.chmod(0o644)
        arguments = [f"{tag}<={photo}" for tag in tags]
        if orientation != 1:
            arguments.append(f"-IFD0:Orientation#={orientation}")
        subprocess.run([tool, "-m", "-q", "-overwrite_original", *arguments, str(target)], check=True)
        raws.append(target)
    with_raf_preview(RAW / "FujiFilm.raf", photo.read_bytes(), folder / "FujiFilm.raf")
    raws.append(folder / "FujiFilm.raf")
    photo.rename(folder.parent / "preview.jpg")
    return raws, (folder.parent / "preview.jpg").read_bytes()


@pytest.fixture
def raws(tmp_path: Path) -> tuple[list[Path], bytes]:
    return build_raws(tmp_path / "photos")


@pytest.mark.parametrize("libraw", [True, False], ids=["libraw", "own-reader"])
def test_the_embedded_preview_is_found_in_each_container(raws, libraw, monkeypatch):
    files, jpeg = raws
    if not libraw:
        monkeypatch.setattr(embedded, "rawpy", None)
    else:
        need_that(embedded.rawpy is not None, "rawpy is not installed (pip install '.[raw]')")
    reference = decode(jpeg, 224)
    for raw in files:
        try:
            found = raw_preview(raw)
        except NoPreview:
            assert libraw and raw.suffix in (".cr2",), f"{raw.name}: no preview found"  # libraw rejects the stripped CR2
            continue
        if not libraw:
            assert found.jpeg == jpeg, raw.name  # exactly the bytes exiftool embedded
        assert np.abs(decode(found.jpeg, 224).astype(int) - reference).mean() < 1, raw.name
        assert found.orientation == 1


def test_the_containers_orientation_is_honoured(tmp_path):
    files, _ = build_raws(tmp_path / "photos", orientation=6)
    for raw in files:
        if raw.suffix == ".raf":  # RAF has no IFD0 of its own: its preview's EXIF says
            continue
        found = raw_preview(raw)
        assert found.orientation == 6, raw.name
        rotated = decode(found.jpeg, 224, orientation=found.orientation)
        assert np.array_equal(rotated, np.asarray(upright_array(decode(found.jpeg, 224, orientation=1), 6))), raw.name


def upright_array(pixels: np.ndarray, orientation: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(upright(Image.fromarray(pixels), orientation))


def test_a_raw_without_a_preview_is_an_error_row_not_a_silent_skip(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(need(RAW) / "CanonRaw.cr3", photos / "IMG_1.CR3")  # its preview is stripped to nothing
    result = run_cli(photos, "--report", "-", "-j", "1")
    assert result.returncode == 1, result.stderr
    [row] = result.rows()
    assert row["label"] == "error" and "embedded JPEG preview" in row["error"]


def test_raw_only_files_are_classified_from_their_preview_moved_with_their_xmp_and_undone(raws, run_cli, tmp_path):
    files, jpeg = raws
    photos = files[0].parent
    for raw in files:
        (photos / f"{raw.name}.xmp").write_bytes(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "preview.jpg").write_bytes(jpeg)
    plain = run_cli(alone, "--report", "-", "-j", "1", "--full-decode")
    [reference] = plain.rows()

    moved = run_cli(photos, "--move", "--threshold", "0", "-j", "2", "--report", tmp_path / "report.csv")
    assert moved.returncode == 0, moved.stderr
    rows = {Path(row["path"]).name: row for row in moved.rows()}
    for raw in files:
        row = rows[raw.name]
        assert row["source"] == "preview" and row["status"] == "done", row
        assert abs(float(row["p_cat"]) - float(reference["p_cat"])) < 0.02, row  # the preview's verdict
        assert (photos / "cat" / raw.name).is_file() and (photos / "cat" / f"{raw.name}.xmp").is_file()
        assert rows[f"{raw.name}.xmp"]["status"] == "done"
        assert not raw.exists()

    undone = run_cli("--undo", tmp_path / "report.csv")
    assert undone.returncode == 0, undone.stderr
    assert all(raw.is_file() and (photos / f"{raw.name}.xmp").is_file() for raw in files)
    assert not (photos / "cat").exists()


def test_a_raw_with_a_jpeg_partner_is_one_photo(raws, run_cli, tmp_path):
    files, jpeg = raws
    photos = files[0].parent
    (photos / "CanonRaw.JPG").write_bytes(jpeg)
    result = run_cli(photos, "--copy", "--with-raw", "--threshold", "0", "-j", "1", "--report", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr
    rows = {Path(row["path"]).name: row for row in result.rows()}
    assert rows["CanonRaw.JPG"]["status"] == "done"
    assert rows["CanonRaw.cr2"]["p_cat"] == rows["CanonRaw.JPG"]["p_cat"]  # carried with its JPEG, not decided alone
    assert (photos / "cat" / "CanonRaw.cr2").is_file()
    assert len([row for row in rows.values() if row["source"] == "preview"]) == len(files) - 1
