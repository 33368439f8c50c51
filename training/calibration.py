"""Temperature scaling (Guo et al. 2017) and the expected calibration error it is judged by.

`p_cat` is what `--threshold` and `--uncertain LOW:HIGH` act on, so it should mean what it says:
of the photos given 0.8, about 80% should be cats. One temperature divides the logit; it is fitted
on out-of-source predictions, since those are what users' photos look like to the model.
"""

from __future__ import annotations

import numpy as np

BINS = 15


def sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))


def nll(logit: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of binary labels under sigmoid(logit), computed stably."""
    logit, y = np.asarray(logit, np.float64), np.asarray(y, np.float64)
    return float(np.mean(np.logaddexp(0.0, logit) - y * logit))


def fit_temperature(logit: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising NLL of sigmoid(logit / T): golden-section search on log T (convex there)."""
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(logit / np.exp(a), y) < nll(logit / np.exp(b), y):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """ECE of the cat probability: |mean p - fraction of cats| per equal-width bin, weighted by count."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.sum() * abs(p[members].mean() - y[members].mean())
    return float(error / max(len(p), 1))
