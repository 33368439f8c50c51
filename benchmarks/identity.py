"""Which embedding and which clustering tell individual cats apart: `--group-cats` measured.

    python benchmarks/identity.py [--data ../shared/datasets/catnotcat] [--folds 4] [--seed 0] [--skip-crops]
    python benchmarks/identity.py --known-cats [--examples 5] [--draws 200]   # embeddings kept under runs/

DATA is a catnotcat dataset (its `campus-cats` group; the 10 characters after `campus-cats-`
name the cat) or a folder with one folder per cat (NekoNet's layout). Needs no torch: the
shipped ONNX model's `embedding` output, numpy, and for the face-crop variants
opencv-python-headless < 5 (its frontal cat-face Haar cascade; skipped without it).

For every embedding variant it prints 1-NN identity accuracy across sessions (photos of one cat
taken close in time, see training/identity.py, never count as each other's neighbour), with all
the cats as the gallery and within folds of held-out cats, and for each clustering the pairwise
precision and recall on held-out cats, each fold cut at the threshold chosen on the other folds
(training.identity.held_out). Variants: the whole photo as the runtime embeds it, as is and
power-normalised (signed square root: what --group-cats uses); centred on the mean of the photos
grouped; averaged with its mirror image, and with centre crops (test-time augmentation: one to
three more inferences per cat photo); the largest cat face found, and the face and whole photo
concatenated. Clusterings: the runtime's grouping (notcat_sort.cats: HDBSCAN, each cluster cut
down to its photos within the threshold of its centroid) and dense average-linkage
agglomerative clustering.

Then, on the runtime's embedding, re-ranking (free at run time: no more inference, only the
photos' vectors): k-reciprocal re-ranking (Zhong et al. 2017), alpha- and average query expansion
(Radenovic et al. 2018, Chum et al. 2007), diffusion on a mutual kNN graph (Iscen et al. 2017)
and CSLS hubness correction (Conneau et al. 2018), each with the runtime's clustering where it
yields vectors and with average, complete and single linkage, connected components of the mutual
nearest-neighbour graph and HDBSCAN (which cuts its own tree: no threshold to choose). These
need scikit-learn (and its scipy): `pip install -e '.[bench]'`; skipped without it. A "pair
ceiling" column gives the best pairwise recall that any threshold on the pairs' similarity
reaches at pairwise precision >= 0.95 within the held-out folds (a threshold chosen on the fold
itself: what a perfect clustering of those similarities could not much exceed). Last, pairwise
precision / recall of each clustering at a range of thresholds, folds pooled (the curve).
With `--known-cats` it measures instead the setting where you name a few photos of each of your
cats (`--group-cats --known-cats DIR`): for the cats with more than `--examples` photos, that
many are drawn as the named examples and the rest are asked, in households of 2, 3 and 4 cats
and with all of them at once; the photos of the cats with fewer photos are asked too, as cats
nobody named (they should stay unnamed). Rules: the nearest cat by cosine of the mean of its
examples, or by its nearest example, each naming a photo when the best cat beats the second by a
margin; and the runtime's (notcat_sort.known_cats: linear discriminants with a shared shrunk
covariance, naming when the best cat is at least a share of the way from the boundary to its
mean). Each rule's threshold is chosen with cats held out: the cats are dealt into folds, and the
threshold for a fold is the loosest that keeps >= 97% of named photos right in households of 3
drawn from the other folds' cats; the precision and share named are then those of the held-out
fold's cats, averaged over 3 deals of the cats into folds. Then the runtime rule's right / share
named at a range of thresholds (the trade-off, all cats), and each rule at the threshold chosen
on all the cats (what would ship), with 1, 3, 5 and 8 named photos per cat.

Query expansion makes similarities run higher, so its rows choose thresholds at the top of the
grid (training.identity.THRESHOLDS, to 0.94); on a grid to 0.99 (a scratch run, with the runtime
grouping before HDBSCAN), alpha-QE with k 3 to 8 moved held-out precision and recall, averaged
over 6 draws of the folds, from 0.83 / 0.075 to 0.93 / 0.062.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/, for the evaluation
from notcat_sort.cats import MIN_PHOTOS, NO_HEAD, unit
from notcat_sort.decode import decode
from notcat_sort.model import Classifier, default_model_path, load_card
from training.identity import (
    CLUSTERINGS,
    IMAGES,
    PRECISION_TARGET,
    Clustering,
    held_out,
    nearest_neighbour_accuracy,
    pair_counts,
    runtime_clusters,
    sessions_of,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
CENTRE = 0.8  # the centre crop's share of each side
FACE_CONTEXT = 1.6  # the face crop's side, in face-box sides: ears and cheeks in, as much coat as fits
DETECT_SIDE = 512  # faces are looked for on the photo shrunk to this long side


def photos_of(data: Path) -> tuple[list[Path], np.ndarray]:
    """The photos and each one's cat."""
    manifest = data / "manifest.csv"
    if manifest.exists():
        with open(manifest, newline="") as handle:
            paths = [data / row["path"] for row in csv.DictReader(handle) if row["group"] == "campus-cats"]
        return paths, np.array([path.name[len("campus-cats-"):][:10] for path in paths])
    pairs = [(path, folder.name) for folder in sorted(data.iterdir()) if folder.is_dir()
             for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGES]
    return [path for path, _ in pairs], np.array([cat for _, cat in pairs])


