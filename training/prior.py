"""The classifier head: what the frozen ImageNet model believes about an image, recombined for cat / not-cat.

Fine-tuning on this pool pulls the features towards its biggest source (PetImages) and loses what
ImageNet knows about everything the pool has one photo of: lynxes, rabbits, hamsters, Persians in
every pose. So the backbone and its ImageNet classifier stay frozen, and the head reads the
classifier's own log-probabilities ("evidence"): one per cat class (the five domestic cats and
the eight wild ones) and one per family of the rest (dogs, wolves and foxes, other animals,
objects and scenes), each clamped at EVIDENCE_FLOOR, and the log-odds of a domestic cat against
each rival (wild cats and the four families): a lynx is a lynx because ImageNet finds it likelier
than a tabby. A logistic regression on those 22 numbers is all that is fitted to the pool, which
leaves it little to overfit.

The 13 cat rows of the ImageNet classifier are kept exactly; the other 987 rows only feed the
normaliser and the family sums, so they are kept as a rank-r factorisation (SVD), which keeps the
int8 model under 4 MB (rank 32 or 64 lose nothing measurable on the out-of-source groups).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CAT_CLASSES = tuple(range(281, 294))  # tabby .. Egyptian cat (281-285), cougar .. cheetah (286-293)
DOMESTIC_CATS = tuple(range(281, 286))
FAMILIES = (  # the rest of ImageNet-1k, by index range
    ("dogs", lambda c: 151 <= c < 269),
    ("wolves and foxes", lambda c: 269 <= c < 281),
    ("other animals", lambda c: c < 398 and not 151 <= c < 294),
    ("objects and scenes", lambda c: c >= 398),
)
_RIVALS = ("wild cats",) + tuple(name for name, _ in FAMILIES)
EVIDENCE_NAMES = (tuple(f"log p(class {c})" for c in CAT_CLASSES) + tuple(f"log p({name})" for name, _ in FAMILIES)
                  + tuple(f"log p(domestic cats) - log p({rival})" for rival in _RIVALS))
EVIDENCE_FLOOR = -14.0  # log(1e-6): an unrelated image's evidence cannot grow without bound
DEFAULT_RANK = 32


class Evidence(nn.Module):
    """Pooled backbone features -> the 22 numbers the head reads (see the module's docstring)."""

    def __init__(self, classifier: nn.Linear, rank: int = DEFAULT_RANK) -> None:
        super().__init__()
        weight, bias = classifier.weight.detach().double(), classifier.bias.detach().double()
        families = [[c for c in range(weight.shape[0]) if c not in CAT_CLASSES and member(c)]
                    for _, member in FAMILIES]
        rest = [c for family in families for c in family]  # in family order: each family contiguous
        self.family_sizes = [len(family) for family in families]
        self.cats = nn.Linear(weight.shape[1], len(CAT_CLASSES))
        self.cats.weight.data = weight[list(CAT_CLASSES)].float()
        self.cats.bias.data = bias[list(CAT_CLASSES)].float()
        u, s, vt = torch.linalg.svd(weight[rest], full_matrices=False)
        self.project = nn.Linear(weight.shape[1], rank, bias=False)
        self.project.weight.data = vt[:rank].float()
        self.expand = nn.Linear(rank, len(rest))
        self.expand.weight.data = (u[:, :rank] * s[:rank]).float()
        self.expand.bias.data = bias[rest].float()
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        cats = self.cats(pooled)
        families = [torch.logsumexp(part, dim=1, keepdim=True)
                    for part in torch.split(self.expand(self.project(pooled)), self.family_sizes, dim=1)]
        grouped = torch.cat([cats, *families], dim=1)
        normaliser = torch.logsumexp(grouped, dim=1, keepdim=True)
        log_p = torch.clamp(grouped - normaliser, min=EVIDENCE_FLOOR)
        n_domestic, n_cats = len(DOMESTIC_CATS), len(CAT_CLASSES)
        domestic = torch.logsumexp(log_p[:, :n_domestic], dim=1, keepdim=True)
        rivals = torch.cat([torch.logsumexp(log_p[:, n_domestic:n_cats], dim=1, keepdim=True), log_p[:, n_cats:]], dim=1)
        return torch.cat([log_p, domestic - rivals], dim=1)


@torch.inference_mode()
def evidence(module: Evidence, pooled: np.ndarray, batch: int = 4096) -> np.ndarray:
    """`Evidence` over cached pooled features, as float64 for fitting."""
    parts = [module(torch.from_numpy(np.ascontiguousarray(pooled[i:i + batch], dtype=np.float32))).double().numpy()
             for i in range(0, len(pooled), batch)]
    return np.concatenate(parts)


def domestic_cat_probability(evidence_rows: np.ndarray) -> np.ndarray:
    """The zero-shot baseline: ImageNet's probability mass on the five domestic-cat classes."""
    columns = [CAT_CLASSES.index(c) for c in DOMESTIC_CATS]
    return np.exp(evidence_rows[:, columns]).sum(axis=1)


class Head(nn.Module):
    """A fitted logistic regression on standardised evidence, with its temperature, as two softmax logits:
    softmax([-z/2, z/2]) = [1 - sigmoid(z), sigmoid(z)], so the graph ends in the runtime's usual Softmax."""

    def __init__(self, weights: np.ndarray, intercept: float, mean: np.ndarray, scale: np.ndarray,
                 temperature: float) -> None:
        super().__init__()
        slope = np.asarray(weights, np.float64) / np.asarray(scale, np.float64) / temperature
        offset = (float(intercept) - float(np.dot(slope * temperature, mean))) / temperature
        self.linear = nn.Linear(len(slope), 2)
        self.linear.weight.data = torch.tensor(np.stack([-slope / 2, slope / 2]), dtype=torch.float32)
        self.linear.bias.data = torch.tensor([-offset / 2, offset / 2], dtype=torch.float32)

    def forward(self, evidence_rows: torch.Tensor) -> torch.Tensor:
        return self.linear(evidence_rows)
