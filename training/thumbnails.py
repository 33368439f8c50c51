"""Choose the EXIF-thumbnail band: where a thumbnail's p_cat is too close to call and the CLI
decodes the image itself (`notcat_sort.embedded`, `thumbnail` in the model card).

Each labelled photo is classified twice, as the CLI would: from the photo itself, and from a
thumbnail made as cameras make theirs (the whole stored image resized to 160x120, or 120x160 for
a portrait one, JPEG quality 80, shown upright with the photo's EXIF orientation). The fast path
decides a photo from its thumbnail when the thumbnail's p_cat is outside [low, high], else from
the photo. The band chosen is the one that lets the thumbnail decide the most photos while the
fast path's decisions agree with full decoding on at least `target` of them. Only onnxruntime and
Pillow are needed (no torch), so the choice can be rerun on any model.

A thumbnail is classified at its own scale, squashed to `THUMBNAIL_INPUT` px square, not blown up
to the photo's 224: upscaling a 160x120 picture adds no detail, and inference is most of the fast
path's cost. Measured on the 5,866 out-of-source photos at 99.9% agreement (int8 model of card
2.0.0; inference time per image, one core, relative to 224 px), the share the thumbnail decides:
224 px 1.00, 96.9%; 192 px 0.72, 93.7%; 224x160 (aspect kept) 0.72, 93.2%; 160 px 0.51, 65.2%;
160x120 as stored 0.39, 65.0%; 128 px 0.32, 0%. A photo sent on to full decoding costs about five
224 px inferences (the 12 MP decode, hashing it again, its inference), so 192 px costs least per
photo (0.72 + 0.063 x 5 = 1.03 against 1.16 at 224 px), and 28% of the inference of each photo
its thumbnail decides. A head refitted on 160 px thumbnails' evidence to predict full decoding's label decided
fewer photos (55%), not more: below 192 px the detail that tells the hard cases apart is gone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from notcat_sort.decode import DecodeError, decode, exif_orientation
from notcat_sort.model import Classifier, load_card
from training.card import set_entry
from training.data import Item
from training.splits import is_out_of_source

THUMBNAIL_SIZE = (160, 120)
THUMBNAIL_QUALITY = 80
THUMBNAIL_INPUT = 192  # px: the square the model sees a thumbnail as (see above)
TARGET_AGREEMENT = 0.999
BATCH = 32


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    agreement: float  # of the fast path's decisions with full decoding's, on the photos below
    thumbnail_share: float  # of the photos the thumbnail decides (outside the band)
    photos: int
    target: float
    size: int = THUMBNAIL_INPUT  # the model's input size for a thumbnail
    thumbnail: str = (f"whole image resized to {THUMBNAIL_SIZE[0]}x{THUMBNAIL_SIZE[1]} (portrait: "
                      f"{THUMBNAIL_SIZE[1]}x{THUMBNAIL_SIZE[0]}), JPEG quality {THUMBNAIL_QUALITY}")


def camera_thumbnail(photo: bytes | Path) -> tuple[bytes, int]:
    """A thumbnail of `photo` as a camera writes one into EXIF IFD1, and the photo's orientation."""
    with Image.open(io.BytesIO(photo) if isinstance(photo, bytes) else photo) as image:
        orientation = exif_orientation(image)
        size = THUMBNAIL_SIZE if image.width >= image.height else THUMBNAIL_SIZE[::-1]
        thumbnail = image.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue(), orientation


def paired_p_cat(model: Path, items: Sequence[Item], size: int = THUMBNAIL_INPUT) -> tuple[np.ndarray, np.ndarray]:
    """(p_cat from the photo, p_cat from its camera-style thumbnail seen at `size`) per readable item."""
    card = load_card(model)
    classifier = Classifier(card, threads=0)  # 0: onnxruntime uses every core
    full, small = [], []
    for start in range(0, len(items), BATCH):
        images, thumbnails = [], []
        for item in items[start:start + BATCH]:
            try:
                photo = item.encoded()
                jpeg, orientation = camera_thumbnail(photo)
                images.append(decode(photo, card.input_size))
                thumbnails.append(decode(jpeg, size, orientation=orientation))
            except (DecodeError, OSError, ValueError):
                continue  # what the CLI cannot decode it reports as an error: no decision to agree on
        if images:
            full.append(classifier.p_cat(np.stack(images)))
            small.append(classifier.p_cat(np.stack(thumbnails)))
    return (np.concatenate(full), np.concatenate(small)) if full else (np.empty(0), np.empty(0))


def choose_band(full: np.ndarray, thumbnail: np.ndarray, threshold: float,
                target: float = TARGET_AGREEMENT, size: int = THUMBNAIL_INPUT) -> Band:
    """The widest-savings band [low, high] around `threshold` for which deciding outside it by the
    thumbnail agrees with full decoding on >= `target` of the photos (inside it the photo decides,
    so agreement there is certain)."""
    n = len(full)
    if n == 0:
        raise ValueError("no photos to choose a thumbnail band on")
    disagree = (full >= threshold) != (thumbnail >= threshold)
    allowed = math.floor((1 - target) * n + 1e-9)
    below = np.sort(thumbnail[thumbnail < threshold])
    above = np.sort(thumbnail[thumbnail >= threshold])
    wrong_below = np.sort(thumbnail[disagree & (thumbnail < threshold)])
    wrong_above = np.sort(thumbnail[disagree & (thumbnail >= threshold)])[::-1]  # highest first
    best: tuple[int, float, float] | None = None
    # low: the thumbnail decides p < low. Each candidate lets through the disagreements below it.
    for low in np.unique(np.concatenate([below, [threshold]])):
        spent = int(np.searchsorted(wrong_below, low, side="left"))
        if spent > allowed:
            break
        left = allowed - spent  # disagreements the thumbnail may decide above the band
        # high: the thumbnail decides p > high; the `left`+1-th highest disagreement must be inside.
        high = float(wrong_above[left]) if left < len(wrong_above) else threshold
        saved = int(np.searchsorted(below, low, side="left")) + int(len(above) - np.searchsorted(above, high, "right"))
        if best is None or saved > best[0]:
            best = (saved, float(low), high)
    assert best is not None  # low = the smallest thumbnail p_cat spends nothing
    saved, low, high = best
    # Rounded outwards, so that the card's band never lets the thumbnail decide one more photo.
    low, high = math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4
    thumbnail_decides = (thumbnail < low) | (thumbnail > high)
    agreement = 1 - float(np.mean(disagree & thumbnail_decides))
    return Band(low, high, agreement, float(np.mean(thumbnail_decides)), n, target, size)


def choose_for_model(model: Path, items: Sequence[Item], target: float = TARGET_AGREEMENT,
                     size: int = THUMBNAIL_INPUT) -> Band:
    """The band for `model` on `items` (the out-of-source photos), thumbnails seen at `size`, at the
    model card's threshold."""
    full, thumbnail = paired_p_cat(model, items, size)
    return choose_band(full, thumbnail, load_card(model).threshold, target, size)


def write_band(model: Path, band: Band) -> Path:
    """Store `band` as the card's `thumbnail` entry; every other field, and the model, unchanged."""
    return set_entry(model, "thumbnail", asdict(band))


def out_of_source(items: Sequence[Item]) -> list[Item]:
    """The photos to choose the band on: those from sources the model never trained on."""
    return [item for item in items if is_out_of_source(item) and item.path is not None]
