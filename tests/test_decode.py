"""decode(): the fast path (DCT draft scaling, reduce, rotate after shrinking) must give what a
plain full decode gives, because the model was trained on exactly that."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from shared_data import SHARED, requires

from notcat_sort.decode import DecodeError, decode
from notcat_sort.model import default_model_path, load_card

SAMPLES = SHARED / "samples"
SIZE = load_card(default_model_path()).input_size  # what the CLI decodes to

pytestmark = requires(SAMPLES)


def full_decode(path: Path) -> np.ndarray:
    """The obvious way: decode every pixel, turn upright, squash to SIZE x SIZE bilinearly."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(upright.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("photo", ["camera/hdr/iphone_hdr_NO.jpg", "camera/mobile/HMD_Nokia_8.3_5G.jpg",
                                   "camera/hdr/canon_hdr_NO.jpg"])
def test_draft_decode_matches_a_full_decode(photo):
    path = SAMPLES / photo
    fast = decode(path, SIZE)
    assert fast.shape == (SIZE, SIZE, 3) and fast.dtype == np.uint8
    assert mean_abs_difference(fast, full_decode(path)) < 1.5
    assert decode(path.read_bytes(), SIZE).tobytes() == fast.tobytes()  # bytes or path: same result


def test_different_photos_do_not_look_alike():
    """The tolerance above is meaningful: unrelated photos differ by far more."""
    one = decode(SAMPLES / "camera/hdr/iphone_hdr_NO.jpg", SIZE)
    other = decode(SAMPLES / "camera/mobile/HMD_Nokia_8.3_5G.jpg", SIZE)
    assert mean_abs_difference(one, other) > 10


@pytest.mark.parametrize("shape", ["Landscape", "Portrait"])
def test_every_exif_orientation_comes_out_upright(shape):
    """The same picture stored in all eight EXIF orientations decodes to one upright image."""
    reference = full_decode(SAMPLES / "orientation" / f"{shape}_1.jpg")
    for orientation in range(9):
        path = SAMPLES / "orientation" / f"{shape}_{orientation}.jpg"
        assert mean_abs_difference(decode(path, SIZE), reference) < 3, path.name


def test_landscape_and_portrait_differ():
    landscape = decode(SAMPLES / "orientation" / "Landscape_1.jpg", SIZE)
    portrait = decode(SAMPLES / "orientation" / "Portrait_1.jpg", SIZE)
    assert mean_abs_difference(landscape, portrait) > 10


def test_megapixel_cap_refuses_before_decoding():
    """decode is shared by the CLI, serve and training's evaluate: its message names no command's flag
    (the CLI adds its own --max-pixels hint, tests/test_bad_input.py)."""
    with pytest.raises(DecodeError, match="over the 1 MP cap") as refused:
        decode(SAMPLES / "camera/hdr/iphone_hdr_NO.jpg", SIZE, max_pixels=1_000_000)
    assert "--" not in str(refused.value)


@pytest.mark.parametrize("failure", [struct.error("unpack requires a buffer of 4 bytes"),
                                     ZeroDivisionError("division by zero")])
def test_any_decoder_failure_is_a_decode_error(failure, monkeypatch):
    """Malformed files make Pillow raise many exception types; any of them escaping a worker
    would end the whole run, so each must become a DecodeError, i.e. one error row."""
    def load(self):
        raise failure

    monkeypatch.setattr(Image.Image, "load", load)
    with pytest.raises(DecodeError, match="cannot decode image"):
        decode(SAMPLES / "orientation/Landscape_0.jpg", SIZE)
