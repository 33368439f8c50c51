"""Binary metrics with cat as the positive class, per group and for the group families we report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The --uncertain band leaves the photos it does not hold with at least this cat precision and recall.
UNSURE_TARGET = 0.98


def family(group: str) -> str:
    """cifar10-* (32 px) and synthetic-* are reported apart from the photo groups."""
    if group.startswith("cifar10-"):
        return "cifar10 (32 px)"
    if group.startswith("synthetic-"):
        return "synthetic"
    return "photos"


def binary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = int(np.sum(y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    n = tp + tn + fp + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        # rows: true not-cat, true cat; columns: predicted not-cat, predicted cat
        "confusion": [[tn, fp], [fn, tp]],
    }


def report(y_true: np.ndarray, p_cat: np.ndarray, groups: list[str], threshold: float) -> dict:
    """Metrics overall, per family (photos / cifar10 / synthetic) and per group."""
    y_true, p_cat, group_of = np.asarray(y_true), np.asarray(p_cat), np.asarray(groups)
    y_pred = p_cat >= threshold
    families = np.array([family(g) for g in group_of])
    out = {"overall": binary(y_true, y_pred), "families": {}, "groups": {}}
    for name in sorted(set(families)):
        mask = families == name
        out["families"][name] = binary(y_true[mask], y_pred[mask])
    for name in sorted(set(groups)):
        mask = group_of == name
        out["groups"][name] = binary(y_true[mask], y_pred[mask])
    return out


def choose_threshold(y_true: np.ndarray, p_cat: np.ndarray) -> float:
    """The cut with the best cat F1 (ties: nearest 0.5). F1 rather than accuracy: it does not reward
    calling everything not-cat, whatever share of cats a library has."""
    candidates = np.unique(np.concatenate([p_cat, [0.5]]))
    if len(candidates) > 4000:
        candidates = np.quantile(candidates, np.linspace(0, 1, 4000))
    scores = [(binary(y_true, p_cat >= t)["f1"], -abs(t - 0.5)) for t in candidates]
    return float(candidates[max(range(len(scores)), key=scores.__getitem__)])


@dataclass(frozen=True)
class UncertainBand:
    """The p_cat band [low, high] that `notcat-sort --uncertain` sends to unsure/ (the card's `uncertain`),
    and what it gives on the predictions it was chosen on."""

    low: float
    high: float
    target: float  # least cat precision and recall wanted of the photos decided outside the band
    precision: float  # of cat/, the photos above the band
    recall: float  # of the cats outside the band, the share above it
    unsure_share: float  # of the photos, inside the band
    photos: int
    chosen_on: str = "out-of-source, out-of-fold predictions of the int8 model at the card's threshold"


def uncertain_band(y_true: np.ndarray, p_cat: np.ndarray, threshold: float, target: float = UNSURE_TARGET) -> UncertainBand:
    """The narrowest band around `threshold` that, sent to unsure/, leaves cat/ (above it) with cat
    precision >= `target` and lets no more than 1 - `target` of the cats outside it fall below it into
    not-cat/ (recall). `high` is the lowest cut from which the cats are precise enough; `low` then the
    highest cut that loses few enough cats. Rounded outwards to 4 decimals. Chosen on out-of-source
    predictions, since those are what a user's photos get (see training/splits.py)."""
    y_true, p_cat = np.asarray(y_true, bool), np.asarray(p_cat, float)
    if len(p_cat) == 0:
        raise ValueError("no predictions to choose an uncertain band on")
    above = np.sort(np.unique(np.concatenate([[threshold], p_cat[p_cat >= threshold]])))
    high = float(above[-1])
    for cut in above:  # decided cat: p_cat > cut
        cats, others = int(np.sum(y_true & (p_cat > cut))), int(np.sum(~y_true & (p_cat > cut)))
        if cats + others == 0 or cats / (cats + others) >= target:
            high = float(cut)
            break
    kept_cats = int(np.sum(y_true & (p_cat > high)))
    lost_allowed = math.floor(kept_cats * (1 - target) / target + 1e-9)  # cats below low: recall >= target
    cats_below = np.sort(p_cat[y_true & (p_cat < threshold)])
    low = float(cats_below[lost_allowed]) if lost_allowed < len(cats_below) else threshold
    low, high = math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4
    decided = binary(y_true[(p_cat < low) | (p_cat > high)], p_cat[(p_cat < low) | (p_cat > high)] > high)
    return UncertainBand(low, high, target, decided["precision"], decided["recall"],
                         float(np.mean((p_cat >= low) & (p_cat <= high))), len(p_cat))


def format_report(title: str, result: dict) -> str:
    def line(name: str, m: dict) -> str:
        (tn, fp), (fn, tp) = m["confusion"]
        return (f"  {name:<22} n={m['n']:>5}  acc={m['accuracy']:.4f}  P={m['precision']:.4f}  "
                f"R={m['recall']:.4f}  F1={m['f1']:.4f}  [[tn={tn} fp={fp}] [fn={fn} tp={tp}]]")

    lines = [title, line("overall", result["overall"])]
    lines += [line(name, m) for name, m in result["families"].items()]
    lines += [line(name, m) for name, m in result["groups"].items()]
    return "\n".join(lines)
