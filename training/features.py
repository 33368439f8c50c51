"""Frozen ImageNet backbones' outputs on the training pool, computed once and cached under the workdir.

A backbone that is not trained gives the same features every run, so fit decodes each image the way
the CLI does (`notcat_sort.decode.decode`), runs it through the frozen network once, and keeps the
pooled penultimate features and the 1000 ImageNet logits (the teacher's outputs) in
`<workdir>/features/`, and, for the fine-tuning variants, the activations entering the stages they
tune (`trunk`). Heads, folds, temperatures and thresholds are then fitted on those arrays, and a
rerun costs nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from notcat_sort.decode import decode
from training import runtime
from training.data import Item
from training.model import imagenet_classifier, imagenet_model, normalise, pooled_features

BATCH = 64
VIEW = "runtime"  # what the CLI feeds the model; part of the cache key


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


class Backbone(nn.Module):
    """uint8 NHWC pixels in; pooled penultimate features and the classifier's logits out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.net, normalise(image))
        return pooled, imagenet_classifier(self.net)(pooled)


class Trunk(nn.Module):
    """uint8 NHWC pixels in; the activations entering stage `stage` of an EfficientNet out."""

    def __init__(self, net: nn.Module, stage: int) -> None:
        super().__init__()
        self.net, self.stage = net, stage

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.net.bn1(self.net.conv_stem(normalise(image)))
        for block in self.net.blocks[:self.stage]:
            x = block(x)
        return x


def session(module: nn.Module, size: int, path: Path, outputs: tuple[str, ...]):
    """`module` (uint8 pixels in) exported to `path` and run by onnxruntime: on 2 cores about 2.5x faster
    than torch's CPU kernels."""
    torch.onnx.export(module.eval(), (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(path),
                      dynamo=False, opset_version=17, input_names=["image"], output_names=list(outputs),
                      dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}})
    return runtime.session(path)


def pixels(items: list[Item], size: int, workdir: Path) -> np.ndarray:
    """Every item decoded as the CLI decodes it, (N, size, size, 3) uint8, memory-mapped from the cache:
    decoding the pool (and rendering its synthetic negatives) is most of a feature pass."""
    path = _folder(workdir) / f"pixels-{size}-{_key('pixels', size, VIEW, items)}.npy"
    if not path.exists():
        partial = path.with_suffix(".partial.npy")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
        for i, item in enumerate(tqdm(items, desc=f"decode at {size} px", mininterval=10)):
            array[i] = decode(item.encoded(), size)
        array.flush()
        del array
        partial.rename(path)
    return np.load(path, mmap_mode="r")


def outputs(items: list[Item], arch: str, size: int, workdir: Path) -> Outputs:
    """The frozen `arch` backbone's outputs for every item, from the cache where it has them."""
    folder = _folder(workdir)
    path = folder / f"{arch}-{size}-{VIEW}-{_key(arch, size, VIEW, items)}.npz"
    if not path.exists():
        backbone = session(Backbone(imagenet_model(arch)), size, folder / f"{arch}-{size}.onnx", ("features", "logits"))
        started = time.time()
        images = pixels(items, size, workdir)
        features, logits = [], []
        for start in tqdm(range(0, len(items), BATCH), desc=f"{arch} features at {size} px", mininterval=10):
            pooled, scores = backbone.run(None, {"image": np.asarray(images[start:start + BATCH])})
            features.append(pooled)
            logits.append(scores)
        np.savez(path, features=np.concatenate(features).astype(np.float32),
                 logits=np.concatenate(logits).astype(np.float32))
        print(f"{arch}: features of {len(items)} images in {time.time() - started:.0f} s, cached in {folder}", flush=True)
    with np.load(path) as stored:
        return Outputs(features=stored["features"], logits=stored["logits"])


def trunk(items: list[Item], arch: str, size: int, stage: int, workdir: Path) -> np.ndarray:
    """The frozen trunk's activations entering `stage`, (N, C, H, W) float16, memory-mapped from the cache:
    below the stages a fine-tuning variant tunes nothing changes, so it is run once."""
    folder = _folder(workdir)
    path = folder / f"{arch}-{size}-trunk{stage}-{_key(arch, size, VIEW, items)}.npy"
    if not path.exists():
        net = session(Trunk(imagenet_model(arch), stage), size, folder / f"{arch}-{size}-trunk{stage}.onnx", ("trunk",))
        started = time.time()
        images = pixels(items, size, workdir)
        shape = net.run(None, {"image": np.asarray(images[:1])})[0].shape[1:]
        partial = path.with_suffix(".partial.npy")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(items), *shape))
        for start in tqdm(range(0, len(items), BATCH), desc=f"{arch} trunk to stage {stage}", mininterval=10):
            array[start:start + BATCH] = net.run(None, {"image": np.asarray(images[start:start + BATCH])})[0]
        array.flush()
        del array
        partial.rename(path)
        print(f"{arch}: trunk to stage {stage} of {len(items)} images in {time.time() - started:.0f} s, cached in "
              f"{folder}", flush=True)
    return np.load(path, mmap_mode="r")


def _folder(workdir: Path) -> Path:
    folder = Path(workdir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
