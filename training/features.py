"""Frozen ImageNet backbones' outputs on the training pool, computed once and cached under the workdir.

A backbone that is not trained gives the same features every run, so fit decodes each image the way
the CLI does (`notcat_sort.decode.decode`), runs it through the frozen network once, and keeps the
pooled penultimate features and the 1000 ImageNet logits in `<workdir>/features/`. Heads, folds,
temperatures and thresholds are then fitted in seconds on those arrays, and a rerun costs nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from notcat_sort.decode import decode
from training.data import Item
from training.model import imagenet_classifier, imagenet_model, normalise, pooled_features

BATCH = 64


@dataclass(frozen=True)
class Outputs:
    """Per image, in item order: pooled penultimate features and ImageNet logits (float32)."""

    features: np.ndarray
    logits: np.ndarray


def _key(arch: str, size: int, view: str, items: list[Item]) -> str:
    digest = hashlib.sha256(f"{arch}|{size}|{view}|v1".encode())
    for item in items:
        digest.update(item.name.encode() + b"\0")
    return digest.hexdigest()[:16]


def view_of(image: np.ndarray, view: str) -> np.ndarray:
    """'runtime' is what the CLI feeds the model; 'flip' its mirror image (a free extra view)."""
    return image[:, :, ::-1] if view == "flip" else image  # a (N, H, W, 3) batch: mirror W


class Backbone(torch.nn.Module):
    """uint8 NHWC pixels in; pooled penultimate features and the classifier's logits out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.net, normalise(image))
        return pooled, imagenet_classifier(self.net)(pooled)


def session(net: torch.nn.Module, size: int, path: Path, threads: int = 2):
    """An onnxruntime session of `Backbone(net)`: on 2 cores about 2.5x faster than torch's CPU kernels."""
    import onnxruntime as ort

    torch.onnx.export(Backbone(net).eval(), (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(path),
                      dynamo=False, opset_version=17, input_names=["image"], output_names=["features", "logits"],
                      dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def pixels(items: list[Item], size: int, workdir: Path) -> np.ndarray:
    """Every item decoded as the CLI decodes it, (N, size, size, 3) uint8, memory-mapped from the cache:
    decoding the pool (and rendering its synthetic negatives) is most of a feature pass."""
    folder = Path(workdir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pixels-{size}-{_key('pixels', size, 'runtime', items)}.npy"
    if not path.exists():
        partial = path.with_suffix(".partial.npy")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
        for i, item in enumerate(tqdm(items, desc=f"decode at {size} px", mininterval=10)):
            array[i] = decode(item.encoded(), size)
        array.flush()
        del array
        partial.rename(path)
    return np.load(path, mmap_mode="r")


def outputs(items: list[Item], arch: str, size: int, views: tuple[str, ...], workdir: Path) -> dict[str, Outputs]:
    """The frozen `arch` backbone's outputs for every item and view, from the cache where it has them."""
    folder = Path(workdir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {view: folder / f"{arch}-{size}-{view}-{_key(arch, size, view, items)}.npz" for view in views}
    missing = [view for view, path in paths.items() if not path.exists()]
    if missing:
        backbone = session(imagenet_model(arch).eval(), size, folder / f"{arch}-{size}.onnx")
        started = time.time()
        collected: dict[str, tuple[list, list]] = {view: ([], []) for view in missing}
        images = pixels(items, size, workdir)
        for start in tqdm(range(0, len(items), BATCH), desc=f"{arch} features at {size} px", mininterval=10):
            batch = np.asarray(images[start:start + BATCH])
            for view in missing:
                features, logits = backbone.run(None, {"image": np.ascontiguousarray(view_of(batch, view))})
                collected[view][0].append(features)
                collected[view][1].append(logits)
        for view in missing:
            np.savez(paths[view], features=np.concatenate(collected[view][0]).astype(np.float32),
                     logits=np.concatenate(collected[view][1]).astype(np.float32))
        print(f"{arch}: {len(items)} images x {len(missing)} views in {time.time() - started:.0f} s, "
              f"cached in {folder}", flush=True)
    loaded = {}
    for view, path in paths.items():
        with np.load(path) as stored:
            loaded[view] = Outputs(features=stored["features"], logits=stored["logits"])
    return loaded
