"""`--known-cats DIR`: the cats you named, found again in every run.

DIR holds a folder per cat, named as the cat, with example photos of it (the review page's
"name this cat" fills one per library; any folder of photos will do). A run embeds the examples
with the same model (the prediction cache makes that free after the first time) and fits a
classifier for this library on them: linear discriminant analysis over the embeddings as
`--group-cats` compares them (power-normalised, or through the identity head) and power-normalised
once more (`features`), with one covariance shared by the cats and shrunk halfway towards a
multiple of the identity, since the examples are few. A cat photo is named after the best cat when its discriminant beats the second
best cat's by at least NAME_MARGIN of the way between the two cats (0: on the boundary between
them, 1: as far as the cat's own examples' mean); otherwise it goes on to the unknown-cat groups
as before. A photo with the content of one of a cat's examples is that cat. With one cat named
there is no second to beat, and a photo is that cat when its cosine similarity to the mean of the
examples is at least the join threshold of the groups (cats.JOIN_SIMILARITY).

Why this rule: `python benchmarks/identity.py --known-cats` on campus cats held out (see README):
against the nearest cat by cosine of the mean of its examples with a margin, or by its nearest
example, it names more photos at the same precision, in households and with all the cats at once;
the second power-normalisation (the embedding to the power 1/4 in all) damps the channels that
fire on any cat further and names more at the same precision (with all 15 campus cats at once,
0.758 right where the square root alone gets 0.735, every photo named). Other confidences
(posterior probability at any temperature, the gap in Mahalanobis units, a reject by distance to
the cat's mean, a whitening learned on other cats) measured no better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from notcat_sort.cats import IdentityHead, is_cat_name, unit
from notcat_sort.classify import ClassifySettings, classify
from notcat_sort.scan import Candidate, scan

# Of the way from the boundary between the two best cats to the best cat's mean: the loosest
# threshold that keeps 97% of named photos right in households of 3 of the 15 campus cats with
# more than 5 photos, 5 named each (benchmarks/identity.py --known-cats, 200 draws a setting).
# Chosen on 10 of those cats it ranges 0 to 0.325 (held out: 0.967 right, 92% named).
NAME_MARGIN = 0.225
SHRINKAGE = 0.5  # the shared covariance: (1 - SHRINKAGE) * the examples' own + SHRINKAGE * their variance * I


class KnownCatsError(ValueError):
    """A --known-cats folder that cannot be used."""


@dataclass(frozen=True)
class Example:
    name: str
    candidate: Candidate


def read_examples(folder: Path) -> list[Example]:
    """The example photos of each cat: every image under DIR/<name>/, in name and path order."""
    examples = []
    for cat in sorted(folder.iterdir()):
        if not cat.is_dir() or cat.name.startswith("."):
            continue
        if not is_cat_name(cat.name):
            raise KnownCatsError(f"{cat}: {cat.name!r} cannot be a cat's name (nor its folder under cat/)")
        examples += [Example(cat.name, candidate) for candidate in sorted(scan([cat]), key=lambda c: c.path)
                     if candidate.problem is None]
    return examples


@dataclass(frozen=True)
class Fitted:
    """The cats' discriminants: a photo's score for cat i is features(vector) @ weights[i] + offsets[i]."""

    names: list[str]
    weights: np.ndarray  # (cats, D)
    offsets: np.ndarray  # (cats,)
    spans: np.ndarray  # (cats, cats): half the squared Mahalanobis distance between two cats' means (in features)
    means: np.ndarray  # (cats, D), unit length, of the vectors as given: for a cat named alone

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(photos, cats): each vector's discriminant for each cat."""
        return features(vectors) @ self.weights.T + self.offsets


def features(vectors: np.ndarray) -> np.ndarray:
    """The vectors the discriminants see: power-normalised (signed square root) and unit length."""
    rooted = np.sign(vectors) * np.sqrt(np.abs(np.asarray(vectors, dtype=np.float64)))
    return rooted / np.maximum(np.linalg.norm(rooted, axis=-1, keepdims=True), 1e-12)


