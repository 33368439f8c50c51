"""`python -m training identity`: an identity head for `--group-cats`, trained and evaluated.

Input: DIR with one folder per cat (NekoNet's layout). Each photo goes through the runtime's own
decode and the ONNX model, whose `embedding` output (frozen ImageNet features) is the input of a
small linear projection trained with a batch-hard triplet loss (NekoNet style), on the photo and
its mirror image.

Validation holds out whole cats (4 folds by cat): the runtime meets cats the head never saw.
Photos of one cat taken close in time (a session: EXIF times within `SESSION_MINUTES`, or, for
photos without a time, near-duplicates by raw embedding) stay together, and nearest-neighbour
accuracy is measured across sessions only: a photo's neighbour from its own session does not
count. The clusters are made by the runtime's grouping (notcat_sort.cats); the threshold printed
(and shipped with the head) is the one with the best pairwise recall at pairwise precision >=
`PRECISION_TARGET`, pairs pooled over the held-out folds, so those numbers are tuned on them
(optimistic).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from notcat_sort.cats import CatGrouper, IdentityHead, head_path, unit
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
        embeddings.append(classifier.scores(batch)[1])
        mirrored.append(classifier.scores(np.ascontiguousarray(batch[:, :, ::-1]))[1])
    embeddings_array = np.concatenate(embeddings)
    cats_array = np.array(cats)
    return Photos(paths, cats_array, [folder.name for folder in folders], embeddings_array,
                  np.concatenate(mirrored), _sessions(paths, cats_array, embeddings_array))


def _sessions(paths: list[Path], cats: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
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


def cluster_scores(vectors: np.ndarray, cats: np.ndarray, threshold: float) -> dict:
    """Pairwise precision and recall of the runtime's grouping (unknown photos pair with nothing)."""
    grouper = CatGrouper(None, threshold=threshold)
    try:
        for i, vector in enumerate(vectors):
            grouper.add(f"{i:08d}", vector)
        ids = np.array(grouper.group().ids)
    finally:
        grouper.close()
    upper = np.triu_indices(len(cats), 1)
    same_cat = (cats[:, None] == cats[None, :])[upper]
    grouped = ((ids[:, None] == ids[None, :]) & (ids[:, None] != "unknown"))[upper]
    return {"together": int(np.sum(grouped & same_cat)), "grouped": int(grouped.sum()), "same": int(same_cat.sum()),
            "threshold": float(threshold), "unknown": int(np.sum(ids == "unknown"))}


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


def _out_of_fold(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """1-NN accuracy, and the threshold with the best pairwise recall at pairwise precision >=
    PRECISION_TARGET, pairs pooled over the held-out folds (each fold: vectors, cats, sessions)."""
    hits = queries = 0
    for vectors, cats, sessions in folds:
        accuracy, count = nearest_neighbour_accuracy(vectors, cats, sessions)
        hits, queries = hits + (accuracy * count if count else 0), queries + count
    curve = []
    for threshold in THRESHOLDS:
        scores = [cluster_scores(vectors, cats, threshold) for vectors, cats, _ in folds]
        together = sum(score["together"] for score in scores)
        curve.append({"threshold": float(threshold),
                      "precision": together / max(sum(score["grouped"] for score in scores), 1),
                      "recall": together / max(sum(score["same"] for score in scores), 1),
                      "unknown": sum(score["unknown"] for score in scores)})
    good = [point for point in curve if point["precision"] >= PRECISION_TARGET and point["recall"] > 0]
    best = max(good, key=lambda p: (p["recall"], -p["threshold"])) if good else max(curve, key=lambda p: p["precision"])
    return {"nn_accuracy": hits / max(queries, 1), "queries": queries, **best}


def run(data: Path, model: Path, out: Path | None, folds: int, dimensions: int, steps: int, seed: int) -> dict:
    photos = load(data, model)
    print(f"{len(photos.paths)} photos of {len(photos.names)} cats in {photos.sessions.max() + 1} sessions; "
          f"{folds} folds by cat")
    fold_of_cat = np.random.default_rng(seed).permutation(len(photos.names)) % folds
    held_out: dict[str, list] = {"raw embedding": [], "identity head": []}
    for fold in range(folds):
        val = np.flatnonzero(fold_of_cat[photos.cats] == fold)
        train = np.flatnonzero(fold_of_cat[photos.cats] != fold)
        both = np.concatenate([photos.embeddings[train], photos.mirrored[train]])
        mean, matrix = train_head(both, np.concatenate([photos.cats[train]] * 2), dimensions, steps, seed)
        for name, project in (("raw embedding", unit), ("identity head", IdentityHead(mean, matrix).vectors)):
            held_out[name].append((project(photos.embeddings[val]), photos.cats[val], photos.sessions[val]))
    summary = {name: _out_of_fold(results) for name, results in held_out.items()}
    for name, s in summary.items():
        print(f"{name:>14}: 1-NN accuracy across sessions {s['nn_accuracy']:.3f} ({s['queries']} queries); "
              f"clusters at threshold {s['threshold']:.2f}: pairwise precision {s['precision']:.3f}, "
              f"recall {s['recall']:.3f}, {s['unknown']} of {len(photos.paths)} photos unknown")
    if out is not None:
        both = np.concatenate([photos.embeddings, photos.mirrored])
        mean, matrix = train_head(both, np.concatenate([photos.cats] * 2), dimensions, steps, seed)
        threshold = summary["identity head"]["threshold"]
        np.savez(out, mean=mean, matrix=matrix, threshold=np.float32(threshold), model_sha256=load_card(model).sha256,
                 evaluation=json.dumps(summary))
        print(f"head written to {out} (threshold {threshold:.2f}, from the held-out folds); the runtime reads it "
              f"as {head_path(model)}")
    return summary
