"""`--group-cats`: tell individual cats apart and give each cat photo the id of its cat.

The model's `embedding` output (computed in the classifying call, kept in the prediction cache)
goes through the identity head where the model has one (`<model>.identity.npz` beside it: a
matrix trained by `python -m training identity`, applied here in numpy) and is L2-normalised;
two photos of one cat are close by cosine similarity. Grouping is built to
split a cat rather than merge two: a photo joins a cat only if it is within `JOIN_SIMILARITY`
of that cat's centroid, and a new group needs at least `MIN_PHOTOS` photos; everything else is
`unknown`. It runs in one deterministic pass in content (sha256) order over the cat photos,
in chunks, holding only a chunk of vectors and the centroids in memory (the photos' vectors wait
in a temporary file on disk).

The cats found are kept in the cache per model (centroid, number of photos, name), with the cat
each photo went to (or that it was unknown), so a re-run puts every photo where it put it before,
and new photos with the cat they are closest to.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notcat_sort.cache import PredictionCache
from notcat_sort.content import sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

UNKNOWN = "unknown"
# Cosine similarity to a centroid from which a photo joins that cat, for the power-normalised
# embedding. benchmarks/identity.py on the campus-cats photos (32 cats, 4 folds held out by cat):
# 0.84 has the best pairwise recall at pairwise precision >= 0.95, pairs of all folds pooled;
# lower ones merge cats. Chosen on the other folds, a fold's threshold varies from 0.78 to 0.84;
# 0.85, a little stricter, is kept: merging two cats is worse than splitting one.
JOIN_SIMILARITY = 0.85
MIN_PHOTOS = 2  # a new group of fewer photos is left unknown
_CHUNK = 256
_ID = re.compile(r"cat-([1-9][0-9]*)")


def cat_id(number: int) -> str:
    return f"cat-{number}"


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class IdentityHead:
    """A linear projection of the embedding for telling cats apart, and its join threshold.

    Without one, the embedding is power-normalised (signed square root, as for instance
    retrieval): it damps the few channels that fire on any cat, leaving more say to the ones that
    tell coats apart. On campus-cats this lifts 1-NN accuracy across sessions over all 32 cats
    from 0.635 to 0.716 (benchmarks/identity.py)."""

    mean: np.ndarray | None  # (D,)
    matrix: np.ndarray | None  # (D, K); None: the embedding itself, power-normalised if `root`
    threshold: float = JOIN_SIMILARITY
    key: str = "sqrt"  # names the vector space the cache's centroids live in
    root: bool = True

    def vectors(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if self.matrix is None:
            return unit(np.sign(embeddings) * np.sqrt(np.abs(embeddings)) if self.root else embeddings)
        return unit((embeddings - self.mean) @ self.matrix)


NO_HEAD = IdentityHead(None, None)  # the embedding itself, power-normalised: no identity head ships
AS_GIVEN = IdentityHead(None, None, key="as given", root=False)  # vectors already made (measuring, tests)


def head_path(model: Path) -> Path:
    return model.with_suffix(".identity.npz")


def load_head(model: Path, model_sha256: str) -> IdentityHead:
    """The identity head stored beside `model` for this very model file, else NO_HEAD."""
    path = head_path(model)
    try:
        with np.load(path) as stored:
            if str(stored["model_sha256"]) != model_sha256:
                return NO_HEAD
            return IdentityHead(stored["mean"].astype(np.float32), stored["matrix"].astype(np.float32),
                                float(stored["threshold"]), f"head {sha256_file(path)}")
    except (OSError, KeyError, ValueError):
        return NO_HEAD


class NamesError(ValueError):
    """A --cat-names file that cannot be used."""


def read_names(path: Path) -> dict[int, str]:
    """`cat-3 = "Marmalade"` lines of a TOML file: cat number -> name. An empty name is no name."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise NamesError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    names: dict[int, str] = {}
    for key, name in raw.items():
        match = _ID.fullmatch(key)
        if match is None or not isinstance(name, str):
            raise NamesError(f"{path}: expected lines like cat-3 = \"Marmalade\", found {key} = {name!r}")
        name = name.strip()
        if name and (name in (".", "..", UNKNOWN) or "/" in name or "\\" in name or name.startswith(".")
                     or _ID.fullmatch(name) or "\0" in name):
            raise NamesError(f"{path}: {name!r} cannot be a cat's folder name")
        if name:
            names[int(match.group(1))] = name
    return names


