"""`python -m training identity`: an identity head for `--group-cats`, trained and evaluated.

Input: DIR with one folder per cat (NekoNet's layout). Each photo goes through the runtime's own
decode and the ONNX model, whose `embedding` output (frozen ImageNet features) is the input of a
small linear projection trained with a batch-hard triplet loss (NekoNet style), on the photo and
its mirror image.

Validation holds out whole cats (4 folds by cat): the runtime meets cats the head never saw.
Photos of one cat taken close in time (a session: EXIF times within `SESSION_MINUTES`, or, for
photos without a time, near-duplicates by raw embedding) stay together, and nearest-neighbour
accuracy is measured across sessions only: a photo's neighbour from its own session does not
count. The clusters are made by the runtime's grouping (notcat_sort.cats). Each fold's clusters
are cut at the threshold chosen on the other folds (best pairwise recall at pairwise precision
>= `PRECISION_TARGET`, pairs pooled), so the precision and recall printed are measured on cats
that chose nothing; the threshold shipped with the head is the one chosen on all the folds.
`held_out` needs no torch: benchmarks/identity.py measures other embeddings and clusterings
with it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from notcat_sort.cats import AS_GIVEN, MIN_PHOTOS, NO_HEAD, UNKNOWN, CatGrouper, IdentityHead, head_path, unit
from notcat_sort.decode import DEFAULT_MAX_PIXELS, decode
from notcat_sort.model import Classifier, load_card

SESSION_MINUTES = 30
NEAR_DUPLICATE = 0.92  # raw-embedding cosine from which two photos without a time count as one session
PRECISION_TARGET = 0.95
THRESHOLDS = np.round(np.arange(0.30, 0.96, 0.02), 2)
IMAGES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic"}


@dataclass
class Photos:
    paths: list[Path]
    cats: np.ndarray  # cat index per photo
    names: list[str]  # cat folder names
    embeddings: np.ndarray  # (N, D) raw
    mirrored: np.ndarray  # (N, D) of the mirror images (training only)
    sessions: np.ndarray  # session index per photo


def _taken(path: Path) -> datetime.datetime | None:
    try:
        with Image.open(path) as image:
            value = image.getexif().get_ifd(0x8769).get(36867) or image.getexif().get(306)
        return datetime.datetime.strptime(str(value), "%Y:%m:%d %H:%M:%S") if value else None
    except (OSError, ValueError):
        return None


def load(data: Path, model: Path) -> Photos:
    card = load_card(model)
    classifier = Classifier(card, threads=2)
    if not classifier.has_embedding:
        raise SystemExit(f"{model} has no `embedding` output")
    folders = sorted(folder for folder in data.iterdir() if folder.is_dir() and not folder.name.startswith("."))
    paths, cats = [], []
    for number, folder in enumerate(folders):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGES:
                paths.append(path)
                cats.append(number)
    images = [decode(path.read_bytes(), card.input_size, DEFAULT_MAX_PIXELS) for path in paths]
    embeddings, mirrored = [], []
    for start in range(0, len(images), 32):
        batch = np.stack(images[start:start + 32])
        embeddings.append(classifier.scores(batch, attributes=False).embedding)
        mirrored.append(classifier.scores(np.ascontiguousarray(batch[:, :, ::-1]), attributes=False).embedding)
    embeddings_array = np.concatenate(embeddings)
    cats_array = np.array(cats)
    return Photos(paths, cats_array, [folder.name for folder in folders], embeddings_array,
                  np.concatenate(mirrored), sessions_of(paths, cats_array, embeddings_array))


def sessions_of(paths: list[Path], cats: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Connected components of "same cat, and taken within SESSION_MINUTES (or near-duplicates)"."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    times = [_taken(path) for path in paths]
    vectors = unit(embeddings)
    for i in range(len(paths)):
        for j in np.flatnonzero(cats == cats[i]):
            if j <= i:
                continue
            if times[i] and times[j]:
                close = abs((times[i] - times[j]).total_seconds()) <= SESSION_MINUTES * 60
            else:
                close = float(vectors[i] @ vectors[j]) >= NEAR_DUPLICATE
            if close:
                parent[root(i)] = root(int(j))
    roots = [root(i) for i in range(len(paths))]
    return np.unique(roots, return_inverse=True)[1]


def nearest_neighbour_accuracy(vectors: np.ndarray, cats: np.ndarray, sessions: np.ndarray) -> tuple[float, int]:
    """1-NN identity accuracy across sessions: neighbours from the query's own session are left
    out, and a photo is a query only if its cat has photos in another session."""
    similarity = vectors @ vectors.T
    similarity[sessions[:, None] == sessions[None, :]] = -np.inf
    queries = [i for i in range(len(cats)) if np.any((cats == cats[i]) & (sessions != sessions[i]))]
    if not queries:
        return float("nan"), 0
    hits = sum(int(cats[int(np.argmax(similarity[i]))] == cats[i]) for i in queries)
    return hits / len(queries), len(queries)


# A clustering: unit vectors and the thresholds to try -> a label per photo for each (-1: unknown).
Clustering = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def runtime_clusters(vectors: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
    """The runtime's grouping (notcat_sort.cats), vectors taken as they are."""
    labels = []
    for threshold in thresholds:
        grouper = CatGrouper(None, head=AS_GIVEN, threshold=float(threshold))
        try:
            for i, vector in enumerate(vectors):
                grouper.add(f"{i:08d}", vector)
            ids = grouper.group().ids
        finally:
            grouper.close()
        numbers: dict[str, int] = {}
        labels.append(np.array([-1 if found == UNKNOWN else numbers.setdefault(found, len(numbers)) for found in ids]))
    return labels


