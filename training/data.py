"""Labelled items: a manifest dataset, cat/ and not-cat/ folders, and synthetic renders.

Every image goes through `notcat_sort.decode.decode`, exactly as the CLI feeds the model, so the
numbers in the card are the numbers users get.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from notcat_sort.decode import decode
from notcat_sort.scan import scan
from training import synthetic

LABELS = ("not-cat", "cat")


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
        assert self.index is not None, "an item is a file or a render"
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


def synthetic_count(n: int, limit: int | None) -> int:
    """Synthetic negatives to add: `n`, or for a --limit run an eighth of the limit (at least 4)."""
    return min(n, max(4, limit // 8)) if limit else n


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


def runtime_batch(items: list[Item], size: int) -> np.ndarray:
    """Exactly what the CLI gives the model: `decode` of each item."""
    return np.stack([decode(item.encoded(), size) for item in items])
