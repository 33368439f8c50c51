"""`--group-cats`: tell individual cats apart and give each cat photo the id of its cat.

The model's `embedding` output (computed in the classifying call, kept in the prediction cache)
goes through the identity head where the model has one (`<model>.identity.npz` beside it: a
matrix trained by `python -m training identity`, applied here in numpy) and is L2-normalised;
two photos of one cat are close by cosine similarity. Grouping is built to
split a cat rather than merge two: a photo joins a known cat only if it is within
`JOIN_SIMILARITY` of that cat's centroid; the photos that join none are clustered by HDBSCAN over
their nearest neighbours, which needs no similarity threshold to find a cat (the one that fits
moves from one set of cats to the next), and a cluster becomes a new cat of its photos within
`JOIN_SIMILARITY` of its centroid, if at least `MIN_PHOTOS` are; everything else is `unknown`.
It is deterministic (content, sha256, order) and chunked: the photos' vectors wait in a
temporary file on disk, and memory holds a block of them, each photo's `NEIGHBOURS` nearest and
the centroids.

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
# Cosine similarity to a centroid from which a photo is in that cat, for the power-normalised
# embedding. The threshold with the best pairwise recall at pairwise precision >= 0.95 on held-out
# folds of the campus-cats photos (32 cats, 4 folds by cat, 6 ways of drawing them): 0.86 to 0.92
# for model 2.1.0's embedding (pooled over the cat), as for 2.0.0's (the whole photo's average);
# the same photos pasted into rooms that all the cats share choose 0.92 to 0.94. Lower ones merge cats.
JOIN_SIMILARITY = 0.90
MIN_PHOTOS = 2  # a new group of fewer photos is left unknown
NEIGHBOURS = 10  # the most similar others of each photo, among which new cats are found
LINK_SIMILARITY = 0.6  # photos less similar are never linked (campus-cats: 0.5 and 0.6 alike, 0.7 loses recall)
_CHUNK = 256
_COLUMNS = 4096
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
    from 0.591 to 0.673 (benchmarks/identity.py, model 2.1.0)."""

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
        if name and not is_cat_name(name):
            raise NamesError(f"{path}: {name!r} cannot be a cat's folder name")
        if name:
            names[int(match.group(1))] = name
    return names


def is_cat_name(name: str) -> bool:
    """Whether `name` can name a cat: a folder name of its own under cat/, and not an id or `unknown`."""
    return not (name in (".", "..", UNKNOWN) or "/" in name or "\\" in name or name.startswith(".")
                or _ID.fullmatch(name) is not None or "\0" in name or name != name.strip() or not name)


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
    """A cat number per photo (0: none). A photo an earlier run placed stays where it was; any
    other joins the known cat whose centroid is most similar, if within `threshold`; the rest
    are clustered among themselves (`_clusters`), and each cluster becomes a new cat of its
    photos within `threshold` of its centroid, if at least MIN_PHOTOS are (numbered in the
    digest order of their first photo). Each distinct photo counts once, in digest order."""
    first: dict[str, int] = {}
    for i in sorted(range(len(digests)), key=lambda i: digests[i]):
        first.setdefault(digests[i], i)
    index = {cat.number: position for position, cat in enumerate(cats)}
    placed = {digest: number for digest, number in earlier.items() if digest in first and (number == 0 or number in index)}
    unplaced = [i for digest, i in first.items() if digest not in placed]
    centroids = np.stack([unit(cat.centroid) for cat in cats]) if cats else np.zeros((0, vectors.dimensions), np.float32)
    joined = np.zeros((len(cats), vectors.dimensions))
    counts = np.zeros(len(cats), np.int64)
    fresh = []  # photos for new cats, in digest order
    for start in range(0, len(unplaced), _CHUNK):
        chunk = unplaced[start:start + _CHUNK]
        block = vectors.read(np.array(chunk))
        similarity = block @ centroids.T
        for row, i in enumerate(chunk):
            best = int(np.argmax(similarity[row])) if len(cats) else -1
            if best >= 0 and similarity[row, best] >= threshold:
                placed[digests[i]] = cats[best].number
                joined[best] += block[row]
                counts[best] += 1
            else:
                fresh.append(i)
    for position in np.flatnonzero(counts):
        cat = cats[position]
        cat.centroid = (cat.centroid * cat.photos + joined[position]) / (cat.photos + counts[position])
        cat.photos += int(counts[position])
        cat.changed = True
    labels = _clusters(vectors, fresh)
    for label in dict.fromkeys(int(label) for label in labels if label >= 0):  # in the order of their first photo
        members = [fresh[row] for row in np.flatnonzero(labels == label)]
        block = vectors.read(np.array(members))
        kept = [i for i, similarity in zip(members, block @ unit(block.mean(axis=0)), strict=True) if similarity >= threshold]
        if len(kept) < MIN_PHOTOS:
            continue
        cat = Cat(next_number, None, len(kept), vectors.read(np.array(kept)).mean(axis=0), changed=True)
        next_number += 1
        cats.append(cat)
        placed.update((digests[i], cat.number) for i in kept)
    return [placed.get(digest, 0) for digest in digests]