def average_linkage(vectors: np.ndarray, thresholds: np.ndarray) -> list[np.ndarray]:
    """Agglomerative clustering, average linkage on cosine similarity, cut at each threshold;
    groups of one photo are unknown. Dense (N x N): for measuring, not for a library."""
    count = len(vectors)
    similarity = (vectors @ vectors.T).astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    size = np.ones(count)
    merges = []  # (similarity, kept, absorbed), in merge order
    for _ in range(count - 1):
        kept, absorbed = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if not np.isfinite(similarity[kept, absorbed]):
            break
        merges.append((similarity[kept, absorbed], kept, absorbed))
        row = (similarity[kept] * size[kept] + similarity[absorbed] * size[absorbed]) / (size[kept] + size[absorbed])
        similarity[kept], similarity[:, kept] = row, row
        similarity[absorbed], similarity[:, absorbed] = -np.inf, -np.inf
        similarity[kept, kept] = -np.inf
        size[kept] += size[absorbed]
    labels = []
    for threshold in thresholds:
        parent = np.arange(count)
        for value, kept, absorbed in merges:
            if value < threshold:
                break
            parent[parent == absorbed] = kept
        found = np.unique(parent, return_inverse=True)[1]
        labels.append(np.where(np.bincount(found)[found] >= MIN_PHOTOS, found, -1))
    return labels


CLUSTERINGS: dict[str, Clustering] = {"runtime": runtime_clusters, "average linkage": average_linkage}


def pair_counts(labels: np.ndarray, cats: np.ndarray) -> tuple[int, int, int]:
    """(pairs grouped together that are one cat, pairs grouped together, pairs that are one cat)."""
    upper = np.triu_indices(len(cats), 1)
    same_cat = (cats[:, None] == cats[None, :])[upper]
    grouped = ((labels[:, None] == labels[None, :]) & (labels[:, None] >= 0))[upper]
    return int(np.sum(grouped & same_cat)), int(grouped.sum()), int(same_cat.sum())


def _best(counts: np.ndarray) -> int:
    """Index of the threshold with the best pooled recall at pooled precision >= PRECISION_TARGET
    (counts: thresholds x (together, grouped, same)); the most precise one if none gets there."""
    precision = counts[:, 0] / np.maximum(counts[:, 1], 1)
    recall = counts[:, 0] / np.maximum(counts[:, 2], 1)
    good = np.flatnonzero((precision >= PRECISION_TARGET) & (recall > 0))
    if len(good) == 0:
        return int(np.argmax(precision))
    return int(good[np.argmax(recall[good])])


def held_out(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], clustering: Clustering = runtime_clusters) -> dict:
    """Over folds of held-out cats (each: unit vectors, cats, sessions): 1-NN accuracy across
    sessions within each fold, and the clusters' pairwise precision and recall, each fold cut at
    the threshold chosen on the other folds (best recall at precision >= PRECISION_TARGET), pairs
    pooled. `threshold` is the one chosen on all the folds together: the one to ship."""
    hits = queries = 0
    counts = []
    for vectors, cats, sessions in folds:
        accuracy, count = nearest_neighbour_accuracy(vectors, cats, sessions)
        hits, queries = hits + (accuracy * count if count else 0), queries + count
        counts.append(np.array([pair_counts(labels, cats) for labels in clustering(vectors, THRESHOLDS)]))
    chosen, totals, unknown = [], np.zeros(3), 0
    for fold, (vectors, _, _) in enumerate(folds):
        best = _best(sum((c for other, c in enumerate(counts) if other != fold), np.zeros_like(counts[fold])))
        chosen.append(float(THRESHOLDS[best]))
        totals += counts[fold][best]
        unknown += int(np.sum(clustering(vectors, THRESHOLDS[best:best + 1])[0] < 0))
    return {"nn_accuracy": hits / max(queries, 1), "queries": queries, "precision": totals[0] / max(totals[1], 1),
            "recall": totals[0] / max(totals[2], 1), "unknown": unknown, "thresholds": chosen,
            "threshold": float(THRESHOLDS[_best(sum(counts, np.zeros_like(counts[0])))])}