@dataclass
class Cat:
    number: int
    name: str | None
    photos: int
    centroid: np.ndarray  # mean of its photos' unit vectors
    changed: bool = False

    @property
    def id(self) -> str:
        return self.name or cat_id(self.number)


@dataclass
class Grouping:
    """The outcome: a cat id (or `unknown`) per photo, and the cats as they now stand."""

    ids: list[str]
    cats: list[Cat]
    members: list[tuple[str, int]] = field(default_factory=list)  # (digest, cat number; 0: unknown) to remember


class _Vectors:
    """The cat photos' vectors, spooled to a temporary file so that memory stays flat."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the grouper's life, closed by close()
        self.count = 0
        self.dimensions = 0

    def add(self, vector: np.ndarray) -> None:
        vector = unit(vector).astype(np.float16)
        self.dimensions = vector.shape[-1]
        self._file.write(vector.tobytes())
        self.count += 1

    def read(self, indices: np.ndarray) -> np.ndarray:
        table = np.memmap(self._file, np.float16, "r", shape=(self.count, self.dimensions))
        return np.asarray(table[indices], dtype=np.float32)

    def close(self) -> None:
        self._file.close()


class CatGrouper:
    """Collects the cat photos of a run (digest and embedding), then groups them in one go."""

    def __init__(self, cache: PredictionCache | None, names: dict[int, str] | None = None,
                 head: IdentityHead = NO_HEAD, threshold: float | None = None) -> None:
        self._cache = cache
        self._names = names or {}
        self._head = head
        self._threshold = head.threshold if threshold is None else threshold
        self._digests: list[str] = []
        self._vectors = _Vectors()

    def add(self, digest: str, embedding: np.ndarray | None) -> int:
        """Take a cat photo; its place in `Grouping.ids`, or -1 when it has no embedding (unknown)."""
        if embedding is None:
            return -1
        self._digests.append(digest)
        self._vectors.add(self._head.vectors(embedding))
        return len(self._digests) - 1

    def group(self) -> Grouping:
        cats = [Cat(number, name, photos, centroid) for number, name, photos, centroid
                in (self._cache.cats(self._head.key) if self._cache else [])]
        first_new = max([cat.number for cat in cats] + [0]) + 1
        earlier = self._cache.cat_of(self._head.key, sorted(set(self._digests))) if self._cache else {}
        numbers = _assign(self._digests, self._vectors, cats, earlier, first_new, self._threshold)
        # New groups of enough photos are numbered on from the known cats, in the order they began.
        final: dict[int, int] = {}  # provisional number -> final number
        kept: list[Cat] = []
        renumbered = first_new
        for cat in cats:
            if cat.number >= first_new:
                if cat.photos < MIN_PHOTOS:
                    continue
                final[cat.number] = renumbered
                cat.number, renumbered = renumbered, renumbered + 1
            else:
                final[cat.number] = cat.number
            kept.append(cat)
        for cat in kept:
            if cat.number in self._names and self._names[cat.number] != cat.name:
                cat.name, cat.changed = self._names[cat.number], True
        by_number = {cat.number: cat for cat in kept}
        ids, members = [], []
        for digest, provisional in zip(self._digests, numbers, strict=False):
            found = by_number.get(final.get(provisional, 0))
            ids.append(found.id if found else UNKNOWN)
            members.append((digest, found.number if found else 0))  # unknown stays unknown on a re-run
        return Grouping(ids, kept, members)

    def remember(self, grouping: Grouping) -> None:
        if self._cache is not None:
            self._cache.store_cats(self._head.key, ((cat.number, cat.name, cat.photos, cat.centroid) for cat in grouping.cats
                                    if cat.changed), grouping.members)

    def close(self) -> None:
        self._vectors.close()


def _assign(digests: list[str], vectors: _Vectors, cats: list[Cat], earlier: dict[str, int],
            next_number: int, threshold: float) -> list[int]:
    """A cat number per photo (0: none). Photos are visited in digest order, a chunk at a time;
    a photo joins the most similar centroid if it is similar enough, else starts a group. A chunk
    is compared with the centroids as they stood at its start in one product; with the groups
    begun or moved within the chunk, photo by photo."""
    numbers = [0] * len(digests)
    order = sorted(range(len(digests)), key=lambda i: digests[i])
    centroids = _Rows(vectors.dimensions)
    for cat in cats:
        centroids.append(unit(cat.centroid))
    index = {cat.number: position for position, cat in enumerate(cats)}
    seen: dict[str, int] = {}
    for start in range(0, len(order), _CHUNK):
        chunk = order[start:start + _CHUNK]
        block = vectors.read(np.array(chunk))
        at_start = len(cats)
        similarity = block @ centroids.rows[:at_start].T
        moved: set[int] = set()
        for row, i in enumerate(chunk):
            digest, vector = digests[i], block[row]
            number = seen.get(digest, earlier.get(digest))
            if number == 0 or number in index:  # the same photo again, or one an earlier run placed
                numbers[i] = seen[digest] = number
                continue
            scores = similarity[row].copy()
            for position in moved:
                scores[position] = centroids.rows[position] @ vector
            fresh = centroids.rows[at_start:len(cats)] @ vector
            scores = np.concatenate([scores, fresh])
            best = int(np.argmax(scores)) if len(scores) else -1
            if best >= 0 and scores[best] >= threshold:
                cat = cats[best]
                cat.centroid = (cat.centroid * cat.photos + vector) / (cat.photos + 1)
                cat.photos += 1
                centroids.rows[best] = unit(cat.centroid)
                if best < at_start:
                    moved.add(best)
            else:
                cat = Cat(next_number, None, 1, vector.copy())
                next_number += 1
                index[cat.number] = len(cats)
                cats.append(cat)
                centroids.append(vector)
            cat.changed = True
            numbers[i] = seen[digest] = cat.number
    return numbers


class _Rows:
    """A matrix that grows a row at a time (capacity doubling)."""

    def __init__(self, dimensions: int) -> None:
        self._data = np.zeros((16, dimensions), np.float32)
        self._count = 0

    @property
    def rows(self) -> np.ndarray:
        return self._data[:self._count]

    def append(self, row: np.ndarray) -> None:
        if self._count == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self._count] = row
        self._count += 1


def names_file_for(report: Path) -> Path:
    """The names file a --group-cats run writes beside its report."""
    return report.with_name(f"{report.stem}.cats.toml")


def names_template(grouping: Grouping, examples: dict[str, str]) -> str:
    """The TOML a run writes beside its report, to be filled in and given back with --cat-names."""
    lines = ["# The cats notcat-sort --group-cats found. Give a cat a name between the quotes and pass",
             "# this file with --cat-names; the name then sticks to that cat in later runs too.",
             "# Two ids given the same name are one cat (a cat split in two)."]
    for cat in sorted(grouping.cats, key=lambda cat: cat.number):
        example = examples.get(cat.id, "")
        lines.append(f'{cat_id(cat.number)} = "{cat.name or ""}"  # {cat.photos} photos'
                     + (f", e.g. {example}" if example else ""))
    return "\n".join(lines) + "\n"


def examples_of(ids: Iterable[str], paths: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for cat, path in zip(ids, paths, strict=False):
        found.setdefault(cat, path)
    return found
