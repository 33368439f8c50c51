"""Find the files that belong to an image: XMP and AAE sidecars and, when asked, its RAW partner.

They travel with the image when it is moved, copied or linked, under names that follow the
image's (so `IMG_0001 (1).jpg` gets `IMG_0001 (1).jpg.xmp`). Names are matched in lower and
upper case (`.xmp`/`.XMP`), the spellings cameras and photo managers write, by `stat` alone, so
finding them costs a few system calls per image however big the folder is.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

RAW_SUFFIXES = (
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf", ".orf",
    ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".mrw", ".kdc", ".dcr",
)


class SidecarName(str, Enum):
    """How an XMP sidecar is named: `IMG_0001.jpg.xmp` (digiKam, darktable) or `IMG_0001.xmp`
    (Lightroom, Capture One)."""

    APPEND = "append"
    REPLACE = "replace"


def _cases(suffix: str) -> tuple[str, str]:
    return suffix.lower(), suffix.upper()


def _existing(folder: Path, names: list[str]) -> list[Path]:
    """The names that exist in `folder`, each file once (case-insensitive filesystems).

    Called for every image, and nearly always nothing exists: plain strings keep the misses cheap."""
    base = os.fspath(folder)
    found: list[Path] = []
    for name in names:
        path = os.path.join(base, name)
        if os.path.isfile(path) and not any(os.path.samefile(path, seen) for seen in found):
            found.append(Path(path))
    return found


def xmp_sidecars(image: Path) -> list[Path]:
    """The image's XMP sidecars in either naming, `IMG_0001.jpg.xmp` first."""
    names = [image.name + case for case in _cases(".xmp")] + [image.stem + case for case in _cases(".xmp")]
    return _existing(image.parent, names)


def xmp_path(image: Path, naming: SidecarName = SidecarName.APPEND) -> Path:
    """Where the image's XMP sidecar is: the existing one if there is one, else per `naming`."""
    existing = xmp_sidecars(image)
    if existing:
        return existing[0]
    return image.with_name((image.name if naming is SidecarName.APPEND else image.stem) + ".xmp")


def raw_partners(image: Path) -> list[Path]:
    """RAW files with the image's stem beside it (`IMG_0001.CR2` for `IMG_0001.JPG`)."""
    if image.suffix.lower() in RAW_SUFFIXES:
        return []
    return _existing(image.parent, [image.stem + case for suffix in RAW_SUFFIXES for case in _cases(suffix)])


def companions(image: Path, with_raw: bool = False) -> list[Path]:
    """Everything that travels with `image`: its sidecars and, if `with_raw`, RAW partners and theirs."""
    found = xmp_sidecars(image) + _existing(image.parent, [image.stem + case for case in _cases(".aae")])
    if with_raw:
        for raw in raw_partners(image):
            found += [raw] + _existing(raw.parent, [raw.name + case for case in _cases(".xmp")])
    return found


def companion_name(companion: Path, image: Path, image_target: Path) -> Path:
    """The companion's destination: its name with the image's stem swapped for the target's.

    `IMG_0001.jpg.xmp` → `IMG_0001 (1).jpg.xmp`; `IMG_0001.CR2` → `IMG_0001 (1).CR2`."""
    if companion.name.startswith(image.name):
        old, new = image.name, image_target.name
    else:
        old, new = image.stem, image_target.stem
    return image_target.with_name(new + companion.name[len(old):])
