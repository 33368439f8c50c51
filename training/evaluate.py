"""Evaluate an ONNX model the way the CLI runs it: `decode` + `notcat_sort.model.Classifier`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from notcat_sort.decode import DecodeError, decode
from notcat_sort.model import Classifier, load_card
from training import data, metrics


def predict(classifier: Classifier, sources: list, batch: int = 32):
    """p_cat per source (NaN where it cannot be decoded) and the decode errors by position."""
    size = classifier.card.input_size
    p_cat = np.full(len(sources), np.nan)
    errors: dict[int, str] = {}
    for start in range(0, len(sources), batch):
        arrays, positions = [], []
        for i in range(start, min(start + batch, len(sources))):
            try:
                arrays.append(decode(sources[i], size))
                positions.append(i)
            except DecodeError as error:
                errors[i] = str(error)
        if arrays:
            p_cat[positions] = classifier.p_cat(np.stack(arrays))
    return p_cat, errors


def plots(y_true: np.ndarray, p_cat: np.ndarray, threshold: float, out: Path, title: str) -> list[Path]:
    """Confusion matrix and precision-recall curve PNGs (cat = positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    result = metrics.binary(y_true, p_cat >= threshold)
    fig, ax = plt.subplots(figsize=(4, 4))
    matrix = np.array(result["confusion"])
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
    ax.set_xticks([0, 1], data.LABELS)
    ax.set_yticks([0, 1], data.LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nthreshold {threshold:.3f}, acc {result['accuracy']:.4f}", fontsize=9)
    fig.tight_layout()
    confusion_png = out / "confusion.png"
    fig.savefig(confusion_png, dpi=120)
    plt.close(fig)

    order = np.argsort(-p_cat)
    hits = np.asarray(y_true, bool)[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / max(int(hits.sum()), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision)
    chosen = metrics.binary(y_true, p_cat >= threshold)
    ax.scatter([chosen["recall"]], [chosen["precision"]], color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("recall (cat)")
    ax.set_ylabel("precision (cat)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    pr_png = out / "precision-recall.png"
    fig.savefig(pr_png, dpi=120)
    plt.close(fig)
    return [confusion_png, pr_png]


def evaluate(model: Path, root: Path, split: str, seed: int, out: Path | None, threshold: float | None) -> dict | None:
    """Print metrics for a labelled dataset (or predictions for an unlabelled folder)."""
    card = load_card(model)
    classifier = Classifier(card, threads=2)
    threshold = card.threshold if threshold is None else threshold
    if data.layout(root) == "unlabelled":
        paths = data.unlabelled_paths(root)
        p_cat, errors = predict(classifier, paths)
        print("path\tp_cat\tlabel")
        for i, path in enumerate(paths):
            if i in errors:
                print(f"{path}\t\terror: {errors[i]}")
            else:
                print(f"{path}\t{p_cat[i]:.4f}\t{'cat' if p_cat[i] >= threshold else 'not-cat'}")
        print(f"{len(paths)} files, {len(errors)} errors, {int(np.sum(p_cat >= threshold))} cat")
        return None

    items = data.load_items(root)
    if split == "val":
        train, items = data.split(items, seed)
        _, items = data.with_synthetic(train, items, *data.synthetic_counts(None))
    p_cat, errors = predict(classifier, [item.encoded() for item in items])
    for i, message in errors.items():
        print(f"error\t{items[i].name}\t{message}")
    ok = np.array([i not in errors for i in range(len(items))])
    y_true = np.array([item.target for item in items])[ok]
    groups = [item.group for item, good in zip(items, ok) if good]
    result = metrics.report(y_true, p_cat[ok], groups, threshold)
    print(metrics.format_report(f"{model} on {root} ({split}), threshold {threshold:.4f}", result))
    if out is not None:
        for png in plots(y_true, p_cat[ok], threshold, out, f"{card.name} {split}"):
            print(f"wrote {png}")
    return result

