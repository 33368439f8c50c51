"""How each look does on small, far-away cats, out of source (`python -m training small-cats`).

The shipped model looks once at the whole photo squashed to its input size; a cat across the room
is then a few dozen pixels. A closer look (the photo at twice the size, or tiles of it) shows more
of such a cat and also more of every dog's coat. Each variant here is scored the way fit scores
the model: every photo, and every composite (training/composites.py), by the head fitted without
its fold, on the out-of-source photos and on composites of out-of-source photos, with the card's
threshold. The table goes into the card's `small_cats` entry; the model file is not changed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from notcat_sort.decode import DecodeError, decode
from notcat_sort.model import load_card
from training import card as card_module
from training import composites, data, metrics, runtime, splits
from training.evaluate import FoldHeads, fit_folds

TILES_PER_SIDE = 3  # tiles of the model's size over the photo at twice it: stride half a tile
COMPOSITES_PER_FOLD = 150  # cat composites per fold, and as many animal ones
CHUNK = 32


class Look(enum.Enum):
    """One way of looking at a photo; each gives a p_cat from the same head."""

    WHOLE = "whole photo at the model's size"
    DOUBLE = "whole photo at twice the size"
    TILES = "3 x 3 tiles at twice the size, the likeliest tile"


# What is compared: the looks a photo is called cat by (any of them).
VARIANTS = {"first look only (shipped)": (Look.WHOLE,),
            "first look, or the photo at twice the size": (Look.WHOLE, Look.DOUBLE),
            "first look, or any tile at twice the size": (Look.WHOLE, Look.TILES)}


@dataclass
class Scored:
    """Each photo's p_cat by each look, and the inference milliseconds each look took per photo (1 thread)."""

    p_cat: dict[Look, np.ndarray]
    ms_per_photo: dict[Look, float]


def _tiles(image: np.ndarray, size: int) -> np.ndarray:
    stride = size // 2
    return np.stack([image[y:y + size, x:x + size] for y in range(0, stride * TILES_PER_SIDE, stride)
                     for x in range(0, stride * TILES_PER_SIDE, stride)])


def score(model: Path, photos: Sequence[data.Item | composites.Composite], fold: np.ndarray) -> tuple[Scored, np.ndarray]:
    """Every look's out-of-fold p_cat of `photos` (those that decode: the returned mask)."""
    size = load_card(model).input_size
    heads = FoldHeads.of(model)
    net = runtime.session(model, threads=1)
    p_cat: dict[Look, list[np.ndarray]] = {look: [] for look in Look}
    seconds = dict.fromkeys(Look, 0.0)
    decoded = np.zeros(len(photos), dtype=bool)

    def head_input(images: np.ndarray, look: Look) -> np.ndarray:
        started = time.perf_counter()
        (values,) = net.run([heads.reads], {"image": images})
        seconds[look] += time.perf_counter() - started
        return values

    for start in range(0, len(photos), CHUNK):
        whole, double, rows = [], [], []
        for row in range(start, min(start + CHUNK, len(photos))):
            try:
                encoded = photos[row].encoded()
                whole.append(decode(encoded, size))
                double.append(decode(encoded, 2 * size))
            except (DecodeError, OSError):
                continue
            rows.append(row)
        if not rows:
            continue
        decoded[rows] = True
        folds = fold[rows]
        p_cat[Look.WHOLE].append(heads.p_cat(head_input(np.stack(whole), Look.WHOLE), folds))
        p_cat[Look.DOUBLE].append(heads.p_cat(head_input(np.stack(double), Look.DOUBLE), folds))
        tiles = head_input(np.concatenate([_tiles(image, size) for image in double]), Look.TILES)
        per_tile = heads.p_cat(tiles, np.repeat(folds, TILES_PER_SIDE**2))
        p_cat[Look.TILES].append(per_tile.reshape(len(rows), -1).max(axis=1))
    count = max(1, int(decoded.sum()))
    return Scored({look: np.concatenate(values) if values else np.zeros(0) for look, values in p_cat.items()},
                  {look: 1000 * seconds[look] / count for look in Look}), decoded