def _square(image: Image.Image) -> np.ndarray:
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def _centre(image: Image.Image) -> Image.Image:
    width, height = image.size
    left, top = round(width * (1 - CENTRE) / 2), round(height * (1 - CENTRE) / 2)
    return image.crop((left, top, width - left, height - top))


class FaceFinder:
    """The largest frontal cat face (OpenCV's extended Haar cascade), with the time it took."""

    def __init__(self) -> None:
        import cv2  # opencv-python-headless < 5: 5.0 dropped CascadeClassifier
        import cv2.data

        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalcatface_extended.xml")
        self.seconds: list[float] = []

    def crop(self, image: Image.Image) -> Image.Image | None:
        started = time.process_time()
        scale = min(1.0, DETECT_SIDE / max(image.size))
        small = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)))
        grey = self._cv2.cvtColor(np.asarray(small), self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(24, 24))
        self.seconds.append(time.process_time() - started)
        if len(found) == 0:
            return None
        x, y, width, height = (value / scale for value in max(found, key=lambda box: box[2] * box[3]))
        side = max(width, height) * FACE_CONTEXT
        centre_x, centre_y = x + width / 2, y + height / 2
        return image.crop((round(max(0, centre_x - side / 2)), round(max(0, centre_y - side / 2)),
                           round(min(image.width, centre_x + side / 2)), round(min(image.height, centre_y + side / 2))))


def embed(paths: list[Path], classifier: Classifier, faces: FaceFinder | None,
          crops: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Raw embeddings per kind of input (whole, mirror, centre, centre mirror, face where found),
    which photos had a face, and CPU seconds per inference of one image (CPU time, not wall time:
    the figures stay comparable on a machine that others share)."""
    inputs: dict[str, list[np.ndarray]] = {"whole": [], "mirror": [], "centre": [], "centre mirror": [], "face": []}
    found = []
    for path in paths:
        whole = decode(path.read_bytes(), SIZE)  # exactly what the runtime embeds
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        centre = _square(_centre(image))
        face = faces.crop(image) if faces is not None else None
        found.append(face is not None)
        for kind, array in (("whole", whole), ("mirror", whole[:, ::-1]), ("centre", centre), ("centre mirror", centre[:, ::-1]),
                            ("face", _square(face) if face is not None else whole)):
            if crops or kind == "whole":
                inputs[kind].append(np.ascontiguousarray(array))
    embeddings: dict[str, np.ndarray] = {}
    started, inferred = time.process_time(), 0
    for kind, arrays in inputs.items():
        if not arrays:
            continue
        embeddings[kind] = embeddings_of(classifier, arrays)
        inferred += len(arrays)
    return embeddings, np.array(found), (time.process_time() - started) / inferred


def embeddings_of(classifier: Classifier, images: Sequence[np.ndarray] | np.ndarray, batch: int = 32) -> np.ndarray:
    """The model's raw `embedding` of each image, `batch` images a call."""
    found = [classifier.scores(np.asarray(images[start:start + batch]), attributes=False).embedding for start in range(0, len(images), batch)]
    return np.concatenate([embeddings for embeddings in found if embeddings is not None])


def cached_embeddings(paths: list[Path], model: Path) -> np.ndarray:
    """The runtime's `embedding` of each whole photo, kept under runs/ (by model file and photo list)."""
    card = load_card(model)
    key = hashlib.sha256("\n".join([card.sha256, *map(str, paths)]).encode()).hexdigest()[:16]
    cache = REPO / "runs" / f"identity-embeddings-{key}.npy"
    if cache.exists():
        return np.load(cache)
    whole = embeddings_of(Classifier(card, threads=2), [decode(path.read_bytes(), SIZE) for path in paths])
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, whole)
    return whole


