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
    """Most accurate cut on the given validation images; ties go to the cut nearest 0.5."""
    candidates = np.unique(np.concatenate([p_cat, [0.5]]))
    y_true = np.asarray(y_true, bool)
    best = max(
        candidates,
        key=lambda t: (np.mean((p_cat >= t) == y_true), -abs(t - 0.5)),
    )
    return float(best)


def format_report(title: str, result: dict) -> str:
    def line(name: str, m: dict) -> str:
        (tn, fp), (fn, tp) = m["confusion"]
        return (f"  {name:<22} n={m['n']:>5}  acc={m['accuracy']:.4f}  P={m['precision']:.4f}  "
                f"R={m['recall']:.4f}  F1={m['f1']:.4f}  [[tn={tn} fp={fp}] [fn={fn} tp={tp}]]")

    lines = [title, line("overall", result["overall"])]
    lines += [line(name, m) for name, m in result["families"].items()]
    lines += [line(name, m) for name, m in result["groups"].items()]
    return "\n".join(lines)
