"""Small-cat composites: a cat, or another animal the same way, pasted at 3-15% of a scene's frame.

The pool's cats fill their frames; the cat asleep across the room that people photograph is not
in it. A composite stands in for one: a feathered oval cut from the middle of a photo (where its
subject is), scaled to a share of a scene's frame and blended in, then noise and a JPEG encoding
over the whole picture, so that nothing but its content marks the paste. Animals that are not
cats (dogs, lions, ImageNet's animals) are pasted exactly the same way: a model that learned "a
pasted oval" calls those cats too, and the validation shows it.

Both photos of a composite come from one fold's out-of-source sources, so a head validated on the
composites of fold k has seen neither the cat nor the room.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training import splits
from training.data import Item

AREA = (0.03, 0.15)  # share of the scene's frame the pasted oval covers
MIDDLE = 0.12  # cut from each side of the pasted photo: its middle is where its subject is
FEATHER = 0.3  # share of the oval's radius over which the paste fades into the scene
NOISE = (0.0, 3.0)  # standard deviation of the Gaussian noise over the whole composite, in 8-bit levels
QUALITY = (75, 95)  # JPEG quality of the composite
# ImageNet-1k's classes sorted by synset id are animals up to index 397; abacus (398) is the first object.
FIRST_IMAGENET_OBJECT = "n02666196"
ANIMAL_GROUPS = ("lions", "oxford-full-not-cat")


def is_animal(item: Item) -> bool:
    """A not-cat photo of an animal: what a small-cat look must not call cat."""
    if item.label == "cat" or not splits.is_out_of_source(item):
        return False
    if item.group == "imagenet-sample" and item.path is not None:
        return item.path.stem.removeprefix("imagenet-sample-") < FIRST_IMAGENET_OBJECT
    return item.group in ANIMAL_GROUPS


def is_scene(item: Item) -> bool:
    """A not-cat photo without an animal (a room, a street, food, an object): a background."""
    return item.label == "not-cat" and splits.is_out_of_source(item) and not is_animal(item)


@dataclass(frozen=True)
class Box:
    """Where the paste went, as shares of the frame (left, top, right, bottom)."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class Composite:
    """`paste` (a cat or an animal photo) pasted into `scene`; both from the sources of `fold`."""

    paste: Item
    scene: Item
    fold: int
    seed: int

    @property
    def label(self) -> str:
        return self.paste.label

    @property
    def target(self) -> int:
        return self.paste.target

    @property
    def group(self) -> str:
        return f"small {'cat' if self.label == 'cat' else 'animal'} in {self.scene.group}"

    @property
    def name(self) -> str:
        return f"{self.paste.name} in {self.scene.name}"

    def render(self) -> tuple[Image.Image, Box]:
        rng = random.Random(self.seed)
        scene, paste = _open(self.scene), _open(self.paste)
        width, height = scene.size
        middle = paste.crop((round(paste.width * MIDDLE), round(paste.height * MIDDLE),
                             round(paste.width * (1 - MIDDLE)), round(paste.height * (1 - MIDDLE))))
        area = rng.uniform(*AREA) * width * height
        aspect = middle.width / middle.height
        paste_width = min(width, max(8, round((area * aspect) ** 0.5)))
        paste_height = min(height, max(8, round(paste_width / aspect)))
        middle = middle.resize((paste_width, paste_height), Image.Resampling.LANCZOS)
        left, top = rng.randrange(width - paste_width + 1), rng.randrange(height - paste_height + 1)
        ys, xs = np.mgrid[0:paste_height, 0:paste_width]
        radius = np.hypot((xs + 0.5) / paste_width * 2 - 1, (ys + 0.5) / paste_height * 2 - 1)
        alpha = np.clip((1 - radius) / FEATHER, 0, 1)[..., None]
        pixels = np.asarray(scene, dtype=np.float32).copy()
        region = pixels[top:top + paste_height, left:left + paste_width]
        region[:] = region * (1 - alpha) + np.asarray(middle, dtype=np.float32) * alpha
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(*NOISE), pixels.shape)
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
        return image, Box(left / width, top / height, (left + paste_width) / width, (top + paste_height) / height)

    def encoded(self) -> bytes:
        """The composite as a JPEG file's bytes (what `decode` reads)."""
        image, _ = self.render()
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=random.Random(self.seed + 1).randint(*QUALITY))
        return buffer.getvalue()


def _open(item: Item) -> Image.Image:
    assert item.path is not None, "composites are made of photos on disk"
    with Image.open(Path(item.path)) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def plan(items: list[Item], fold: np.ndarray, per_fold: int, seed: int) -> list[Composite]:
    """Up to `per_fold` cat composites and as many animal ones per fold, each paste and its scene
    drawn from that fold's out-of-source photos (a fold without a cat or scene source has none)."""
    rng = random.Random(seed)
    composites = []
    for k in sorted({int(f) for f, item in zip(fold, items, strict=True) if splits.is_out_of_source(item)}):
        members = [item for f, item in zip(fold, items, strict=True) if f == k and item.path is not None]
        scenes = [item for item in members if is_scene(item)]
        for pastes in ([item for item in members if item.label == "cat" and splits.is_out_of_source(item)],
                       [item for item in members if is_animal(item)]):
            if not pastes or not scenes:
                continue
            for _ in range(per_fold):
                composites.append(Composite(rng.choice(pastes), rng.choice(scenes), k, rng.randrange(2**31)))
    return composites
