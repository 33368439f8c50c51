"""Decode an image into the small upright RGB array the model wants, doing as little work as possible.

Big JPEGs are decoded at reduced scale by the DCT itself (draft mode, to no less than the
output size) and other formats are shrunk with `reduce()` (to no less than twice it), before
the final bilinear resize. On 1 MP photos this differs from a full decode by under 1 grey level
on average and gives the same labels, at two thirds of the cost of drafting to twice the size;
it is also what the shipped model was calibrated on. The EXIF rotation is
applied after shrinking, where it is cheap. Every way a file can fail becomes a `DecodeError`
whose message a person can act on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # HEIC/HEIF/AVIF from phones: optional, see the `heif` extra.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the install
    pillow_heif = None  # type: ignore[assignment]

try:  # JPEG XL: optional, see the `jxl` extra; importing it registers the format with Pillow.
    import pillow_jxl as _pillow_jxl

    pillow_jxl: ModuleType | None = _pillow_jxl
except ImportError:  # pragma: no cover - depends on the install
    pillow_jxl = None

# The first bytes of a JPEG XL file: a bare codestream, or the ISO-BMFF container.
JXL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")

DEFAULT_MAX_PIXELS = 200_000_000
# Bump when `decode` gives other pixels for the same bytes: cached predictions then no longer hold.
PREPROCESSING_VERSION = 1

# Pillow's own bomb check is global state and only warns below 2x its limit; we check ourselves.
Image.MAX_IMAGE_PIXELS = None
# Pillow warns about damage it recovers from (e.g. "Tag data larger than file" in EXIF): never a
# reason to fail a photo, nor worth a line on the user's terminal. Filtered once, for Pillow's
# own modules, because `warnings.catch_warnings()` swaps global state and decoding runs on
# several threads at once.
warnings.filterwarnings("ignore", module=r"PIL\.")

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DecodeError(Exception):
    """The file could not be turned into model input; the message says why."""


class OverPixelCap(DecodeError):
    """The image has more pixels than the caller allows; the caller names its own way to allow more."""


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8; 1 when absent or unreadable (malformed EXIF must not fail a photo)."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - any EXIF parser failure means "no usable orientation"
        return 1
    return value if value in range(1, 9) else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return image.transpose(transpose) if transpose is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparent areas over white, as a photo viewer would show them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # most photos: no copy


def _unreadable(source: bytes | Path) -> str:
    """Why Pillow did not recognise the file: a format that needs a plugin, or none it knows."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            head = handle.read(12)
    else:
        head = source[:12]
    if head.startswith(JXL_SIGNATURES) and pillow_jxl is None:
        return "JPEG XL image, which needs pillow-jxl-plugin: pip install 'notcat-sort[jxl]'"
    return "not an image that can be read (unknown or unsupported format)"


def decode(source: bytes | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
           orientation: int | None = None) -> np.ndarray:
    """Return a (size, size, 3) uint8 RGB array of the whole image, upright, squashed to square.

    `orientation` (EXIF 1-8) overrides the image's own, for a JPEG shown as its container says
    (a RAW file's preview, an EXIF thumbnail of a rotated photo)."""
    if isinstance(source, bytes) and not source:
        raise DecodeError("empty file")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise OverPixelCap(
                    f"image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
                    f"{max_pixels / 1e6:.0f} MP cap"
                )
            # pillow-heif has already applied the HEIF irot/imir transforms, which the format
            # makes authoritative (EXIF orientation there is informative): apply nothing twice.
            if orientation is None:
                orientation = 1 if image.format == "HEIF" else exif_orientation(image)
            if image.format == "JPEG":  # the IDCT's own downscale: the cheapest decode there is
                image.draft("RGB", (size, size))
            image.seek(0)  # first frame of animations
            image.load()
            factor = min(image.width, image.height) // (2 * size)
            if factor >= 2:
                image = image.reduce(factor)
            rgb = _to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(upright(rgb, orientation))
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(_unreadable(source)) from None
    except Image.DecompressionBombError as error:
        raise DecodeError(f"decompression bomb: {error}") from None
    except Exception as error:  # noqa: BLE001 - a malformed file can make Pillow raise almost anything
        # (struct.error, ZeroDivisionError, ...); an escaped one would end the whole run.
        message = str(error) or type(error).__name__
        if "truncated" in message.lower():
            message = "truncated image data (the file is incomplete)"
        raise DecodeError(f"cannot decode image: {message}") from None