def describe(scores: dict, photos: int) -> str:
    """One line of `held_out`'s numbers."""
    return (f"1-NN accuracy across sessions {scores['nn_accuracy']:.3f} ({scores['queries']} queries); clusters at "
            f"thresholds chosen on the other folds ({' '.join(f'{t:.2f}' for t in scores['thresholds'])}): pairwise "
            f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, {scores['unknown']} of {photos} photos "
            f"unknown; threshold chosen on all folds {scores['threshold']:.2f}")


def train_head(embeddings: np.ndarray, cats: np.ndarray, dimensions: int, steps: int, seed: int,
               margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix) of a linear projection trained with a batch-hard triplet loss on unit vectors."""
    import torch

    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    mean = embeddings.mean(0)
    x = torch.tensor(embeddings - mean, dtype=torch.float32)
    labels = torch.tensor(cats)
    projection = torch.nn.Linear(x.shape[1], dimensions, bias=False)
    torch.nn.init.orthogonal_(projection.weight)
    optimiser = torch.optim.AdamW(projection.parameters(), lr=1e-3, weight_decay=1e-2)
    by_cat = [np.flatnonzero(cats == cat) for cat in np.unique(cats)]
    usable = [members for members in by_cat if len(members) >= 2]
    for _ in range(steps):
        chosen = generator.choice(len(usable), size=min(16, len(usable)), replace=False)
        batch = np.concatenate([generator.choice(usable[c], size=4, replace=len(usable[c]) < 4) for c in chosen])
        z = torch.nn.functional.normalize(projection(x[batch]), dim=1)
        distance = torch.cdist(z, z)
        same = labels[batch][:, None] == labels[batch][None, :]
        hardest_positive = (distance * same).max(1).values
        hardest_negative = (distance + same * 1e3).min(1).values
        loss = torch.relu(hardest_positive - hardest_negative + margin).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return mean.astype(np.float32), projection.weight.detach().numpy().T.astype(np.float32).copy()


def run(data: Path, model: Path, out: Path | None, folds: int, dimensions: int, steps: int, seed: int) -> dict:
    photos = load(data, model)
    print(f"{len(photos.paths)} photos of {len(photos.names)} cats in {photos.sessions.max() + 1} sessions; "
          f"{folds} folds by cat")
    fold_of_cat = np.random.default_rng(seed).permutation(len(photos.names)) % folds
    folds_of: dict[str, list] = {"raw embedding": [], "identity head": []}
    for fold in range(folds):
        val = np.flatnonzero(fold_of_cat[photos.cats] == fold)
        train = np.flatnonzero(fold_of_cat[photos.cats] != fold)
        both = np.concatenate([photos.embeddings[train], photos.mirrored[train]])
        mean, matrix = train_head(both, np.concatenate([photos.cats[train]] * 2), dimensions, steps, seed)
        for name, project in (("raw embedding", NO_HEAD.vectors), ("identity head", IdentityHead(mean, matrix).vectors)):
            folds_of[name].append((project(photos.embeddings[val]), photos.cats[val], photos.sessions[val]))
    summary = {name: held_out(results) for name, results in folds_of.items()}
    for name, s in summary.items():
        print(f"{name:>14}: {describe(s, len(photos.paths))}")
    if out is not None:
        both = np.concatenate([photos.embeddings, photos.mirrored])
        mean, matrix = train_head(both, np.concatenate([photos.cats] * 2), dimensions, steps, seed)
        threshold = summary["identity head"]["threshold"]
        np.savez(out, mean=mean, matrix=matrix, threshold=np.float32(threshold), model_sha256=load_card(model).sha256,
                 evaluation=json.dumps(summary))
        print(f"head written to {out} (threshold {threshold:.2f}, from the held-out folds); the runtime reads it "
              f"as {head_path(model)}")
    return summary
