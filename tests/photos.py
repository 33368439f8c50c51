"""Small photo-like JPEGs generated on the fly, so the CLI and safety tests run from a bare
checkout without ../shared. Each is distinct (smooth colour fields, a few shapes, sensor-like
noise), deterministic, and a few kB; what the model makes of them does not matter to those tests."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = (200, 150)
# Bump when the drawing changes, so a stale folder from an earlier version is not reused.
VERSION = 1
FOLDER = Path(tempfile.gettempdir()) / f"notcat-sort-test-photos-v{VERSION}"


def photo_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, SIZE[0]), rng.integers(0, SIZE[1])
        radius = int(rng.integers(10, 50))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 8, (SIZE[1], SIZE[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def photos(count: int, first: int = 0) -> list[Path]:
    """`count` distinct generated JPEGs (made once per machine in the temp folder), as paths to copy from."""
    FOLDER.mkdir(exist_ok=True)
    paths = []
    for seed in range(first, first + count):
        path = FOLDER / f"photo-{seed:04d}.jpg"
        if not path.exists():
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_bytes(photo_bytes(seed))
            os.replace(temporary, path)
        paths.append(path)
    return paths