def _nearest(vectors: _Vectors, rows: list[int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of `rows`' `count` most similar others among them (positions in `rows`, similarities),
    from products of a block of columns (read once) with a chunk of rows at a time."""
    nearest = np.zeros((len(rows), 0), np.int64)
    similarities = np.zeros((len(rows), 0), np.float32)
    for column in range(0, len(rows), _COLUMNS):
        positions = np.arange(column, min(len(rows), column + _COLUMNS))
        columns = vectors.read(np.array(rows[column:column + _COLUMNS]))
        take = min(count, len(positions))
        found, found_similarity = [], []
        for start in range(0, len(rows), _CHUNK):
            similarity = vectors.read(np.array(rows[start:start + _CHUNK])) @ columns.T
            similarity[np.arange(start, start + len(similarity))[:, None] == positions[None, :]] = -np.inf  # not itself
            top = np.argpartition(-similarity, take - 1, axis=1)[:, :take]
            found.append(positions[top])
            found_similarity.append(np.take_along_axis(similarity, top, 1))
        candidates = np.concatenate([nearest, np.concatenate(found)], axis=1)
        scores = np.concatenate([similarities, np.concatenate(found_similarity)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        nearest, similarities = np.take_along_axis(candidates, order, 1), np.take_along_axis(scores, order, 1)
    return nearest, similarities


def _clusters(vectors: _Vectors, rows: list[int]) -> np.ndarray:
    """HDBSCAN (Campello et al. 2013) of the photos `rows`: a label per photo, -1 for none. It
    needs no similarity threshold (the one that works moves from one set of cats to the next):
    single linkage over each photo's NEIGHBOURS most similar others (links below LINK_SIMILARITY
    left out), condensed to the groups of MIN_PHOTOS or more, of which it keeps those that hold
    together over the widest range of distances (excess of mass). On campus-cats it makes the
    same clusters as scikit-learn's HDBSCAN(min_cluster_size=2) (benchmarks/identity.py)."""
    count = len(rows)
    labels = np.full(count, -1)
    if count < MIN_PHOTOS:
        return labels
    nearest, similarity = _nearest(vectors, rows, min(NEIGHBOURS, count - 1))
    low = np.minimum(np.arange(count)[:, None], nearest).ravel()
    high = np.maximum(np.arange(count)[:, None], nearest).ravel()
    linked = similarity.ravel() >= LINK_SIMILARITY
    low, high, link = low[linked], high[linked], similarity.ravel()[linked]
    # Single linkage (Kruskal): tree node count + k is the k-th merge, of children[k] at reach[k].
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    node_of = list(range(count))  # the tree node of each union-find root
    size = [1] * count
    children: list[tuple[int, int]] = []
    reach: list[float] = []  # 1 / distance at each merge
    for edge in np.lexsort((high, low, -link)):
        a, b = root(int(low[edge])), root(int(high[edge]))
        if a != b:
            children.append((node_of[a], node_of[b]))
            reach.append(1.0 / max(1.0 - float(link[edge]), 1e-6))
            size.append(size[node_of[a]] + size[node_of[b]])
            parent[b], node_of[a] = a, count + len(children) - 1
    # The condensed tree. Cluster 0 stands above every tree's top, each born where links stop.
    born, above, stability = [0.0], [-1], [0.0]
    below: list[list[int]] = [[]]
    leaves_from = np.zeros(count, np.int64)  # the cluster each photo drops out of
    work: list[tuple[int, int]] = []

    def begin(node: int, cluster: int, at: float) -> None:
        born.append(at)
        above.append(cluster)
        stability.append(0.0)
        below.append([])
        below[cluster].append(len(born) - 1)
        work.append((node, len(born) - 1))

    def drop(node: int, cluster: int, at: float) -> None:
        stability[cluster] += size[node] * (at - born[cluster])
        stack = [node]
        while stack:
            node = stack.pop()
            if node < count:
                leaves_from[node] = cluster
            else:
                stack.extend(children[node - count])

    floor = 1.0 / (1.0 - LINK_SIMILARITY)
    for top in sorted({node_of[root(i)] for i in range(count)}):
        (begin if size[top] >= MIN_PHOTOS else drop)(top, 0, floor)
    while work:
        node, cluster = work.pop()
        at, parts = reach[node - count], children[node - count]
        if all(size[part] >= MIN_PHOTOS for part in parts):
            for part in parts:
                stability[cluster] += size[part] * (at - born[cluster])
                begin(part, cluster, at)
        else:
            for part in parts:
                if size[part] >= MIN_PHOTOS:
                    work.append((part, cluster))
                else:
                    drop(part, cluster, at)
    # Excess of mass, bottom up: a cluster is chosen unless the clusters below it hold more.
    best = list(stability)
    chosen = [False] * len(born)
    for cluster in range(len(born) - 1, 0, -1):
        held = sum(best[part] for part in below[cluster])
        if below[cluster] and held > stability[cluster]:
            best[cluster] = held
        else:
            chosen[cluster] = True
    for photo in range(count):
        cluster = int(leaves_from[photo])
        while cluster > 0:
            if chosen[cluster]:
                labels[photo] = cluster  # the topmost chosen cluster above the photo
            cluster = above[cluster]
    return labels


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
