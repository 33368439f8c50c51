"""Stage 1: find image files under the given folders, streaming so memory stays flat.

A file is an image by its name or by its first bytes, so `IMG_0001` with no extension is found
and `notes.jpg` that is really text is found too (and later reported as undecodable, not
silently skipped); so are image formats the tool cannot read (an SVG, a JPEG XL without its
plugin), whose rows say so. A camera RAW file is sorted on its own (classified from its embedded
preview) unless a JPEG or other image of the same name lies beside it: a RAW+JPEG pair is one
photo, decided by the JPEG, and the RAW travels with it (`--with-raw`). Hidden entries and the tool's own output folders are not entered, and
symlinked folders are not followed, so a second run does not re-sort what it sorted and a link
loop cannot trap the walk.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from notcat_sort.decode import JXL_SIGNATURES
from notcat_sort.sidecars import RAW_SUFFIXES

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
     ".tif", ".tiff", ".heic", ".heif", ".hif", ".avif", ".jxl"}
)
# Images found so that they are reported (mostly as unreadable), never skipped in silence.
OTHER_IMAGE_EXTENSIONS = frozenset({".jp2", ".j2k", ".psd", ".svg", ".exr", ".xcf"})
_REPORTED_EXTENSIONS = IMAGE_EXTENSIONS | OTHER_IMAGE_EXTENSIONS
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


@dataclass(frozen=True)
class Candidate:
    """A file to sort. `root` is the PATH it was found under: its sub-path is kept on output."""

    path: Path
    root: Path
    problem: str | None = None  # set when the scan already knows it cannot be processed

    @property
    def relative(self) -> Path:
        if self.path == self.root:
            return Path(self.path.name)
        # The walk built `path` by joining names onto `root`: slicing is relative_to, minus its cost.
        return Path(os.fspath(self.path)[len(os.path.join(os.fspath(self.root), "")):])


def looks_like_image(head: bytes) -> bool:
    """Recognise the formats we decode from their magic bytes."""
    return (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head.startswith(b"BM")
        or head[:4] in (b"II*\x00", b"MM\x00*")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS)
        or head.startswith(JXL_SIGNATURES)
    )


def has_image_partner(raw: str) -> bool:
    """Whether a RAW file has a non-RAW image of its stem beside it (`IMG_1.JPG` for `IMG_1.CR2`)."""
    stem = os.path.splitext(raw)[0]
    return any(os.path.isfile(stem + case) for extension in IMAGE_EXTENSIONS
               for case in (extension, extension.upper()))


def is_image_file(path: str) -> bool:
    """An image by its extension or, failing that, by its first bytes; a RAW file with a JPEG
    partner is not (its partner is the photo)."""
    extension = os.path.splitext(path)[1].lower()
    if extension in _REPORTED_EXTENSIONS:
        return True
    if extension in RAW_SUFFIXES:
        return not has_image_partner(path)
    try:
        with open(path, "rb") as handle:
            return looks_like_image(handle.read(16))
    except OSError:
        return False


def _link_problem(path: str) -> str | None:
    """Why a symlinked file cannot be read, or None when its target is fine."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if error.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist)"
        return f"cannot follow symbolic link: {error.strerror}"
    return None


def _walk(folder: Path, root: Path, skip: Collection[Path]) -> Iterator[Candidate]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        yield Candidate(folder, root, f"cannot read folder: {error.strerror or error}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_link = entry.is_symlink()
        except OSError:  # vanished between listing and looking
            continue
        if is_dir:
            if path not in skip:
                yield from _walk(path, root, skip)
        elif is_link:
            if os.path.splitext(entry.name)[1].lower() in _REPORTED_EXTENSIONS:
                problem = _link_problem(entry.path)
                if problem or not os.path.isdir(entry.path):
                    yield Candidate(path, root, problem)
        elif entry.is_file(follow_symlinks=False) and is_image_file(entry.path):
            yield Candidate(path, root)


def scan(roots: Sequence[Path], skip: Collection[Path] = ()) -> Iterator[Candidate]:
    """Yield every image under `roots` (files given directly are taken as they are)."""
    skip = {Path(os.path.abspath(folder)) for folder in skip}
    for root in roots:
        root = Path(os.path.abspath(root))
        if root.is_dir():
            yield from _walk(root, root, skip)
        elif root.exists():
            yield Candidate(root, root.parent)
        else:
            yield Candidate(root, root.parent, "no such file or folder")
