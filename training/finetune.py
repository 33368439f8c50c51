"""Fine-tuning variants for fit's comparison: LP-FT with ImageNet distillation (LwF), and WiSE-FT.

Fine-tuning from a random head distorts pretrained features (Kumar et al. 2022), so the tuning
starts from the fitted logistic regression on the ImageNet evidence (LP-FT); every image's 1000
ImageNet logits are pulled towards the frozen teacher's (Learning without Forgetting, Li & Hoiem
2016), so what ImageNet knows about lynxes, rabbits and hamsters survives a pool with one photo of
each; and the tuned weights are averaged with the zero-shot ones (WiSE-FT, Wortsman et al. 2022).

Only the top of the network is tuned (the stages from `Recipe.stage` on, the 1x1 head convolution
and its norm), with batch-norm statistics frozen: the trunk below gives every image the same
activations each epoch, so they are computed once and cached (`features.trunk`), as are the
teacher's logits (`features.outputs`). An epoch then costs a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import prior, probe


@dataclass(frozen=True)
class Recipe:
    stage: int = 6  # tune blocks[stage:] and the head convolution
    epochs: int = 2
    lr: float = 1e-4
    distillation: float = 1.0  # weight of the teacher term against the cat / not-cat loss
    temperature: float = 2.0  # of the distillation softmax
    batch: int = 128
    alphas: tuple[float, ...] = (0.5, 1.0)  # WiSE-FT: the tuned weights' share (1.0: plain LP-FT)


class Top(nn.Module):
    """Trunk activations -> pooled penultimate features: the part of the network that is tuned."""

    def __init__(self, net: nn.Module, stage: int) -> None:
        super().__init__()
        self.stage = stage
        self.blocks = copy.deepcopy(net.blocks[stage:])
        self.conv_head = copy.deepcopy(net.conv_head)
        self.bn2 = copy.deepcopy(net.bn2)

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(trunk))).mean(dim=(2, 3))

    def installed(self, net: nn.Module) -> nn.Module:
        """A copy of `net` with this top in place of its own."""
        tuned = copy.deepcopy(net)
        for i, block in enumerate(self.blocks):
            tuned.blocks[self.stage + i] = copy.deepcopy(block)
        tuned.conv_head, tuned.bn2 = copy.deepcopy(self.conv_head), copy.deepcopy(self.bn2)
        return tuned


def _linear_head(start: probe.Probe) -> nn.Linear:
    """The fitted probe as one linear layer on raw evidence (its standardisation folded in)."""
    slope = start.weights / start.scale
    head = nn.Linear(len(slope), 1)
    head.weight.data = torch.tensor(slope[None, :], dtype=torch.float32)
    head.bias.data = torch.tensor([start.intercept - float(np.dot(slope, start.mean))], dtype=torch.float32)
    return head


def tune(top: Top, classifier: nn.Linear, evidence: prior.Evidence, start: probe.Probe, trunk: np.ndarray,
         teacher: np.ndarray, y: np.ndarray, weights: np.ndarray, rows: np.ndarray, recipe: Recipe,
         seed: int) -> Top:
    """LP-FT with distillation on `rows`: the cat / not-cat loss through the probe `start` (tuned too),
    plus `recipe.distillation` x the KL divergence from the teacher's ImageNet softmax."""
    student = copy.deepcopy(top).eval()  # eval: batch norm keeps ImageNet's statistics
    head = _linear_head(start)
    classifier = copy.deepcopy(classifier).requires_grad_(False)
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW([*student.parameters(), *head.parameters()], lr=recipe.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    targets, sample_weights = torch.tensor(y, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)
    t = recipe.temperature
    for _ in range(recipe.epochs):
        order = torch.as_tensor(rows)[torch.randperm(len(rows), generator=generator)]
        for batch in order.split(recipe.batch):
            index = np.sort(batch.numpy())
            pooled = student(torch.from_numpy(np.asarray(trunk[index], np.float32)))
            task = F.binary_cross_entropy_with_logits(head(evidence(pooled))[:, 0], targets[index],
                                                      weight=sample_weights[index])
            teacher_log_p = F.log_softmax(torch.from_numpy(teacher[index]) / t, dim=1)
            kept = F.kl_div(F.log_softmax(classifier(pooled) / t, dim=1), teacher_log_p, log_target=True,
                            reduction="batchmean") * t * t
            loss = task + recipe.distillation * kept
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return student.requires_grad_(False)


def wise(zero_shot: Top, tuned: Top, alpha: float) -> Top:
    """WiSE-FT: (1 - alpha) x the zero-shot weights + alpha x the tuned ones."""
    mixed = copy.deepcopy(zero_shot)
    start, end = zero_shot.state_dict(), tuned.state_dict()
    mixed.load_state_dict({name: (1 - alpha) * value + alpha * end[name] if value.is_floating_point() else value
                           for name, value in start.items()})
    return mixed


@torch.inference_mode()
def pooled(top: Top, trunk: np.ndarray, batch: int = 256) -> np.ndarray:
    """`top` over every cached trunk activation: pooled features, float32."""
    top = top.eval()
    return np.concatenate([top(torch.from_numpy(np.asarray(trunk[i:i + batch], np.float32))).numpy()
                           for i in range(0, len(trunk), batch)])


def out_of_fold(top: Top, classifier: nn.Linear, evidence: prior.Evidence, trunk: np.ndarray, teacher: np.ndarray,
                starts: list[probe.Probe], y: np.ndarray, weights: np.ndarray, fold: np.ndarray, c: float,
                recipe: Recipe, seed: int) -> dict[float, np.ndarray]:
    """Per WiSE-FT alpha, every image's logit from a network tuned and a probe fitted without its fold.

    Per fold k: LP-FT with distillation from `starts[k]` (the probe fitted on the frozen evidence of
    the other folds), then for each alpha the mixed network's evidence and a probe refitted on the
    other folds."""
    logits = {alpha: np.zeros(len(y)) for alpha in recipe.alphas}
    for k, start in enumerate(starts):
        train = fold != k
        tuned = tune(top, classifier, evidence, start, trunk, teacher, y, weights, np.flatnonzero(train), recipe,
                     seed + k)
        for alpha in recipe.alphas:
            rows = prior.evidence(evidence, pooled(wise(top, tuned, alpha), trunk))
            fitted = probe.fit(rows[train], y[train], weights[train], c)
            logits[alpha][~train] = fitted.logit(rows[~train])
    return logits
