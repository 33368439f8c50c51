"""Logistic regression on standardised inputs: the only part of the model fitted to the pool."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Probe:
    """logit = weights . (x - mean) / scale + intercept"""

    weights: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.intercept

    def to_json(self) -> dict:
        return {"weights": self.weights.tolist(), "intercept": self.intercept, "mean": self.mean.tolist(),
                "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, raw: dict) -> Probe:
        return cls(np.array(raw["weights"]), float(raw["intercept"]), np.array(raw["mean"]), np.array(raw["scale"]))


def fit(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float) -> Probe:
    """L2-regularised logistic regression (scikit-learn's lbfgs); small `c` keeps it near the prior."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y, sample_weight=sample_weight)
    return Probe(model.coef_[0].astype(np.float64), float(model.intercept_[0]), mean, scale)