def _row(variant: str, looks: tuple[Look, ...], threshold: float, photos: tuple[np.ndarray, Scored, list[str]],
         made: tuple[np.ndarray, Scored]) -> dict:
    """One variant's figures: on the out-of-source photos, and on the composites."""
    y, scored, groups = photos
    called = np.any([scored.p_cat[look] >= threshold for look in looks], axis=0)
    overall = metrics.binary(y, called)
    y_made, scored_made = made
    called_made = np.any([scored_made.p_cat[look] >= threshold for look in looks], axis=0)
    campus = np.array(groups) == "campus-cats"
    return {
        "variant": variant,
        "accuracy": overall["accuracy"], "precision": overall["precision"], "recall": overall["recall"],
        "f1": overall["f1"],
        "false_cats_per_1000": 1000 * float(np.mean(called[~y])) if np.any(~y) else 0.0,
        "campus_cats_recall": float(np.mean(called[campus])) if np.any(campus) else None,
        "small_cat_recall": float(np.mean(called_made[y_made])) if np.any(y_made) else None,
        "small_animals_called_cat_per_1000": 1000 * float(np.mean(called_made[~y_made])) if np.any(~y_made) else None,
        "ms_per_photo": sum(scored.ms_per_photo[look] for look in looks),
    }


def measure(model: Path, items: list[data.Item], limit: int | None = None,
            per_fold: int = COMPOSITES_PER_FOLD, seed: int = 0) -> dict:
    """The `small_cats` card entry: each variant on the out-of-source photos (a seeded sample of
    `limit` of them, for tiny runs) and on composites made of each fold's own sources."""
    items, fold = fit_folds(model, items)
    rows = np.flatnonzero([splits.is_out_of_source(item) for item in items])
    made = composites.plan(items, fold, per_fold, seed)
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    photos = [items[row] for row in rows]
    scored, ok = score(model, photos, fold[rows])
    scored_made, ok_made = score(model, made, np.array([composite.fold for composite in made]))
    y = np.array([photo.target for photo in photos], dtype=bool)[ok]
    groups = [photo.group for photo, good in zip(photos, ok, strict=True) if good]
    y_made = np.array([composite.target for composite in made], dtype=bool)[ok_made]
    threshold = load_card(model).threshold
    return {
        "threshold": threshold,
        "photos": len(y), "cats": int(y.sum()),
        "composites": {"cats": int(y_made.sum()), "animals": int((~y_made).sum()), "area": list(composites.AREA),
                       "scenes": sorted({c.scene.group for c in made}),
                       "pasted": sorted({c.paste.group for c in made})},
        "variants": [_row(name, looks, threshold, (y, scored, groups), (y_made, scored_made))
                     for name, looks in VARIANTS.items()],
    }


def table(entry: dict) -> str:
    """The variants as the card and fit print them."""
    lines = [f"{'variant':<45} {'acc':>6} {'P':>6} {'R':>6} {'F1':>6} {'false/1k':>8} {'campus R':>8} "
             f"{'small-cat R':>11} {'animals/1k':>10} {'ms':>6}"]

    def num(value: float | None, width: int, digits: int = 4) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for row in entry["variants"]:
        lines.append(f"{row['variant']:<45} {num(row['accuracy'], 6)} {num(row['precision'], 6)} "
                     f"{num(row['recall'], 6)} {num(row['f1'], 6)} {num(row['false_cats_per_1000'], 8, 1)} "
                     f"{num(row['campus_cats_recall'], 8, 3)} {num(row['small_cat_recall'], 11, 3)} "
                     f"{num(row['small_animals_called_cat_per_1000'], 10, 1)} {num(row['ms_per_photo'], 6, 1)}")
    made = entry["composites"]
    lines.append(f"{entry['photos']} out-of-source photos ({entry['cats']} cats); composites: {made['cats']} small cats "
                 f"and {made['animals']} small animals at {made['area'][0]:.0%}-{made['area'][1]:.0%} of the frame, "
                 f"each of one fold's sources, scored by the head fitted without that fold; threshold "
                 f"{entry['threshold']:.4f}; ms: inference per photo on 1 thread")
    return "\n".join(lines)


def run(model: Path, roots: list[Path], limit: int | None, per_fold: int, command: str) -> dict:
    entry = measure(model, [item for root in roots for item in data.load_items(root)], limit, per_fold)
    entry["command"] = command
    print(table(entry))
    print(f"wrote {card_module.set_entry(model, 'small_cats', entry)}")
    return entry
