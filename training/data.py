"""Labelled items, the seeded validation split, the in-RAM training cache and augmentation.

Validation images go through `notcat_sort.decode.decode`, exactly as the CLI feeds the model, so
the numbers in the card are the numbers users get. Training images are decoded once, kept as
uint8 with the long side <= 256, and augmented cheaply in the main process: 2 cores are the budget.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from notcat_sort.decode import decode
from notcat_sort.scan import scan
from training import synthetic

LABELS = ("not-cat", "cat")
CACHE_LONG_SIDE = 256


@dataclass(frozen=True)
class Item:
    """One labelled image: a file on disk, or a synthetic render (`path` None, `index` set)."""

    label: str
    group: str
    path: Path | None = None
    index: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"{self.group}#{self.index}"

    @property
    def target(self) -> int:
        return LABELS.index(self.label)

    def encoded(self) -> bytes | Path:
        """What `decode` reads: the file, or the synthetic render encoded as a user would have it."""
        if self.path is not None:
            return self.path
        image, fmt = synthetic.render(self.index)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, quality=90)
        return buffer.getvalue()


def layout(root: Path) -> str:
    """'manifest', 'folders' (cat/ and not-cat/) or 'unlabelled' (any images, recursively)."""
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "cat").is_dir() and (root / "not-cat").is_dir():
        return "folders"
    return "unlabelled"


def load_items(root: Path) -> list[Item]:
    """The labelled items of a manifest dataset or of cat/ and not-cat/ folders (group = folder)."""
    root = Path(root)
    kind = layout(root)
    if kind == "manifest":
        with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
            return [
                Item(label=row["label"], group=row["group"], path=root / row["path"])
                for row in csv.DictReader(handle)
            ]
    if kind == "folders":
        return [
            Item(label=label, group=label, path=candidate.path)
            for label in LABELS
            for candidate in scan([root / label])
        ]
    raise ValueError(f"{root} has neither manifest.csv nor cat/ and not-cat/ folders")


def unlabelled_paths(root: Path) -> list[Path]:
    """The images the CLI would find under `root` (same scanner), so their predictions compare."""
    return [candidate.path for candidate in scan([root])]


def split(items: list[Item], seed: int, val_fraction: float = 0.2) -> tuple[list[Item], list[Item]]:
    """Seeded split stratified by (group, label), so every group, however small, is in validation."""
    strata: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in items:
        strata[(item.group, item.label)].append(item)
    rng = random.Random(seed)
    train, val = [], []
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda item: item.name)
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    return train, val


def with_synthetic(train: list[Item], val: list[Item], n_train: int, n_val: int):
    """Add synthetic negatives; disjoint index ranges keep train and val renders apart."""
    train = train + [synthetic.item(i) for i in range(n_train)]
    val = val + [synthetic.item(n_train + i) for i in range(n_val)]
    return train, val


def synthetic_counts(limit: int | None) -> tuple[int, int]:
    """Synthetic negatives added to (train, val): ~1,500 and 400, fewer for --limit runs."""
    if limit:
        return min(1500, max(4, limit // 8)), min(400, max(4, limit // 30))
    return 1500, 400


def limit(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """A small seeded sample with both labels, for tiny runs and tests."""
    if not n or n >= len(items):
        return items
    rng = random.Random(seed)
    by_label = [[item for item in items if item.label == label] for label in LABELS]
    chosen = []
    for members in by_label:
        chosen += rng.sample(members, min(len(members), max(1, n // 2)))
    return chosen


def load_for_training(item: Item) -> np.ndarray:
    """Upright RGB with the long side <= 256: big enough for large crops at 160 px, small in RAM."""
    if item.path is None:
        image, _ = synthetic.render(item.index)
    else:
        with Image.open(item.path) as opened:
            opened.draft("RGB", (CACHE_LONG_SIDE, CACHE_LONG_SIDE))
            image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((CACHE_LONG_SIDE, CACHE_LONG_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB"))


def runtime_batch(items: list[Item], size: int) -> np.ndarray:
    """Exactly what the CLI gives the model: `decode` of each item."""
    return np.stack([decode(item.encoded(), size) for item in items])


class Augment:
    """Random-resized crop squashed to S x S, flip, random resolution for both labels, colour jitter.

    Random resolution (downscale to 24..S px and back, p=0.5) keeps the model from learning that
    blurry, low-resolution images (CIFAR at 32 px) are not-cat.
    """

    def __init__(self, size: int, seed: int, crop_scale: float = 0.35) -> None:
        self.size = size
        self.crop_scale = crop_scale  # smallest crop area, as a fraction of the image; 1: never crop
        self.rng = np.random.default_rng(seed)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        rng = self.rng
        for _ in range(10):
            area = width * height * rng.uniform(self.crop_scale, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
            if w <= width and h <= height:
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return (x, y, x + w, y + h)
        return (0, 0, width, height)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        rng, size = self.rng, self.size
        image = Image.fromarray(array)
        cropped = self.crop_scale < 1 and rng.random() < 0.8
        box = self.crop_box(*image.size) if cropped else (0, 0, *image.size)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            small = int(rng.integers(24, size + 1))
            image = image.resize((small, small), Image.Resampling.BILINEAR)
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        out = np.asarray(image, dtype=np.float32)
        out = out * rng.uniform(0.7, 1.3)  # brightness
        mean = out.mean()
        out = (out - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
        grey = out.mean(axis=2, keepdims=True)
        out = (out - grey) * rng.uniform(0.6, 1.4) + grey  # saturation
        return np.clip(out, 0, 255).astype(np.uint8)