def fit(names: Sequence[str], vectors: np.ndarray, shrinkage: float = SHRINKAGE) -> Fitted:
    """LDA with a shrunk pooled covariance, in the examples' own span (Woodbury), so that the cost
    grows with the number of examples, not with the square of the embedding's size."""
    given = np.asarray(vectors, dtype=np.float64)
    vectors = features(given)
    cats = sorted(set(names))
    members = [np.flatnonzero(np.array(names) == cat) for cat in cats]
    means = np.stack([vectors[rows].mean(axis=0) for rows in members])
    alone = unit(np.stack([given[rows].mean(axis=0) for rows in members]))
    residuals = np.concatenate([vectors[rows] - means[number] for number, rows in enumerate(members)])
    freedom = max(len(residuals) - len(cats), 1)
    variance = max(float((residuals ** 2).sum()) / freedom / vectors.shape[1], 1e-12)
    ridge, scale = shrinkage * variance, (1 - shrinkage) / freedom
    # (ridge I + scale R'R)^-1 x = (x - scale (x R') (ridge I + scale R R')^-1 R) / ridge
    inner = np.linalg.inv(ridge * np.eye(len(residuals)) + scale * residuals @ residuals.T)
    weights = (means - scale * (means @ residuals.T) @ inner @ residuals) / ridge
    offsets = -0.5 * np.einsum("cd,cd->c", weights, means)
    products = means @ weights.T
    spans = 0.5 * (np.diag(products)[:, None] + np.diag(products)[None, :] - 2 * products)
    return Fitted(cats, weights, offsets, spans, alone)


def choose(fitted: Fitted, vectors: np.ndarray, margin: float = NAME_MARGIN,
           alone: float = 0.9) -> list[str | None]:
    """The cat each vector is confidently, or None. `alone`: the cosine similarity that names the
    one cat of a library that named one."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(fitted.names) == 1:
        return [fitted.names[0] if similarity >= alone else None for similarity in vectors @ fitted.means[0]]
    scores = fitted.scores(vectors)
    order = np.argsort(-scores, axis=1)[:, :2]
    rows = np.arange(len(vectors))
    best, second = order[:, 0], order[:, 1]
    beaten = (scores[rows, best] - scores[rows, second]) / np.maximum(fitted.spans[best, second], 1e-12)
    return [fitted.names[cat] if room >= margin else None for cat, room in zip(best, beaten, strict=True)]


class Namer:
    """Names cat photos after the known cats: by content for the examples themselves, else by `choose`."""

    def __init__(self, examples: dict[str, str], fitted: Fitted | None, head: IdentityHead) -> None:
        self.examples = examples  # sha256 -> name
        self.fitted = fitted
        self.head = head

    @property
    def cats(self) -> list[str]:
        return self.fitted.names if self.fitted else []

    def name(self, digests: Sequence[str], embeddings: Sequence[np.ndarray | None]) -> list[str | None]:
        found: list[str | None] = [self.examples.get(digest) for digest in digests]
        rest = [(i, embedding) for i, (name, embedding) in enumerate(zip(found, embeddings, strict=True))
                if name is None and embedding is not None]
        if self.fitted is not None and rest:
            vectors = self.head.vectors(np.stack([embedding for _, embedding in rest]))
            for (i, _), name in zip(rest, choose(self.fitted, vectors, alone=self.head.threshold), strict=True):
                found[i] = name
        return found


@dataclass(frozen=True)
class Learned:
    namer: Namer
    photos: dict[str, int]  # name -> examples used
    unreadable: list[tuple[Path, str]]  # examples that could not be embedded, and why


def learn(folder: Path, settings: ClassifySettings, head: IdentityHead) -> Learned:
    """Read DIR's examples, embed them as a run would, and fit the namer."""
    examples = read_examples(folder)
    name_of = {example.candidate.path: example.name for example in examples}
    names, vectors, by_content, unreadable = [], [], {}, []
    photos: dict[str, int] = {}
    for predictions in classify([example.candidate for example in examples], settings):
        for prediction in predictions:
            name = name_of[prediction.candidate.path]
            if prediction.embedding is None or prediction.sha256 is None:
                unreadable.append((prediction.candidate.path, prediction.error or "no embedding"))
                continue
            names.append(name)
            vectors.append(head.vectors(prediction.embedding))
            by_content[prediction.sha256] = name
            photos[name] = photos.get(name, 0) + 1
    fitted = fit(names, np.stack(vectors)) if vectors else None
    return Learned(Namer(by_content, fitted, head), dict(sorted(photos.items())), unreadable)
