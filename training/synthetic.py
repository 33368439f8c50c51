"""Synthetic negatives the pool lacks: screenshots, scanned documents, text-heavy images, flat graphics.

Each render is a pure function of its index (seeded RNG, Pillow's bundled font), so nothing is
stored: train and validation renders are regenerated identically on any machine.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("screenshot", "document", "text", "graphic")
_WORDS = (  # noqa: SIM905 - a sentence reads better than 51 quoted words
    "the of and to in is for on with as by at from that this file photo image settings account "
    "update report total page chapter notes meeting invoice order status open save cancel view "
    "edit help search results welcome today share when you see it nobody me also my cat tomorrow"
).split()


def group(index: int) -> str:
    return f"synthetic-{KINDS[index % len(KINDS)]}"


def item(index: int):
    from training.data import Item  # data imports this module; avoid the cycle at import time

    return Item(label="not-cat", group=group(index), index=index)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """A line's height in pixels (Pillow's bundled font is a FreeType font with a size)."""
    return int(getattr(font, "size", 11))


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in rng.integers(low, high, size=3))
    return red, green, blue


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(_WORDS, size=n))


def _size(rng: np.random.Generator, portrait: bool = False) -> tuple[int, int]:
    long, short = int(rng.integers(360, 900)), int(rng.integers(240, 600))
    return (short, long) if portrait else (long, short)


def _screenshot(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng, portrait=rng.random() < 0.35)
    dark = rng.random() < 0.3
    image = Image.new("RGB", (width, height), (30, 30, 34) if dark else _colour(rng, 225, 256))
    draw = ImageDraw.Draw(image)
    fg = (220, 220, 220) if dark else (30, 30, 30)
    bar = int(rng.integers(20, 44))
    draw.rectangle((0, 0, width, bar), fill=_colour(rng, 40, 220))
    for k in range(3):
        draw.ellipse((8 + 18 * k, bar // 2 - 5, 18 + 18 * k, bar // 2 + 5), fill=_colour(rng))
    side = int(rng.integers(0, width // 3)) if rng.random() < 0.6 else 0
    if side:
        draw.rectangle((0, bar, side, height), fill=_colour(rng, 180, 250) if not dark else (45, 45, 50))
    font = _font(int(rng.integers(11, 18)))
    y = bar + 10
    while y < height - 20:
        x = side + 12
        if rng.random() < 0.2:
            w, h = int(rng.integers(60, 140)), int(rng.integers(22, 34))
            draw.rounded_rectangle((x, y, x + w, y + h), radius=6, fill=_colour(rng, 30, 230))
            draw.text((x + 8, y + 5), _sentence(rng, 1), fill=(255, 255, 255), font=font)
            y += h + 10
        elif rng.random() < 0.15:
            w, h = int(rng.integers(80, max(81, width - side - 24))), int(rng.integers(40, 120))
            draw.rectangle((x, y, x + w, y + h), fill=_colour(rng), outline=fg)
            y += h + 10
        else:
            draw.text((x, y), _sentence(rng, int(rng.integers(2, 12))), fill=fg, font=font)
            y += _height(font) + int(rng.integers(4, 12))
    return image


def _document(rng: np.random.Generator) -> Image.Image:
    width, height = _size(rng, portrait=rng.random() < 0.8)
    paper = tuple(int(v) for v in rng.integers(225, 256) - rng.integers(0, 20, size=3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    font = _font(int(rng.integers(8, 15)))
    margin = int(rng.integers(20, 60))
    y = margin
    draw.text((margin, y), _sentence(rng, 4).title(), fill=(10, 10, 10), font=_font(_height(font) + 6))
    y += _height(font) + 16
    while y < height - margin:
        for _ in range(int(rng.integers(3, 9))):
            line = _sentence(rng, int(rng.integers(6, 16)))
            draw.text((margin, y), line, fill=_colour(rng, 0, 60), font=font)
            y += _height(font) + 4
            if y > height - margin:
                break
        y += _height(font)
    image = image.rotate(float(rng.uniform(-4, 4)), resample=Image.Resampling.BILINEAR,
                         expand=True, fillcolor=_colour(rng, 60, 200))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    noise = rng.normal(0, rng.uniform(0, 8), size=(image.height, image.width, 1))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def _text(rng: np.random.Generator) -> Image.Image:
    """Memes and quote cards: big text, often outlined, over a flat or gradient background."""
    width, height = _size(rng, portrait=rng.random() < 0.5)
    image = _gradient(rng, width, height) if rng.random() < 0.6 else Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    font = _font(int(rng.integers(22, 56)))
    fill, stroke = ((255, 255, 255), (0, 0, 0)) if rng.random() < 0.6 else (_colour(rng), _colour(rng))
    y = int(rng.integers(5, 30))
    for _ in range(int(rng.integers(1, 6))):
        text = _sentence(rng, int(rng.integers(1, 5))).upper()
        draw.text((int(rng.integers(5, 40)), y), text, fill=fill, font=font,
                  stroke_width=int(rng.integers(0, 4)), stroke_fill=stroke)
        y += int(_height(font) * rng.uniform(1.1, 2.5))
        if y > height - _height(font):
            break
    return image


def _gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx / width * math.cos(angle) + yy / height * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))


def _graphic(rng: np.random.Generator) -> Image.Image:
    """Flat shapes, bar/line charts and gradients: logos, slides, plots."""
    width, height = _size(rng, portrait=rng.random() < 0.3)
    image = _gradient(rng, width, height) if rng.random() < 0.4 else Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:  # chart
        left, bottom = width // 10, height - height // 8
        draw.line((left, height // 10, left, bottom), fill=(0, 0, 0), width=2)
        draw.line((left, bottom, width - 10, bottom), fill=(0, 0, 0), width=2)
        n = int(rng.integers(3, 14))
        values = rng.uniform(0.1, 1.0, size=n)
        step = (width - left - 20) / n
        if rng.random() < 0.5:
            for k, v in enumerate(values):
                x = left + 5 + k * step
                draw.rectangle((x, bottom - v * (bottom - height // 10), x + step * 0.7, bottom), fill=_colour(rng))
        else:
            points = [(left + k * step, bottom - v * (bottom - height // 10)) for k, v in enumerate(values)]
            draw.line(points, fill=_colour(rng, 0, 200), width=int(rng.integers(2, 5)))
        draw.text((left, 4), _sentence(rng, 3), fill=(0, 0, 0), font=_font(14))
    else:  # shapes
        for _ in range(int(rng.integers(2, 12))):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
            shape = rng.integers(0, 3)
            box = (int(x0), int(y0), int(x1), int(y1))
            if shape == 0:
                draw.rectangle(box, fill=_colour(rng))
            elif shape == 1:
                draw.ellipse(box, fill=_colour(rng))
            else:
                draw.polygon([(int(x0), int(y1)), (int(x1), int(y1)), ((int(x0) + int(x1)) // 2, int(y0))], fill=_colour(rng))
    return image


_RENDER = {"screenshot": (_screenshot, "PNG"), "document": (_document, "JPEG"),
           "text": (_text, "JPEG"), "graphic": (_graphic, "PNG")}


def render(index: int) -> tuple[Image.Image, str]:
    """The image for `index` and the format a user would have it in."""
    rng = np.random.default_rng([20240611, index])
    draw, fmt = _RENDER[KINDS[index % len(KINDS)]]
    return draw(rng), fmt
