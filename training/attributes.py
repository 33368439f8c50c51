"""The photos the breed and mood heads learn from, and the shipped backbone's pooled features of them.

Breeds: ../shared/datasets/breeds (Oxford-IIIT Pet's 12 cat breeds), plus the pool's non-pedigree
cats (catnotcat's petimages-cat and campus-cats) as the `domestic` class: most cats in a library
have no pedigree, and a 12-way head would name one for every tabby. Moods: ../shared/datasets/mood.

Features are read from the shipped int8 graph itself (the heads run on what it computes): the
cat-weighted `embedding` output, the global average pool the ImageNet classifier reads, the
global average pool of stage 5's output (192 channels at 1/32 of the input: coat pattern and face
shape before the last stage turns them into ImageNet's classes), and stage 5's output pooled with
the `embedding`'s own weights over the places (the same 1/32 grid: the cat's face and coat rather
than the room it sits in), each for the photo and for its
mirror image (a training-time augmentation: the runtime runs each photo once). They are cached
under the workdir, keyed by the model's sha256 and the photos.
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
POOLINGS = ("embedding", "pooled", "stage5", "stage5_cat")  # the cat-weighted pooling (an output), the global pool,
# stage 5's global pool, stage 5 pooled with the cat-weighted pooling's weights
BATCH = 32


@dataclass(frozen=True)
class Photo:
    """A labelled photo; `source` is what must stay on one side of a split (a campus cat, or the photo)."""

    path: Path
    label: str
    source: str


def _manifest(root: Path, column: str) -> list[Photo]:
    """The folder's photos, labelled as people write the name (manifest.csv's `Maine_Coon`: `Maine Coon`),
    since the label is what a user reads: the report, the keywords, the breed folders, the web page."""
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        return [Photo(root / row["path"], row[column].replace("_", " "), row["path"]) for row in csv.DictReader(handle)]


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


def stage5_tensor(graph: onnx.GraphProto) -> str:
    """Stage 5's output (N, 192, H/32, W/32): what stage 6's first convolution reads (in the int8 graph,
    the dequantized tensor)."""
    return next(node for node in graph.node if node.op_type == "Conv" and node.name.startswith("/blocks/blocks.6/")).input[0]


def cat_weights(graph: onnx.GraphProto) -> str:
    """The `embedding` output's weights over the places of the last feature map, (N, 1, H/32, W/32): the
    softmax of where the ImageNet classifier sees a domestic cat (training.model.CatPooling)."""
    pool = next(node for node in graph.node if node.output[0] == "embedding")
    weighted = next(node for node in graph.node if node.output[0] == pool.input[0])
    last_map = next(node for node in graph.node if node.op_type == "GlobalAveragePool").input[0]
    return next(name for name in weighted.input if name != last_map)


def add_poolings(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> dict[str, str]:
    """The tensor of each of POOLINGS, (N, C), appending to `nodes` what computes those the graph lacks
    (stage 5's global and cat-weighted pools, unless heads already read them)."""
    stage5 = stage5_tensor(graph)
    computed = {output for node in graph.node for output in node.output}  # (a graph with heads has them)
    if "heads/stage5/pooled" not in computed:
        nodes += [onnx.helper.make_node("GlobalAveragePool", [stage5], ["heads/stage5/pool"], name="heads/stage5/pool"),
                  onnx.helper.make_node("Flatten", ["heads/stage5/pool"], ["heads/stage5/pooled"],
                                        name="heads/stage5/flatten")]
    if "heads/stage5_cat/pooled" not in computed:
        embedding = next(node for node in graph.node if node.output[0] == "embedding")  # its axes (2, 3), as input
        nodes += [onnx.helper.make_node("Mul", [stage5, cat_weights(graph)], ["heads/stage5_cat/weighted"],
                                        name="heads/stage5_cat/weighted"),
                  onnx.helper.make_node("ReduceSum", ["heads/stage5_cat/weighted", embedding.input[1]],
                                        ["heads/stage5_cat/pooled"], keepdims=0, name="heads/stage5_cat/pooled")]
    return {"embedding": "embedding", "pooled": pooled_tensor(graph), "stage5": "heads/stage5/pooled",
            "stage5_cat": "heads/stage5_cat/pooled"}


def _with_pooling_outputs(model: Path) -> tuple[bytes, list[str]]:
    """The model with every one of POOLINGS as an output (for reading features only), and their names."""
    proto = onnx.load(str(model))
    nodes: list[onnx.NodeProto] = []
    names = add_poolings(proto.graph, nodes)
    proto.graph.node.extend(nodes)
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(names[name], onnx.TensorProto.FLOAT, None)
                              for name in POOLINGS if name != "embedding")
    return proto.SerializeToString(), [names[name] for name in POOLINGS]


def features(model: Path, photos: list[Photo], workdir: Path, size: int) -> dict[str, np.ndarray]:
    """Per photo, in order, float32 (N, C) each: every one of POOLINGS, and the same of the mirror image
    (`embedding-flip`...). Each photo is decoded once, as the CLI decodes it, at `size` px."""
    digest = hashlib.sha256(f"{sha256_file(model)}|{size}|{','.join(POOLINGS)}|v1".encode())
    for photo in photos:
        digest.update(str(photo.path).encode() + b"\0")
    folder = Path(workdir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"attributes-{digest.hexdigest()[:16]}.npz"
    if not path.exists():
        graph, names = _with_pooling_outputs(model)
        session = runtime.session(graph)
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
