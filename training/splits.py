"""Leave-sources-out folds: how fit measures what users get on photos from sources it never saw.

A validation split drawn from the same sources as training says little about a user's photos (the
last model scored 0.99 on one and missed one cat in five of real photos), so model selection, the
temperature and the threshold are decided on out-of-source predictions: each out-of-source
*source* (a whole group, or one ImageNet class of the imagenet-sample group) is assigned to one of
K folds, and every image of fold k is predicted by a model fitted without any image of its source.
Images of the remaining (in-source) groups are dealt to folds one by one, which gives the
in-source figures that the old random split reported.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from training.data import Item

# Real photos from sources other than the pool's two big ones (PetImages, CIFAR-10).
OUT_OF_SOURCE_GROUPS = ("oxford-full-cat", "oxford-full-not-cat", "campus-cats", "lions", "food", "streets",
                        "rooms", "screenshots", "imagenet-sample")
FOLDS = 4


def source(item: Item) -> str:
    """What must stay on one side of a split: the group, or for imagenet-sample the ImageNet class."""
    if item.group == "imagenet-sample" and item.path is not None:
        return "imagenet-sample:" + Path(item.path).stem.removeprefix("imagenet-sample-")
    return item.group


def is_out_of_source(item: Item) -> bool:
    return item.group in OUT_OF_SOURCE_GROUPS


def folds(items: list[Item], seed: int, k: int = FOLDS) -> np.ndarray:
    """Fold 0..k-1 per item. Out-of-source sources are dealt whole, cat sources and not-cat sources
    separately (so the few cat sources end up in different folds); in-source images one by one."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for name, label in sorted({(source(item), item.label) for item in items if is_out_of_source(item)}):
        by_label.setdefault(label, []).append(name)
    fold_of: dict[str, int] = {}
    for label in sorted(by_label):
        names = by_label[label]
        rng.shuffle(names)
        offset = rng.randrange(k)
        fold_of.update({name: (offset + i) % k for i, name in enumerate(names)})
    assignment = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        assignment[i] = fold_of[source(item)] if is_out_of_source(item) else rng.randrange(k)
    return assignment