def variants(embeddings: dict[str, np.ndarray], with_faces: bool, with_crops: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Name -> the vectors of a subset of the photos (given by index), made from the raw embeddings."""
    root = NO_HEAD.vectors
    found: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "whole photo, as is (before)": lambda i: unit(embeddings["whole"][i]),
        "whole photo, signed sqrt (runtime)": lambda i: root(embeddings["whole"][i]),
        "whole, sqrt, centred on the photos": lambda i: unit(root(embeddings["whole"][i]) - root(embeddings["whole"][i]).mean(0)),
    }
    if with_crops:
        found["whole + mirror, sqrt"] = lambda i: root((embeddings["whole"][i] + embeddings["mirror"][i]) / 2)
        found["whole + mirror + centre crops, sqrt"] = lambda i: root(sum(embeddings[kind][i] for kind in
                                                                         ("whole", "mirror", "centre", "centre mirror")) / 4)
    if with_faces:
        found["face crop (else whole), sqrt"] = lambda i: root(embeddings["face"][i])
        found["whole | face crop, sqrt"] = lambda i: unit(np.concatenate([root(embeddings["whole"][i]),
                                                                          root(embeddings["face"][i])], axis=1))
    return found


# Re-ranking: the unit vectors of a set of photos -> a similarity per pair of them (1 on the
# diagonal), computed from those vectors alone, as the runtime could over the cat photos of a run.
Reranking = Callable[[np.ndarray], np.ndarray]


def cosine(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


def query_expansion(k: int, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    """alpha-QE: each vector replaced by the sum of itself and its k nearest, weighted by
    similarity ** alpha (alpha 0: average query expansion). Vectors in, vectors out."""
    def expand(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k + 1]  # itself first
        weights = np.maximum(np.take_along_axis(similarity, nearest, 1), 0) ** alpha
        return unit(np.einsum("nk,nkd->nd", weights, vectors[nearest]))
    return expand


def k_reciprocal(k1: int, k2: int, original: float) -> Reranking:
    """Zhong et al. 2017: Jaccard distance of the photos' k-reciprocal neighbour sets (expanded
    by their own half-size reciprocal sets, Gaussian-weighted, averaged over k2 neighbours),
    blended with the original distance with weight `original`; 1 - that distance."""
    def rerank(vectors: np.ndarray) -> np.ndarray:
        count = len(vectors)
        distance = np.maximum(2 - 2 * (vectors @ vectors.T), 0)
        distance = distance / np.maximum(distance.max(axis=0), 1e-12)
        rank = np.argsort(distance, axis=1, kind="stable")

        def reciprocal(i: int, k: int) -> np.ndarray:
            forward = rank[i, :k + 1]
            return forward[np.any(rank[forward, :k + 1] == i, axis=1)]

        weights = np.zeros((count, count))
        half = round(k1 / 2)
        for i in range(count):
            found = reciprocal(i, k1)
            expanded = [found]
            for candidate in found:
                theirs = reciprocal(int(candidate), half)
                if len(np.intersect1d(theirs, found)) > 2 / 3 * len(theirs):
                    expanded.append(theirs)
            members = np.unique(np.concatenate(expanded))
            weight = np.exp(-distance[i, members])
            weights[i, members] = weight / weight.sum()
        if k2 > 1:
            weights = weights[rank[:, :k2]].mean(axis=1)
        shared = np.minimum(weights[:, None, :], weights[None, :, :]).sum(axis=-1)
        jaccard = 1 - shared / (2 - shared)
        return 1 - ((1 - original) * jaccard + original * distance)
    return rerank


def diffusion(k: int, alpha: float, gamma: float = 3.0) -> Reranking:
    """Iscen et al. 2017, in closed form: (I - alpha S)^-1 over the mutual k-nearest-neighbour graph
    (edges similarity ** gamma, symmetrically normalised), scaled to 1 on the diagonal."""
    def rerank(vectors: np.ndarray) -> np.ndarray:
        similarity = np.maximum(vectors @ vectors.T, 0) ** gamma
        np.fill_diagonal(similarity, 0)
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        graph = np.zeros_like(similarity)
        np.put_along_axis(graph, nearest, np.take_along_axis(similarity, nearest, 1), 1)
        graph = np.minimum(graph, graph.T)
        degree = np.maximum(graph.sum(axis=1), 1e-12)
        ranking = np.linalg.inv(np.eye(len(graph)) - alpha * graph / np.sqrt(np.outer(degree, degree)))
        return ranking / np.sqrt(np.outer(np.diag(ranking), np.diag(ranking)))
    return rerank


def csls(k: int) -> Reranking:
    """Conneau et al. 2018: cosine less the mean of the two photos' similarities to their k
    nearest (photos in crowded places, hubs, count for less), shifted by 0.5 to stay near the
    thresholds' range."""
    def rerank(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        others = similarity.copy()
        np.fill_diagonal(others, -np.inf)
        crowd = np.sort(others, axis=1)[:, -k:].mean(axis=1)
        corrected = similarity - (crowd[:, None] + crowd[None, :]) / 2 + 0.5
        np.fill_diagonal(corrected, 1.0)
        return corrected
    return rerank


def nearest_neighbour_of(similarity: np.ndarray, cats: np.ndarray, sessions: np.ndarray) -> tuple[float, int]:
    """training.identity.nearest_neighbour_accuracy for any similarity, not only a dot product."""
    similarity = similarity.copy()
    similarity[sessions[:, None] == sessions[None, :]] = -np.inf
    queries = [i for i in range(len(cats)) if np.any((cats == cats[i]) & (sessions != sessions[i]))]
    hits = sum(int(cats[int(np.argmax(similarity[i]))] == cats[i]) for i in queries)
    return hits / max(len(queries), 1), len(queries)


def pair_ceiling(similarity: np.ndarray, cats: np.ndarray) -> tuple[int, int]:
    """(same-cat pairs above the lowest pair threshold with precision >= PRECISION_TARGET, same-cat pairs)."""
    upper = np.triu_indices(len(cats), 1)
    order = np.argsort(-similarity[upper], kind="stable")
    same = (cats[:, None] == cats[None, :])[upper][order]
    together = np.cumsum(same)
    good = together / np.arange(1, len(same) + 1) >= PRECISION_TARGET
    return (int(together[good].max()) if good.any() else 0), int(same.sum())


# A clustering of a similarity matrix: similarity, thresholds -> labels per threshold (-1: unknown).
MatrixClustering = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def _small_groups_unknown(labels: np.ndarray) -> np.ndarray:
    labels = np.unique(labels, return_inverse=True)[1]
    return np.where(np.bincount(labels)[labels] >= MIN_PHOTOS, labels, -1)


def _distances(similarity: np.ndarray) -> np.ndarray:
    distance = np.clip(1 - (similarity + similarity.T) / 2, 0, None)
    np.fill_diagonal(distance, 0)
    return distance


def linkage(method: str) -> MatrixClustering:
    """Agglomerative clustering (scipy), cut at each threshold; groups of one photo are unknown."""
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as tree_of
    from scipy.spatial.distance import squareform

    def cluster(similarity: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
        tree = tree_of(squareform(_distances(similarity), checks=False), method)
        return [_small_groups_unknown(fcluster(tree, 1 - threshold, "distance")) for threshold in thresholds]
    return cluster


def mutual_nearest(similarity: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
    """Connected components of the graph of photos that are each other's nearest neighbour, with
    a similarity of at least the threshold."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    others = similarity.copy()
    np.fill_diagonal(others, -np.inf)
    nearest = np.argmax(others, axis=1)
    mutual = np.zeros(others.shape, bool)
    mutual[np.arange(len(others)), nearest] = True
    mutual &= mutual.T
    return [_small_groups_unknown(connected_components(csr_matrix(mutual & (others >= threshold)), directed=False)[1])
            for threshold in thresholds]


def hdbscan(similarity: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
    """HDBSCAN (scikit-learn), groups of two or more, its own cut (the same for every threshold)."""
    from sklearn.cluster import HDBSCAN

    labels = HDBSCAN(min_cluster_size=MIN_PHOTOS, metric="precomputed", copy=True).fit_predict(_distances(similarity))
    return [labels for _ in thresholds]


def rerankings() -> dict[str, tuple[Callable[[np.ndarray], np.ndarray], Reranking]]:
    """Name -> (what becomes of the runtime's vectors, the similarity then used)."""
    same = lambda vectors: vectors  # noqa: E731 - a table of small functions
    return {
        "cosine (runtime)": (same, cosine),
        "average QE, k 2": (query_expansion(2, 0.0), cosine),
        "alpha-QE, k 3, alpha 3": (query_expansion(3, 3.0), cosine),
        "alpha-QE, k 5, alpha 3": (query_expansion(5, 3.0), cosine),
        "k-reciprocal, k1 4, k2 1, l 0.3": (same, k_reciprocal(4, 1, 0.3)),
        "k-reciprocal, k1 6, k2 3, l 0.3": (same, k_reciprocal(6, 3, 0.3)),
        "k-reciprocal, k1 10, k2 3, l 0.3": (same, k_reciprocal(10, 3, 0.3)),
        "diffusion, k 10, alpha 0.9": (same, diffusion(10, 0.9)),
        "CSLS, k 10": (same, csls(10)),
    }


def matrix_clusterings() -> dict[str, MatrixClustering]:
    return {"average linkage": linkage("average"), "complete linkage": linkage("complete"),
            "single linkage": linkage("single"), "mutual 1-NN": mutual_nearest, "HDBSCAN": hdbscan}


def on_vectors(cluster: MatrixClustering, similarity_of: Reranking) -> Clustering:
    return lambda vectors, thresholds: cluster(similarity_of(vectors), thresholds)


def measure_reranking(vectors: np.ndarray, cats: np.ndarray, sessions: np.ndarray, folds: list[np.ndarray]) -> None:
    """The re-ranking table, then the pooled precision / recall curve of each clustering."""
    print(f"\nre-ranking the runtime's vectors ({'variant':<32}) {'clustering':<16} 1-NN all cats  in folds  pair ceiling"
          "  pairwise precision  recall  thresholds (other folds)")
    clusterings = matrix_clusterings()
    for name, (transform, similarity_of) in rerankings().items():
        overall, _ = nearest_neighbour_of(similarity_of(transform(vectors)), cats, sessions)
        fold_sets = [(transform(vectors[members]), cats[members], sessions[members]) for members in folds]
        hits, queries, together, same = 0.0, 0, 0, 0
        for fold_vectors, fold_cats, fold_sessions in fold_sets:
            similarity = similarity_of(fold_vectors)
            accuracy, count = nearest_neighbour_of(similarity, fold_cats, fold_sessions)
            found, pairs = pair_ceiling(similarity, fold_cats)
            hits, queries, together, same = hits + accuracy * count, queries + count, together + found, same + pairs
        runnable: dict[str, Clustering] = {"runtime": runtime_clusters} if similarity_of is cosine else {}
        runnable.update({clustering_name: on_vectors(cluster, similarity_of) for clustering_name, cluster in clusterings.items()})
        for clustering_name, clustering in runnable.items():
            scores = held_out(fold_sets, clustering)
            chosen = "own cut" if clustering_name == "HDBSCAN" else " ".join(f"{t:.2f}" for t in scores["thresholds"])
            print(f"{name:<59} {clustering_name:<16} {overall:13.3f} {hits / max(queries, 1):9.3f} {together / max(same, 1):13.3f}"
                  f" {scores['precision']:19.3f} {scores['recall']:7.3f}  {chosen}", flush=True)
    thresholds = np.round(np.arange(0.70, 0.95, 0.04), 2)
    print("\npairwise precision / recall of the runtime's vectors, folds pooled, by threshold: "
          + "  ".join(f"{t:.2f}" for t in thresholds))
    for clustering_name, clustering in {"runtime": runtime_clusters,
                                        **{n: on_vectors(c, cosine) for n, c in clusterings.items() if n != "HDBSCAN"}}.items():
        totals = sum((np.array([pair_counts(labels, cats[members]) for labels in clustering(vectors[members], thresholds)])
                      for members in folds), np.zeros((len(thresholds), 3)))
        print(f"{clustering_name:<16} " + "  ".join(f"{a / max(b, 1):.2f}/{a / max(c, 1):.3f}" for a, b, c in totals), flush=True)


# --- known cats: you name a few photos of each cat, the rest are named after them --------------

HOUSEHOLD_TARGET = 0.97  # of named photos right in households of 3: what each threshold is chosen for
KNOWN_FOLDS = 3
KNOWN_DEALS = 3  # deals of the cats into folds: with 15 cats one deal's figures swing by a few points
KNOWN_FRONTIER = (0.0, 0.1, 0.2, 0.225, 0.3, 0.4, 0.5)


def _cosine_mean(vectors: np.ndarray, examples: list[np.ndarray], asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best cat by cosine to the mean of its examples; confidence: best minus second (the issue's rule)."""
    scores = vectors[asked] @ unit(np.stack([vectors[rows].mean(axis=0) for rows in examples])).T
    ordered = np.sort(scores, axis=1)
    return scores.argmax(axis=1), ordered[:, -1] - ordered[:, -2]


def _nearest_example(vectors: np.ndarray, examples: list[np.ndarray], asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.stack([(vectors[asked] @ vectors[rows].T).max(axis=1) for rows in examples], axis=1)
    ordered = np.sort(scores, axis=1)
    return scores.argmax(axis=1), ordered[:, -1] - ordered[:, -2]


def _runtime_rule(vectors: np.ndarray, examples: list[np.ndarray], asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """notcat_sort.known_cats as the runtime fits it; confidence: the share of the way from the
    boundary between the two best cats to the best cat's mean (the runtime names from NAME_MARGIN)."""
    from notcat_sort.known_cats import fit

    fitted = fit([str(number) for number, rows in enumerate(examples) for _ in rows], np.concatenate([vectors[rows] for rows in examples]))
    scores = fitted.scores(vectors[asked])
    order = np.argsort(-scores, axis=1)[:, :2]
    rows = np.arange(len(asked))
    best = np.array([int(fitted.names[cat]) for cat in order[:, 0]])
    return best, (scores[rows, order[:, 0]] - scores[rows, order[:, 1]]) / fitted.spans[order[:, 0], order[:, 1]]


KNOWN_RULES: dict[str, tuple[Callable, np.ndarray]] = {
    "cosine of the mean, margin": (_cosine_mean, np.round(np.arange(0, 0.3, 0.005), 3)),
    "nearest example, margin": (_nearest_example, np.round(np.arange(0, 0.3, 0.005), 3)),
    "discriminants, share of the way (runtime)": (_runtime_rule, np.round(np.arange(0, 1.0, 0.025), 3)),
}


Asked = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # right, confidence, a named cat's photo, its cat


def known_draws(vectors: np.ndarray, cats: np.ndarray, pool: np.ndarray, size: int, examples: int, draws: int,
                rng: np.random.Generator) -> dict[str, list[Asked]]:
    """For each rule, per draw of a household of `size` cats from `pool` (all of it once, if not
    smaller): every photo asked, of the household's cats and of the cats nobody named."""
    unnamed = np.flatnonzero(np.bincount(cats, minlength=cats.max() + 1)[cats] <= examples)
    found: dict[str, list[Asked]] = {name: [] for name in KNOWN_RULES}
    for _ in range(draws if size < len(pool) else max(1, draws // 5)):
        household = rng.choice(pool, size, replace=False) if size < len(pool) else pool
        shuffled = [rng.permutation(np.flatnonzero(cats == cat)) for cat in household]
        named = [rows[:examples] for rows in shuffled]
        asked = np.concatenate([rows[examples:] for rows in shuffled] + [unnamed])
        mine = np.isin(cats[asked], household)
        for name, (rule, _) in KNOWN_RULES.items():
            best, confidence = rule(vectors, named, asked)
            found[name].append((household[best] == cats[asked], confidence, mine, cats[asked]))
    return found


def _at(results: list[Asked], threshold: float, only: np.ndarray | None = None) -> tuple[float, float, float]:
    """(share of named photos right, share of the named cats' photos named, share of other cats' photos
    named), over the photos of the cats `only` (and the unnamed cats') if given."""
    right, confidence, mine, cat = (np.concatenate(part) for part in zip(*results, strict=True))
    if only is not None:
        keep = ~mine | np.isin(cat, only)
        right, confidence, mine = right[keep], confidence[keep], mine[keep]
    named = confidence >= threshold
    return (float(right[named & mine].mean()) if (named & mine).any() else float("nan"),
            float(named[mine].mean()), float(named[~mine].mean()) if (~mine).any() else float("nan"))


def _loosest(results: list[Asked], grid: np.ndarray) -> float:
    """The lowest threshold of the grid at which >= HOUSEHOLD_TARGET of named photos are right."""
    return next((float(t) for t in grid if _at(results, t)[0] >= HOUSEHOLD_TARGET), float(grid[-1]))


def measure_known_cats(vectors: np.ndarray, cats: np.ndarray, examples: int, draws: int, seed: int) -> None:
    counts = np.bincount(cats)
    pool = np.flatnonzero(counts > examples)
    rng = np.random.default_rng(seed)
    deals = [rng.permutation(len(pool)) % KNOWN_FOLDS for _ in range(KNOWN_DEALS)]  # each cat in one fold a deal
    print(f"known cats: {len(pool)} cats with more than {examples} photos, {examples} named each, the rest asked; "
          f"{int((counts <= examples).sum())} other cats ({int(counts[counts <= examples].sum())} photos) never named.\n"
          f"Each fold's threshold is the loosest with >= {HOUSEHOLD_TARGET:.0%} right in households of 3 of the other "
          f"{KNOWN_FOLDS - 1} folds' cats; 'held out' is the fold's own cats at it (all at once: every cat named, "
          f"each fold's photos at its threshold), averaged over {KNOWN_DEALS} deals of the cats into folds.")
    print(f"{'rule':<42} {'setting':<18} {'all named: right':>16}   held out: right  named  others named  (thresholds)")
    settings = (2, 3, 4, len(pool))
    for name, (_, grid) in KNOWN_RULES.items():
        everything = {size: known_draws(vectors, cats, pool, size, examples, draws, rng)[name] for size in settings}
        chosen = []
        held: dict[int, list[tuple[float, float, float, int]]] = {size: [] for size in settings}
        for dealt in deals:
            folds = [pool[dealt == fold] for fold in range(KNOWN_FOLDS)]
            for fold, test in enumerate(folds):
                tune = np.concatenate([members for other, members in enumerate(folds) if other != fold])
                threshold = _loosest(known_draws(vectors, cats, tune, 3, examples, draws, rng)[name], grid)
                chosen.append(threshold)
                for size in settings:
                    if size < len(pool):
                        results, only = known_draws(vectors, cats, test, min(size, len(test)), examples, draws, rng)[name], None
                    else:
                        results, only = everything[size], test
                    right, share, others = _at(results, threshold, only)
                    held[size].append((right, share, others, len(test)))
        for size in settings:
            weights = np.array([count for *_, count in held[size]], float)
            right, share, others = (np.average([row[i] for row in held[size]], weights=weights) for i in range(3))
            setting = f"all {len(pool)} at once" if size == len(pool) else f"households of {size}"
            print(f"{name:<42} {setting:<18} {_at(everything[size], -np.inf)[0]:16.3f}   {right:15.3f} {share:6.2f} "
                  f"{others:13.2f}  ({' '.join(f'{t:g}' for t in chosen)})", flush=True)
    runtime = next(name for name in KNOWN_RULES if "(runtime)" in name)
    everything = {size: known_draws(vectors, cats, pool, size, examples, draws, rng)[runtime] for size in settings}
    print(f"\n{runtime}: right / share named by threshold (all {len(pool)} cats; the trade-off)")
    print(f"{'threshold':<10}" + "".join(f"{f'households of {size}' if size < len(pool) else 'all at once':>20}" for size in settings))
    for threshold in KNOWN_FRONTIER:
        print(f"{threshold:<10g}" + "".join(f"{'{:.3f} / {:.2f}'.format(*_at(everything[size], threshold)[:2]):>20}"
                                            for size in settings), flush=True)
    print(f"\nat the threshold chosen on all {len(pool)} cats, by photos named per cat: "
          "right / share named, in households of 3 and (cats) all at once")
    for name, (_, grid) in KNOWN_RULES.items():
        threshold = _loosest(known_draws(vectors, cats, pool, 3, examples, draws, rng)[name], grid)
        line = f"{name:<42} {threshold:<6g}"
        for count in (1, 3, 5, 8):
            usable = np.flatnonzero(counts > count)
            household = _at(known_draws(vectors, cats, usable, 3, count, draws, rng)[name], threshold)
            everyone = _at(known_draws(vectors, cats, usable, len(usable), count, draws, rng)[name], threshold)
            line += f" | {count}: {household[0]:.3f} / {household[1]:.2f}; ({len(usable)}) {everyone[0]:.3f} / {everyone[1]:.2f}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "catnotcat")
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--folds", type=int, default=4, help="validation folds, by cat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-crops", action="store_true", help="only the whole photo: no mirror, crop or face variants")
    parser.add_argument("--known-cats", action="store_true", help="measure naming after a few named photos per cat instead")
    parser.add_argument("--examples", type=int, default=5, help="--known-cats: named photos per cat")
    parser.add_argument("--draws", type=int, default=200, help="--known-cats: households drawn per setting")
    args = parser.parse_args()
    paths, cat_names = photos_of(args.data)
    cats = np.unique(cat_names, return_inverse=True)[1]
    if args.known_cats:
        whole = cached_embeddings(paths, args.model)
        measure_known_cats(NO_HEAD.vectors(whole).astype(np.float64), cats, args.examples, args.draws, args.seed)
        return
    faces: FaceFinder | None = None
    try:
        faces = None if args.skip_crops else FaceFinder()
    except (ImportError, AttributeError) as error:
        print(f"face crops skipped: {error} (pip install -e '.[bench]')", file=sys.stderr)
    classifier = Classifier(load_card(args.model), threads=2)
    embeddings, found, per_inference = embed(paths, classifier, faces, crops=not args.skip_crops)
    sessions = sessions_of(paths, cats, embeddings["whole"])
    print(f"{len(paths)} photos of {cats.max() + 1} cats in {sessions.max() + 1} sessions; {args.folds} folds by cat, "
          f"seed {args.seed}; {1000 * per_inference:.1f} CPU ms per inference")
    if faces is not None:
        print(f"cat faces found in {int(found.sum())} of {len(paths)} photos ({100 * found.mean():.0f} %), "
              f"{1000 * float(np.median(faces.seconds)):.1f} CPU ms per photo (median)")
    fold_of_cat = np.random.default_rng(args.seed).permutation(cats.max() + 1) % args.folds
    folds = [np.flatnonzero(fold_of_cat[cats] == fold) for fold in range(args.folds)]
    everyone = np.arange(len(paths))
    print(f"{'variant':<38} {'clustering':<16} 1-NN all cats  in folds  pairwise precision  recall  thresholds (other folds)")
    for name, vectors_of in variants(embeddings, faces is not None, not args.skip_crops).items():
        overall, _ = nearest_neighbour_accuracy(vectors_of(everyone), cats, sessions)
        for clustering_name, clustering in CLUSTERINGS.items():
            scores = held_out([(vectors_of(members), cats[members], sessions[members]) for members in folds], clustering)
            print(f"{name:<38} {clustering_name:<16} {overall:13.3f} {scores['nn_accuracy']:9.3f} "
                  f"{scores['precision']:19.3f} {scores['recall']:7.3f}  {' '.join(f'{t:.2f}' for t in scores['thresholds'])}"
                  f" (all folds {scores['threshold']:.2f})", flush=True)
    try:
        import sklearn  # noqa: F401 - scikit-learn, and with it scipy
    except ImportError as error:
        print(f"re-ranking and other clusterings skipped: {error} (pip install -e '.[bench]')", file=sys.stderr)
        return
    measure_reranking(NO_HEAD.vectors(embeddings["whole"]), cats, sessions, folds)


if __name__ == "__main__":
    main()
