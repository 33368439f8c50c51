"""Thumbnails for the review page: made on first request, upright, and kept in memory."""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from notcat_sort.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    exif_orientation,
    upright,
)


class Thumbnails:
    """JPEG thumbnails, least recently used dropped first; keyed by the file's stat, so a file
    changed since is drawn again."""

    def __init__(self, size: int = 320, capacity: int = 2048) -> None:
        self.size, self.capacity = size, capacity
        self._kept: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> bytes:
        """Raises FileNotFoundError or PermissionError when the file cannot be read, DecodeError when
        it cannot be drawn."""
        status = os.stat(path)
        key = (os.fspath(path), status.st_ino, status.st_size, status.st_mtime_ns)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        thumbnail = self._draw(path)
        with self._lock:
            self._kept[key] = thumbnail
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return thumbnail

    def _draw(self, path: Path) -> bytes:
        try:
            with Image.open(path) as image:
                if image.width * image.height > DEFAULT_MAX_PIXELS:
                    raise DecodeError(f"image is {image.width}x{image.height}, too large to draw")
                orientation = 1 if image.format == "HEIF" else exif_orientation(image)  # as decode() does
                if image.format == "JPEG":
                    image.draft("RGB", (self.size, self.size))
                image.thumbnail((self.size, self.size))
                small = upright(image.convert("RGB"), orientation)
        except (DecodeError, FileNotFoundError, PermissionError):
            raise
        except Exception as error:  # noqa: BLE001 - a damaged file can make Pillow raise almost anything
            raise DecodeError(f"cannot draw a thumbnail: {error or type(error).__name__}") from None
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=82)
        return buffer.getvalue()
