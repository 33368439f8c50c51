"""The smaller images a camera file carries: a RAW file's JPEG preview and a JPEG's EXIF thumbnail.

A RAW file is classified from its embedded preview: libraw's (rawpy's `extract_thumb()`) where
rawpy is installed and libraw accepts the file, else a small reader of the preview tags that
cameras write (TIFF-based RAWs: `JPEGInterchangeFormat`, JPEG strips, Panasonic's `JpgFromRaw`;
Fujifilm's RAF header; Canon CR3's `PRVW` box). The RAW container's orientation is the one that
counts; the preview's own EXIF orientation is used only where the container has none.

A JPEG's IFD1 thumbnail (~160x120) decodes in well under a millisecond against tens for the
image itself. It is used only when nothing suggests it no longer shows the image: it must be
there, decodable, of the image's aspect ratio, and show no sign of later editing (an editor's
`Software` tag, or a `ModifyDate` after `DateTimeOriginal`). Whatever goes wrong here means
"no usable embedded image", never a failed photo: the caller then decodes the image itself.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType

from PIL import Image

try:  # libraw, where it has wheels; the reader below covers the common containers without it
    import rawpy as _rawpy

    rawpy: ModuleType | None = _rawpy
except ImportError:  # pragma: no cover - depends on the install
    rawpy = None


class Source(str, Enum):
    """Which input decided a photo (the report's `source` column)."""

    THUMBNAIL = "thumbnail"  # a JPEG's EXIF IFD1 thumbnail (the fast path)
    PREVIEW = "preview"  # a RAW file's embedded JPEG preview
    IMAGE = "image"  # the image itself, decoded


@dataclass(frozen=True)
class Embedded:
    """A JPEG held inside another file, and the orientation to show it in (EXIF 1-8)."""

    jpeg: bytes
    orientation: int


class NoPreview(Exception):
    """A RAW file without an embedded JPEG preview that can be read; the message says why."""


# TIFF tags.
_ORIENTATION, _COMPRESSION, _STRIP_OFFSETS, _STRIP_BYTES = 0x112, 0x103, 0x111, 0x117
_JPEG_OFFSET, _JPEG_LENGTH, _SUB_IFDS, _EXIF_IFD = 0x201, 0x202, 0x14A, 0x8769
_RW2_JPG_FROM_RAW, _SOFTWARE, _MODIFY_DATE, _DATE_ORIGINAL = 0x2E, 0x131, 0x132, 0x9003
_JPEG_COMPRESSIONS = (6, 7)  # old-style and new-style JPEG
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS = 64  # a loop of IFD pointers in a malformed file ends here
# SOF markers of the JPEGs Pillow decodes (baseline, extended, progressive); DNG's lossless
# JPEG raw data (SOF3) is not a preview.
_DECODABLE_SOF = (0xC0, 0xC1, 0xC2)


class _Tiff:
    """Just enough of a TIFF reader for the tags above; offsets are relative to `base`."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        order = data[base:base + 2]
        if order not in (b"II", b"MM"):
            raise ValueError("not a TIFF structure")
        self.data, self.base, self.endian = data, base, "<" if order == b"II" else ">"

    def _unpack(self, fmt: str, position: int) -> tuple:
        return struct.unpack_from(self.endian + fmt, self.data, self.base + position)

    def first_ifd(self) -> int:
        return self._unpack("I", 4)[0]

    def ifd(self, offset: int) -> tuple[dict[int, tuple[int, int, int]], int]:
        """The entries of the IFD at `offset` as tag -> (type, count, position of the value), and
        the offset of the next IFD (0 for none)."""
        (count,) = self._unpack("H", offset)
        entries = {}
        for index in range(count):
            entry = offset + 2 + 12 * index
            tag, kind, number = self._unpack("HHI", entry)
            size = _TYPE_SIZES.get(kind, 1) * number
            entries[tag] = (kind, number, entry + 8 if size <= 4 else self._unpack("I", entry + 8)[0])
        (following,) = self._unpack("I", offset + 2 + 12 * count)
        return entries, following

    def numbers(self, entry: tuple[int, int, int]) -> list[int]:
        kind, count, position = entry
        fmt = {3: "H", 4: "I", 13: "I"}.get(kind)
        if fmt is None:
            return []
        return list(self._unpack(f"{min(count, 1024)}{fmt}", position))

    def text(self, entry: tuple[int, int, int]) -> str:
        _, count, position = entry
        start = self.base + position
        return self.data[start:start + count].split(b"\x00", 1)[0].decode("latin-1").strip()

    def ifds(self) -> list[dict[int, tuple[int, int, int]]]:
        """IFD0 and its chain, with every SubIFD and EXIF IFD below them, each once."""
        found: list[dict[int, tuple[int, int, int]]] = []
        seen, todo = set(), [self.first_ifd()]
        while todo and len(found) < _MAX_IFDS:
            offset = todo.pop(0)
            if not offset or offset in seen or self.base + offset + 2 > len(self.data):
                continue
            seen.add(offset)
            entries, following = self.ifd(offset)
            found.append(entries)
            todo.append(following)
            for tag in (_SUB_IFDS, _EXIF_IFD):
                if tag in entries:
                    todo.extend(self.numbers(entries[tag]))
        return found


def _jpeg_size(data: bytes, start: int) -> tuple[int, int] | None:
    """(width, height) of the decodable JPEG at `start`, from its SOF marker; None if it is not one."""
    if data[start:start + 3] != b"\xff\xd8\xff":
        return None
    position = start + 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _DECODABLE_SOF:
                return None
            height, width = struct.unpack_from(">HH", data, position + 5)
            return (width, height) if width and height else None
        (length,) = struct.unpack_from(">H", data, position + 2)
        position += 2 + length
    return None


def _largest_jpeg(data: bytes, spans: list[tuple[int, int]]) -> bytes | None:
    """The decodable JPEG with the most pixels among (offset, length) spans inside `data`."""
    best, best_pixels = None, 0
    for offset, length in spans:
        if offset <= 0 or length <= 0 or offset + length > len(data):
            continue
        size = _jpeg_size(data, offset)
        if size and size[0] * size[1] > best_pixels:
            best, best_pixels = data[offset:offset + length], size[0] * size[1]
    return best


def _tiff_preview(data: bytes) -> bytes | None:
    tiff = _Tiff(data)
    ifds = tiff.ifds()
    spans = []
    for entries in ifds:
        if _JPEG_OFFSET in entries and _JPEG_LENGTH in entries:
            spans.append((tiff.numbers(entries[_JPEG_OFFSET])[0], tiff.numbers(entries[_JPEG_LENGTH])[0]))
        if (_STRIP_OFFSETS in entries and _STRIP_BYTES in entries and _COMPRESSION in entries
                and tiff.numbers(entries[_COMPRESSION])[:1] in ([6], [7])):
            offsets, lengths = tiff.numbers(entries[_STRIP_OFFSETS]), tiff.numbers(entries[_STRIP_BYTES])
            if len(offsets) == 1 and len(lengths) == 1:
                spans.append((offsets[0], lengths[0]))
        if _RW2_JPG_FROM_RAW in entries:  # Panasonic: the JPEG's bytes are the tag's value
            _, count, position = entries[_RW2_JPG_FROM_RAW]
            spans.append((position, count))
    return _largest_jpeg(data, spans)


def _raf_preview(data: bytes) -> bytes | None:
    """Fujifilm RAF: the header gives the JPEG's offset and length (big-endian, at bytes 84 and 88)."""
    offset, length = struct.unpack_from(">II", data, 84)
    return _largest_jpeg(data, [(offset, length)])


def _cr3_preview(data: bytes) -> bytes | None:
    """Canon CR3 (ISO-BMFF): the `PRVW` box holds the preview JPEG after a 16-byte header whose
    last 4 bytes are its length."""
    box = data.find(b"PRVW")
    if box < 0:
        return None
    (length,) = struct.unpack_from(">I", data, box + 16)
    return _largest_jpeg(data, [(box + 20, length)])


def _container_orientation(data: bytes) -> int:
    """The RAW container's own EXIF orientation: IFD0's in TIFF-based files, the `CMT1` box's
    (a TIFF IFD0) in CR3; 0 when it has none (RAF keeps it in the preview's EXIF)."""
    try:
        if data[:2] in (b"II", b"MM"):
            tiff = _Tiff(data)
        elif data[4:8] == b"ftyp" and (at := data.find(b"CMT1")) >= 0:
            tiff = _Tiff(data, at + 4)
        else:
            return 0
        entries, _ = tiff.ifd(tiff.first_ifd())
        return _orientation(tiff, entries, 0)
    except (struct.error, ValueError, IndexError):
        return 0


def _orientation(tiff: _Tiff, ifd0: dict[int, tuple[int, int, int]], missing: int) -> int:
    """IFD0's orientation tag (EXIF 1-8), or `missing` where it is absent or out of range."""
    values = tiff.numbers(ifd0[_ORIENTATION]) if _ORIENTATION in ifd0 else []
    return values[0] if values and values[0] in range(1, 9) else missing


def _own_orientation(jpeg: bytes) -> int:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            value = int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF means no orientation
        return 1
    return value if value in range(1, 9) else 1


# libraw's flip (3, 5, 6; 0 for none) as EXIF orientation.
_LIBRAW_FLIP = {3: 3, 5: 8, 6: 6}


def _libraw_preview(data: bytes) -> Embedded | None:
    """libraw's preview, with libraw's idea of the orientation (0 where it has none)."""
    if rawpy is None:
        return None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            thumb = raw.extract_thumb()
            flip = raw.sizes.flip
    except Exception:  # noqa: BLE001 - libraw refuses (stripped or unknown file): try the tags ourselves
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    jpeg = bytes(thumb.data)
    if _jpeg_size(jpeg, 0) is None:
        return None
    return Embedded(jpeg, _LIBRAW_FLIP.get(flip, 0))


def raw_preview(source: bytes | Path) -> Embedded:
    """The embedded JPEG preview of a RAW file, in the orientation the container gives (else
    libraw's, else the preview's own); NoPreview if it has none that can be decoded."""
    data = source.read_bytes() if isinstance(source, Path) else source
    found = _libraw_preview(data)
    jpeg = found.jpeg if found else None
    if jpeg is None:
        try:
            if data.startswith(b"FUJIFILMCCD-RAW"):
                jpeg = _raf_preview(data)
            elif data[4:8] == b"ftyp" and data[8:12] == b"crx ":
                jpeg = _cr3_preview(data)
            elif data[:2] in (b"II", b"MM"):
                jpeg = _tiff_preview(data)
        except (struct.error, ValueError, IndexError):  # a structure that ends early or lies
            jpeg = None
    if jpeg is None:
        raise NoPreview("RAW file without an embedded JPEG preview that can be read")
    orientation = _container_orientation(data) or (found.orientation if found else 0) or _own_orientation(jpeg)
    return Embedded(jpeg, orientation)


# `Software` values of programs that rewrite a photo's pixels but may leave the camera's thumbnail.
_EDITORS = re.compile(
    r"photoshop|lightroom|gimp|paint|picasa|darktable|rawtherapee|capture one|affinity|pixelmator|"
    r"snapseed|acdsee|luminar|photoscape|irfanview|xnview|digikam|shotwell|photos|preview|fotor|"
    r"canva|krita|imagemagick|graphicsmagick|photo ?director|aperture|dxo|on1|skylum|corel|serif",
    re.IGNORECASE,
)
_DATE = re.compile(r"\d{4}:\d\d:\d\d \d\d:\d\d:\d\d")
# A thumbnail whose aspect ratio differs from the image's by more than this is not of the image
# (a 3:2 image with a letterboxed 4:3 thumbnail, or a crop made later).
ASPECT_TOLERANCE = 0.03
MIN_THUMBNAIL_SIDE = 64  # smaller than this carries too little to decide on


def _edited(tiff: _Tiff, ifds: list[dict[int, tuple[int, int, int]]]) -> bool:
    software = tiff.text(ifds[0][_SOFTWARE]) if _SOFTWARE in ifds[0] else ""
    if _EDITORS.search(software):
        return True
    modified = tiff.text(ifds[0][_MODIFY_DATE]) if _MODIFY_DATE in ifds[0] else ""
    original = next((tiff.text(entries[_DATE_ORIGINAL]) for entries in ifds if _DATE_ORIGINAL in entries), "")
    return bool(_DATE.fullmatch(modified) and _DATE.fullmatch(original) and modified > original)


def exif_thumbnail(exif: bytes, image_size: tuple[int, int]) -> Embedded | None:
    """The IFD1 thumbnail JPEG of a JPEG's EXIF block (`Exif\\0\\0` + TIFF), if it still shows the
    image of `image_size`, with the photo's orientation (from the IFD0 parsed here anyway, not
    from Pillow's parse of the whole block); None when it is missing, malformed, too small, of
    another aspect ratio, or the photo shows signs of later editing."""
    if not exif.startswith(b"Exif\x00\x00"):
        return None
    try:
        tiff = _Tiff(exif, 6)
        ifd0, ifd1_offset = tiff.ifd(tiff.first_ifd())
        if not ifd1_offset:
            return None
        ifd1, _ = tiff.ifd(ifd1_offset)
        exif_ifds = [tiff.ifd(offset)[0] for offset in tiff.numbers(ifd0[_EXIF_IFD])[:1]] if _EXIF_IFD in ifd0 else []
        if _edited(tiff, [ifd0, *exif_ifds]) or _JPEG_OFFSET not in ifd1 or _JPEG_LENGTH not in ifd1:
            return None
        offset, length = tiff.numbers(ifd1[_JPEG_OFFSET])[0] + 6, tiff.numbers(ifd1[_JPEG_LENGTH])[0]
        orientation = _orientation(tiff, ifd0, 1)
    except (struct.error, ValueError, IndexError, KeyError):
        return None
    jpeg = _largest_jpeg(exif, [(offset, length)])
    size = _jpeg_size(exif, offset) if jpeg else None
    if jpeg is None or size is None or min(size) < MIN_THUMBNAIL_SIDE:
        return None
    width, height = image_size
    if abs((size[0] / size[1]) / (width / height) - 1) > ASPECT_TOLERANCE:
        return None
    return Embedded(jpeg, orientation)
