"""The photos the breed and mood heads learn from, and the shipped backbone's pooled features of them.

Breeds: ../shared/datasets/breeds (Oxford-IIIT Pet's 12 cat breeds), plus the pool's non-pedigree
cats (catnotcat's petimages-cat and campus-cats) as the `domestic` class: most cats in a library
have no pedigree, and a 12-way head would name one for every tabby. Moods: ../shared/datasets/mood.

Features are read from the shipped int8 graph itself (the heads run on what it computes): the
cat-weighted `embedding` output and the global average pool the ImageNet classifier reads, each
for the photo and for its mirror image (a training-time augmentation: the runtime runs each photo
once). They are cached under the workdir, keyed by the model's sha256 and the photos.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from notcat_sort.content import sha256_file
from notcat_sort.decode import decode
from training import runtime

DATASETS = Path("../shared/datasets")
DOMESTIC = "domestic"
NON_PEDIGREE_GROUPS = ("petimages-cat", "campus-cats")
NON_PEDIGREE_PHOTOS = 2000  # PetImages' 6,198 cats are sampled to this (campus-cats' 219 all kept)
POOLINGS = ("embedding", "pooled")  # the cat-weighted pooling (an output) and the global average pool
BATCH = 32


@dataclass(frozen=True)
class Photo:
    """A labelled photo; `source` is what must stay on one side of a split (a campus cat, or the photo)."""

    path: Path
    label: str
    source: str


def _manifest(root: Path, column: str) -> list[Photo]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        return [Photo(root / row["path"], row[column], row["path"]) for row in csv.DictReader(handle)]


def breed_photos(root: Path) -> list[Photo]:
    return _manifest(root, "breed")


def mood_photos(root: Path) -> list[Photo]:
    return _manifest(root, "mood")


def non_pedigree_photos(pool: Path, limit: int | None = NON_PEDIGREE_PHOTOS, seed: int = 0) -> list[Photo]:
    """The pool's mixed-breed cats as `domestic` photos: every campus cat photo (source: the cat, the 10
    characters after the group's name) and a seeded sample of `limit` PetImages cats."""
    chosen: list[Photo] = []
    with open(pool / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["group"] in NON_PEDIGREE_GROUPS]
    pets = [row for row in rows if row["group"] == "petimages-cat"]
    if limit is not None and limit < len(pets):
        pets = random.Random(seed).sample(pets, limit)
    for row in rows:
        if row["group"] == "campus-cats":
            cat = Path(row["path"]).name.removeprefix("campus-cats-")[:10]
            chosen.append(Photo(pool / row["path"], DOMESTIC, f"campus-cats:{cat}"))
    chosen += [Photo(pool / row["path"], DOMESTIC, row["path"]) for row in pets]
    return chosen


def pooled_tensor(graph: onnx.GraphProto) -> str:
    """The global average pool of the last feature map, flattened to (N, C): what the ImageNet classifier reads."""
    pool = next(node for node in graph.node if node.op_type == "GlobalAveragePool")
    flatten = next(node for node in graph.node if node.op_type == "Flatten" and node.input[0] == pool.output[0])
    return flatten.output[0]


def _with_pooled_output(model: Path) -> bytes:
    """The model with its global pool as an extra output, for reading features only."""
    proto = onnx.load(str(model))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(pooled_tensor(proto.graph), onnx.TensorProto.FLOAT,
                                                                 None))
    return proto.SerializeToString()


def features(model: Path, photos: list[Photo], workdir: Path, size: int) -> dict[str, np.ndarray]:
    """Per photo, in order, float32 (N, 1280) each: `embedding`, `pooled`, and the same of the mirror image
    (`embedding-flip`, `pooled-flip`). Each photo is decoded once, as the CLI decodes it, at `size` px."""
    digest = hashlib.sha256(f"{sha256_file(model)}|{size}|v1".encode())
    for photo in photos:
        digest.update(str(photo.path).encode() + b"\0")
    folder = Path(workdir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"attributes-{digest.hexdigest()[:16]}.npz"
    if not path.exists():
        graph = _with_pooled_output(model)
        session = runtime.session(graph)
        names = ["embedding", pooled_tensor(onnx.load_from_string(graph).graph)]
        parts: dict[str, list[np.ndarray]] = {key: [] for key in _keys()}
        for start in range(0, len(photos), BATCH):
            images = np.stack([decode(photo.path, size) for photo in photos[start:start + BATCH]])
            both = np.concatenate([images, images[:, :, ::-1]])
            outputs = dict(zip(POOLINGS, session.run(names, {"image": both}), strict=True))
            for pooling in POOLINGS:
                parts[pooling].append(outputs[pooling][:len(images)])
                parts[f"{pooling}-flip"].append(outputs[pooling][len(images):])
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, **{key: np.concatenate(value).astype(np.float32) for key, value in parts.items()})
        partial.rename(path)
    with np.load(path) as stored:
        return {key: stored[key] for key in _keys()}


def _keys() -> list[str]:
    return [*POOLINGS, *(f"{pooling}-flip" for pooling in POOLINGS)]
