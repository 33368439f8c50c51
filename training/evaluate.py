"""Evaluate an ONNX model the way the CLI runs it: `decode` + `notcat_sort.model.Classifier`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from notcat_sort.decode import DecodeError, decode
from notcat_sort.model import Classifier, card_path, load_card
from training import calibration, data, metrics, probe, runtime, splits
from training import card as card_module


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


def out_of_fold_p(head_input: np.ndarray, fold: np.ndarray, probes: list[probe.Probe], temperature: float) -> np.ndarray:
    """Each image's cat probability from the head fitted without its fold."""
    logits = np.zeros(len(fold))
    for k, fitted in enumerate(probes):
        logits[fold == k] = fitted.logit(head_input[fold == k])
    return calibration.sigmoid(logits / temperature)


def headline(results: dict) -> str:
    """The two lines the model is judged by: int8 out of source, and in source on its own line."""
    lines = []
    for split in ("out_of_source", "in_source"):
        m = results[split]["int8"]["overall"]
        lines.append(f"int8 {split.replace('_', '-'):<13}: accuracy {m['accuracy']:.4f}  cat precision "
                     f"{m['precision']:.4f}  recall {m['recall']:.4f}  F1 {m['f1']:.4f}  (n={m['n']})")
    return "\n".join(lines)


def evaluate(model: Path, roots: list[Path], split: str, out: Path | None, threshold: float | None) -> dict | None:
    """Print metrics for labelled data (or predictions for an unlabelled folder).

    `split` out-of-source / in-source recompute fit's folds from the card (same data, seed and fold
    count) and give each image the prediction of the head fitted without its fold, read from the int8
    model's own head input: the card's figures, reproduced from the shipped file."""
    card = load_card(model)
    threshold = card.threshold if threshold is None else threshold
    if len(roots) == 1 and data.layout(roots[0]) == "unlabelled":
        paths = data.unlabelled_paths(roots[0])
        p_cat, errors = predict(Classifier(card, threads=2), paths)
        print("path\tp_cat\tlabel")
        for i, path in enumerate(paths):
            if i in errors:
                print(f"{path}\t\terror: {errors[i]}")
            else:
                print(f"{path}\t{p_cat[i]:.4f}\t{'cat' if p_cat[i] >= threshold else 'not-cat'}")
        print(f"{len(paths)} files, {len(errors)} errors, {int(np.sum(p_cat >= threshold))} cat")
        return None

    items = [item for root in roots for item in data.load_items(root)]
    if not items:
        raise SystemExit(f"no labelled images in {', '.join(map(str, roots))} (cat/ and not-cat/ are empty)")
    if split == "all":
        p_cat, errors = predict(Classifier(card, threads=2), [item.encoded() for item in items])
        for i, message in errors.items():
            print(f"error\t{items[i].name}\t{message}")
        ok = np.array([i not in errors for i in range(len(items))])
        y_true, p_cat = np.array([item.target for item in items])[ok], p_cat[ok]
        groups = [item.group for item, good in zip(items, ok, strict=True) if good]
        title = f"{model} on {', '.join(map(str, roots))}, threshold {threshold:.4f}"
    else:
        y_true, p_cat, groups = split_predictions(model, items, split)
        title = f"{model}, {split} (each image predicted by the head fitted without its fold), threshold {threshold:.4f}"
    result = metrics.report(y_true, p_cat, groups, threshold)
    print(metrics.format_report(title, result))
    if out is not None:
        for png in plots(y_true, p_cat, threshold, out, f"{card.name} {split}"):
            print(f"wrote {png}")
    return result


def fit_folds(model: Path, items: list[data.Item]) -> tuple[list[data.Item], np.ndarray]:
    """The items fit saw (`items`, the dataset the model was fitted on, with the same limit and synthetic
    renders) and each one's fold, recomputed from the card (same data, seed and fold count)."""
    details = json.loads(card_path(model).read_text(encoding="utf-8"))
    validation, config = details["validation"], details["training"]["config"]
    items = data.limit(items, config["limit"], config["seed"])
    items += [data.synthetic.item(i) for i in range(data.synthetic_count(config["synthetic"], config["limit"]))]
    return items, splits.folds(items, validation["seed"], validation["folds"])


@dataclass(frozen=True)
class FoldHeads:
    """The heads fit fitted without each fold (the card's fold probes), which output of the model they
    read and the temperature: each image's prediction from the head that never saw its source."""

    reads: str
    probes: list[probe.Probe]
    temperature: float

    @classmethod
    def of(cls, model: Path) -> FoldHeads:
        details = json.loads(card_path(model).read_text(encoding="utf-8"))
        return cls(details["head"]["reads"], [probe.Probe.from_json(raw) for raw in details["validation"]["fold_probes"]],
                   details["head"]["temperature"])

    def p_cat(self, head_input: np.ndarray, fold: np.ndarray) -> np.ndarray:
        return out_of_fold_p(head_input, fold, self.probes, self.temperature)


def split_predictions(model: Path, items: list[data.Item], split: str,
                      limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, p_cat, groups) of the `split` ("out-of-source" or "in-source") of `items` (the dataset
    the model was fitted on): fit's folds recomputed from the card (same data, seed and fold count),
    each image given the prediction of the head fitted without its fold, read from the int8 model's
    own head input. `limit`: only that many of the split's images, a seeded sample (tiny runs)."""
    card = load_card(model)
    items, fold = fit_folds(model, items)
    outside = np.array([splits.is_out_of_source(item) for item in items])
    rows = np.flatnonzero(outside if split == "out-of-source" else ~outside)
    if limit is not None and limit < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
    chosen = [items[row] for row in rows]
    images = data.runtime_batch(chosen, card.input_size)
    heads = FoldHeads.of(model)
    p_cat = heads.p_cat(runtime.run(model, images, (heads.reads,))[heads.reads], fold[rows])
    return np.array([item.target for item in chosen]), p_cat, [item.group for item in chosen]


def choose_uncertain_band(model: Path, roots: list[Path], target: float = metrics.UNSURE_TARGET,
                          limit: int | None = None) -> metrics.UncertainBand:
    """Choose the --uncertain band on the model's out-of-source predictions over `roots` (the data it
    was fitted on) at its card's threshold, and write it into the card (the model file is unchanged)."""
    y_true, p_cat, _ = split_predictions(model, [item for root in roots for item in data.load_items(root)],
                                         "out-of-source", limit)
    band = metrics.uncertain_band(y_true, p_cat, load_card(model).threshold, target)
    path = card_module.set_entry(model, "uncertain", asdict(band))
    print(f"{path}: --uncertain band {band.low}:{band.high} (unsure: {band.unsure_share:.1%} of {band.photos} "
          f"out-of-source photos); outside it cat precision {band.precision:.4f}, recall {band.recall:.4f}")
    return band
