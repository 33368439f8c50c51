"""HEIC/HEIF from phones decode and classify, and every EXIF orientation is applied exactly once."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features
from prerequisites import need_module, need_that
from shared_data import SHARED, need, requires

from notcat_sort.decode import decode
from notcat_sort.model import Classifier, default_model_path, load_card

HEIC = SHARED / "samples" / "heic"
ORIENTATION = SHARED / "samples" / "orientation"
CLI = Path(sys.executable).parent / "notcat-sort"
SIZE = load_card(default_model_path()).input_size  # what the CLI decodes to

pytestmark = requires(ORIENTATION)
heif = need_module("pillow_heif", "the heif extra: pip install '.[heif]'")


@pytest.fixture(scope="module")
def classifier():
    return Classifier(load_card(default_model_path()))


def decoded(path: Path) -> np.ndarray:
    return decode(path.read_bytes(), SIZE)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_phone_heic_files_classify_through_the_cli(tmp_path):
    need(HEIC)
    photos = tmp_path / "photos"
    shutil.copytree(HEIC, photos)
    report = tmp_path / "report.csv"
    done = subprocess.run([str(CLI), str(photos), "-j", "2", "--report", str(report)],
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(report.open()))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(p.name for p in HEIC.iterdir())
    for row in rows:
        assert row["error"] == "" and row["label"] in ("cat", "not-cat"), row
        assert 0.0 <= float(row["p_cat"]) <= 1.0


@pytest.mark.parametrize("shape", ["Landscape", "Portrait"])
def test_every_exif_orientation_decodes_upright(shape, classifier):
    upright = decoded(ORIENTATION / f"{shape}_0.jpg")
    wrong = np.rot90(upright, 2)  # what a missing or doubled rotation looks like
    p_upright = classifier.p_cat(upright[None])[0]
    for orientation in range(1, 9):
        image = decoded(ORIENTATION / f"{shape}_{orientation}.jpg")
        difference = mean_abs_diff(image, upright)
        assert difference < 4.0 < mean_abs_diff(wrong, upright), (orientation, difference)
        p_cat = classifier.p_cat(image[None])[0]
        # The same prediction as upright: the same label at the model's threshold, and a close
        # probability (rotating a JPEG moves its block grid, so the pixels differ slightly).
        threshold = classifier.card.threshold
        assert (p_cat >= threshold) == (p_upright >= threshold), (orientation, p_cat, p_upright)
        assert abs(p_cat - p_upright) < 0.05, (orientation, p_cat, p_upright)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_rotation_and_exif_orientation_are_not_both_applied(fmt, tmp_path):
    """Written like a phone does: pixels stored sideways, EXIF orientation 6 (and for HEIF the
    matching irot box, which pillow-heif applies when it decodes)."""
    if fmt == "AVIF":
        need_that(features.check("avif"), "this Pillow has no AVIF support")
    with Image.open(ORIENTATION / "Landscape_0.jpg") as image:
        stored = image.convert("RGB").reduce(4).transpose(Image.Transpose.ROTATE_90)  # small: quick to encode
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated.{fmt.lower()}"
    stored.save(path, format=fmt, exif=exif.tobytes(), quality=90)
    upright = decoded(ORIENTATION / "Landscape_0.jpg")
    assert mean_abs_diff(decoded(path), upright) < 4.0


def test_iphone_heic_with_irot_and_exif_orientation_is_rotated_once():
    """This iPhone photo has both irot (90° clockwise) and EXIF orientation 6 for the same turn."""
    path = HEIC / "iphone_13_pro_max.HEIC"
    need(path)
    with Image.open(path) as image:  # pillow-heif applies irot: portrait
        assert image.width < image.height
        reference = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    result = decoded(path)
    assert mean_abs_diff(result, reference) < 4.0 < mean_abs_diff(np.rot90(result, 2), reference)
