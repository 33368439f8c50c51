"""Binary metrics with cat as the positive class, per group and for the group families we report."""

from __future__ import annotations

import numpy as np


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


def format_report(title: str, result: dict) -> str:
    def line(name: str, m: dict) -> str:
        (tn, fp), (fn, tp) = m["confusion"]
        return (f"  {name:<22} n={m['n']:>5}  acc={m['accuracy']:.4f}  P={m['precision']:.4f}  "
                f"R={m['recall']:.4f}  F1={m['f1']:.4f}  [[tn={tn} fp={fp}] [fn={fn} tp={tp}]]")

    lines = [title, line("overall", result["overall"])]
    lines += [line(name, m) for name, m in result["families"].items()]
    lines += [line(name, m) for name, m in result["groups"].items()]
    return "\n".join(lines)
