"""Fit the breed and mood heads out of fold, append them to the shipped graphs, and write their card section.

Folds keep near-duplicate photos together: photos of one source (one campus cat) and photos whose
normalised features are near-identical (cosine >= NEAR_DUPLICATE: the same shot resized or
recropped, which Oxford-IIIT and the emotion set both hold) are one group, and groups are dealt to
stratified folds whole. The candidates (which poolings a head reads, the power they are raised to,
the mirror images as extra training examples or not, and the L2 regularisation C) are scored on those folds; the best is
refitted on every photo. The breed head learns a 13th class, `domestic`, from the pool's
non-pedigree cats, and the runtime names a breed only where the top label is a breed with
p >= `confident`: the highest cut that costs no more than 1 - CONFIDENT_KEEP of the pedigree
photos the head names right, which leaves the fewest non-pedigree cats named at that price.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from notcat_sort.content import sha256_file
from notcat_sort.decode import decode
from notcat_sort.model import card_path
from training import attributes, heads
from training import card as card_module

NEAR_DUPLICATE = 0.95  # cosine of the normalised [embedding, pooled]; see the module docstring
NEAR_DUPLICATE_READS = ("embedding", "pooled")
FOLDS = 5
SEED = 0
# The candidates each head is chosen from (out of fold): the reads with stage 5 pooled over the cat
# (`stage5_cat`) and without it, raised to the power 0.5 (the square root) or 0.75. Chosen on these
# folds: breeds with `stage5_cat` at 0.5, C=10, top-1 0.8961, macro F1 0.8972 (0.8904 / 0.8915 without
# it, C=3); mood with it at 0.75, C=10, top-1 0.6467 (0.6407 at 0.5; 0.6188 without it). On the folds
# of seeds 1-5 (mood) and 1-3 (breeds), which chose nothing, mood's top-1 is 0.612 -> 0.627 (stage5_cat)
# -> 0.637 (and 0.75) on average, breeds' 0.889 -> 0.894. Measured on these folds and none clearly
# better (the figures: top-1 at the better C of 3/10/30): the mirror images, or 4-8 random crops /
# zooms per photo (0.35-1 or 0.7-1 of the area), as extra training examples (breeds 0.8885, mood
# 0.5689-0.6168), or the mirror averaged with the photo; C=1..300 (mood with `stage5_cat` at C=100:
# 0.6507 here, but 0.6200 on the other seeds' folds against C=10's 0.6271); other poolings added to the
# reads without `stage5_cat` (mood 0.5908-0.6307: stage 4's and stage 6's pools, max and GeM (p=3)
# pools of the last map and of stage 5, a 2x2 grid of stage 5, the 1152-channel expansions of stages 5
# and 6 pooled either way) or with it (mood 0.6108-0.6367, breeds 0.8913-0.8984: those, stage 5's
# earlier blocks over the cat, stage 5 over each ImageNet cat class's own map, the cat weights
# themselves; the best, stage 5's expansion over the cat, +0.002 for 15 kB); the cat weights raised to a
# power of 0.25-2 (mood 0.6168-0.6327); powers 0.3, 0.4, 0.6 and 1 (mood 0.6068-0.6467); centred,
# standardised or PCA-whitened features; the blocks weighed unequally; class-balanced weights (mood
# 0.6387); the `domestic` photos weighing 0.25-2 or left out (breeds 0.8828-0.8894). A Lite2 teacher
# (fp32, 260 px) is no better alone (breeds 0.8894, mood 0.5828); with Lite0's features 0.9008 / 0.6287,
# but that pair distilled into the Lite0 head (soft labels of the training photos and of 2,000 more
# PetImages cats) gives 0.8913 / 0.6108 at best.
CANDIDATES = {"breeds": (("embedding", "pooled", "stage5", "stage5_cat"), ("embedding", "pooled", "stage5")),
              "mood": (("pooled", "stage5", "stage5_cat"), ("pooled", "stage5"))}
C_GRID = (3.0, 10.0)
POWERS = (heads.ROOT, 0.75)
FLIPS = (False,)
CONFIDENT_KEEP = 0.98  # the cut on the top breed's p may cost this little of the pedigree photos named right
TOP = 5


@dataclass(frozen=True)
class Task:
    """One head: its output name, its labels and the photos it is fitted on (labels among `labels`)."""

    output: str
    labels: tuple[str, ...]
    photos: list[attributes.Photo]

    @property
    def targets(self) -> np.ndarray:
        return np.array([self.labels.index(photo.label) for photo in self.photos])


@dataclass(frozen=True)
class Recipe:
    """What a head reads, the power it raises them to, whether the mirror images are extra training examples, and C."""

    reads: tuple[str, ...]
    power: float
    flips: bool
    c: float

    @property
    def name(self) -> str:
        return (f"{' + '.join(self.reads)} ^{self.power:g}, {'photo and mirror' if self.flips else 'photo only'}, "
                f"C={self.c:g}")


def tasks(datasets: Path, non_pedigree: int | None = attributes.NON_PEDIGREE_PHOTOS, limit: int | None = None) -> list[Task]:
    """The breed task (12 breeds + domestic) and the mood task; `limit`: that many photos per label (tiny runs)."""
    breeds = _limited(attributes.breed_photos(datasets / "breeds"), limit)
    domestic = _limited(attributes.non_pedigree_photos(datasets / "catnotcat", non_pedigree), limit)
    moods = _limited(attributes.mood_photos(datasets / "mood"), limit)
    return [Task("breeds", (*sorted({p.label for p in breeds}), attributes.DOMESTIC), breeds + domestic),
            Task("mood", tuple(sorted({p.label for p in moods})), moods)]


def _limited(photos: list[attributes.Photo], limit: int | None) -> list[attributes.Photo]:
    if limit is None:
        return photos
    kept: dict[str, list[attributes.Photo]] = {}
    for photo in photos:
        if len(kept.setdefault(photo.label, [])) < limit:
            kept[photo.label].append(photo)
    return [photo for members in kept.values() for photo in members]


def near_duplicate_groups(photos: list[attributes.Photo], features: dict[str, np.ndarray]) -> np.ndarray:
    """A group id per photo: one source, or features near-identical to another photo's, share it."""
    x = heads.normalised([features[name] for name in NEAR_DUPLICATE_READS]) / np.sqrt(len(NEAR_DUPLICATE_READS))
    parent = np.arange(len(photos))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, photo in enumerate(photos):
        parent[root(i)] = root(first.setdefault(photo.source, i))
    for i, j in zip(*np.nonzero(np.triu(x @ x.T >= NEAR_DUPLICATE, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    return np.array([root(i) for i in range(len(photos))])


def folds(y: np.ndarray, groups: np.ndarray, k: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold 0..k-1 per photo: groups whole, labels stratified (scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.zeros(len(y), dtype=np.int64)
    for index, (_, held) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups)):
        fold[held] = index
    return fold


def fit_head(task: Task, features: dict[str, np.ndarray], rows: np.ndarray, recipe: Recipe) -> heads.Head:
    """Multinomial logistic regression (lbfgs) on the normalised poolings of `rows`, and their mirrors."""
    from sklearn.linear_model import LogisticRegression

    x = heads.normalised([features[name][rows] for name in recipe.reads], recipe.power)
    y = task.targets[rows]
    if recipe.flips:
        x = np.concatenate([x, heads.normalised([features[f"{name}-flip"][rows] for name in recipe.reads], recipe.power)])
        y = np.concatenate([y, y])
    model = LogisticRegression(C=recipe.c, max_iter=5000).fit(x, y)
    weights, bias = np.zeros((x.shape[1], len(task.labels))), np.zeros(len(task.labels))
    weights[:, model.classes_], bias[model.classes_] = model.coef_.T, model.intercept_
    bias[np.setdiff1d(np.arange(len(task.labels)), model.classes_)] = -1e4  # a label no training photo has
    return heads.Head(task.output, task.labels, recipe.reads, weights, bias, recipe.power)


def out_of_fold(task: Task, features: dict[str, np.ndarray], fold: np.ndarray, recipe: Recipe) -> np.ndarray:
    """(N, K) probabilities, each photo's from the head fitted without its fold."""
    p = np.zeros((len(task.photos), len(task.labels)))
    for k in range(int(fold.max()) + 1):
        held = fold == k
        p[held] = fit_head(task, features, np.flatnonzero(~held), recipe).probabilities(
            {name: features[name][held] for name in recipe.reads})
    return p


def scores(task: Task, p: np.ndarray, confident: float | None = None) -> dict:
    """Over the photos of the task's own labels (not `domestic`): top-1, top-5 and macro F1 of the top breeds
    or moods (for breeds, `domestic` set aside, as serve lists the five likeliest breeds), the confusion
    matrix of the top output label; for breeds also what the naming rule does with pedigree and non-pedigree
    photos."""
    from sklearn.metrics import f1_score

    y = task.targets
    domestic = task.labels.index(attributes.DOMESTIC) if attributes.DOMESTIC in task.labels else None
    own = y != domestic if domestic is not None else np.ones(len(y), bool)
    labelled = [i for i in range(len(task.labels)) if i != domestic]
    listed = np.array(labelled)[np.argsort(-p[:, labelled], axis=1)]  # the labels in order, whatever p(domestic) is
    first = listed[:, 0]
    ranked = np.argsort(-p, axis=1)
    result = {"n": int(own.sum()), "top1": float(np.mean(first[own] == y[own])),
              f"top{TOP}": float(np.mean((listed[own, :TOP] == y[own, None]).any(axis=1))),
              "macro_f1": float(f1_score(y[own], first[own], labels=labelled, average="macro", zero_division=0)),
              "confusion": _confusion(y[own], ranked[own, 0], len(task.labels)).tolist()}
    if domestic is not None and confident is not None:
        named = (ranked[:, 0] != domestic) & (p.max(axis=1) >= confident)
        result["at_confident"] = {
            "confident": confident,
            "pedigree_named": float(np.mean(named[own])),
            "pedigree_named_correctly": float(np.mean(named[own] & (ranked[own, 0] == y[own]))),
            "precision_of_named": float(np.mean(ranked[own & named, 0] == y[own & named])) if (own & named).any() else 0.0,
            "non_pedigree_n": int((~own).sum()),
            "non_pedigree_named": float(np.mean(named[~own])),
        }
    return result


def _confusion(y: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    return matrix


def choose_confident(task: Task, p: np.ndarray, keep: float = CONFIDENT_KEEP) -> float:
    """The highest cut on the top label's p that still names `keep` of the pedigree photos the head
    names right without a cut (a higher cut names fewer non-pedigree cats, and fewer pedigree ones)."""
    y = task.targets
    domestic = task.labels.index(attributes.DOMESTIC)
    top, best = np.argmax(p, axis=1), p.max(axis=1)
    right = np.sort(best[(y != domestic) & (top == y)])[::-1]  # the correct names, most sure first
    if not len(right):
        return 0.0
    return float(np.floor(right[int(np.ceil(keep * len(right))) - 1] * 1e4) / 1e4)  # rounded down: that photo stays named


@dataclass
class Fitted:
    head: heads.Head
    recipe: Recipe
    section: dict


def fit_task(task: Task, features: dict[str, np.ndarray], recipes: list[Recipe], seed: int = SEED,
             k: int = FOLDS, log=print) -> Fitted:
    """Score every recipe out of fold, keep the best (breeds: macro F1, mood: top-1), refit it on all."""
    groups = near_duplicate_groups(task.photos, features)
    fold = folds(task.targets, groups, k, seed)
    log(f"{task.output}: {len(task.photos)} photos, {len(set(groups.tolist()))} near-duplicate groups, {k} folds")
    comparison, best, best_p = [], None, None
    key = "macro_f1" if task.output == "breeds" else "top1"
    for recipe in recipes:
        p = out_of_fold(task, features, fold, recipe)
        row = scores(task, p)
        log(f"  {recipe.name:<44} top-1 {row['top1']:.4f}  top-{TOP} {row[f'top{TOP}']:.4f}  macro F1 {row['macro_f1']:.4f}")
        comparison.append({"recipe": recipe.name, "top1": row["top1"], f"top{TOP}": row[f"top{TOP}"],
                           "macro_f1": row["macro_f1"]})
        if best is None or (row[key], row["top1"]) > (best[1][key], best[1]["top1"]):
            best, best_p = (recipe, row), p
    assert best is not None and best_p is not None
    recipe = best[0]
    confident = choose_confident(task, best_p) if attributes.DOMESTIC in task.labels else None
    metrics = scores(task, best_p, confident)
    head = fit_head(task, features, np.arange(len(task.photos)), recipe)
    section = {"output": task.output, "labels": list(task.labels),
               **({"confident": confident} if confident is not None else {}),
               "reads": list(recipe.reads), "power": recipe.power, "metrics": {"out_of_fold": metrics},
               "validation": {"method": f"{k} stratified folds, near-duplicate photos (cosine >= {NEAR_DUPLICATE} of the "
                                        "normalised poolings) and one source's photos kept in one fold",
                              "folds": k, "seed": seed, "photos": len(task.photos),
                              "groups": len(set(groups.tolist())), "chosen": recipe.name,
                              "recipe": {"reads": list(recipe.reads), "power": recipe.power, "flips": recipe.flips,
                                         "c": recipe.c},
                              "chosen_by": f"out-of-fold {key.replace('_', ' ')}", "comparison": comparison}}
    log(f"  chosen: {recipe.name}: " + summary(task.output, section))
    return Fitted(head, recipe, section)


def summary(output: str, section: dict) -> str:
    """One line of a head's out-of-fold figures (fit, the card and evaluate print the same)."""
    m = section["metrics"]["out_of_fold"]
    line = f"top-1 {m['top1']:.4f}, top-{TOP} {m[f'top{TOP}']:.4f}, macro F1 {m['macro_f1']:.4f} (n={m['n']})"
    rule = m.get("at_confident")
    if rule:
        line += (f"; named where p >= {rule['confident']:.4f} and not domestic: {rule['pedigree_named']:.1%} of pedigree "
                 f"photos ({rule['pedigree_named_correctly']:.1%} correctly, precision {rule['precision_of_named']:.4f}), "
                 f"{rule['non_pedigree_named']:.1%} of {rule['non_pedigree_n']} non-pedigree cats")
    return line


def recipes(output: str, c_grid: tuple[float, ...] = C_GRID, flips: tuple[bool, ...] = FLIPS) -> list[Recipe]:
    return [Recipe(reads, power, flip, c) for reads in CANDIDATES[output] for power in POWERS for flip in flips
            for c in c_grid]


def fp32_twin(model: Path) -> Path:
    """The float32 graph kept beside the int8 one (models/notcat-lite0-fp32.onnx)."""
    return model.with_name(f"{model.stem}-fp32.onnx")


def without_heads(model: onnx.ModelProto, outputs: tuple[str, ...] = ("breeds", "mood")) -> onnx.ModelProto:
    """`model` as it was before heads named `outputs` were appended (a refit replaces them)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for output in [entry for entry in result.graph.output if entry.name in outputs]:
        result.graph.output.remove(output)
    heads.drop_unused(result.graph)
    return result


def run(model: Path, datasets: Path, workdir: Path, fp32: Path | None = None, limit: int | None = None,
        non_pedigree: int | None = attributes.NON_PEDIGREE_PHOTOS, c_grid: tuple[float, ...] = C_GRID,
        command: str = "") -> dict:
    """Fit both heads on the int8 `model`'s own features, append them to it and to its `fp32` twin (both
    rewritten in place, their cat probabilities unchanged), and write the card's `attributes` section
    and the confusion-matrix plots beside the card."""
    started = time.time()
    fp32 = fp32_twin(model) if fp32 is None else fp32
    base = without_heads(onnx.load(str(model)))
    stripped = Path(workdir) / "attributes-base.onnx"  # features are read from the graph without heads
    stripped.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(base, str(stripped))
    fitted: list[Fitted] = []
    size = _input_size(model)
    chosen = tasks(datasets, non_pedigree, limit)
    for task in chosen:
        features = attributes.features(stripped, task.photos, workdir, size)
        fitted.append(fit_task(task, features, recipes(task.output, c_grid)))
        agreement = _int8_agreement(fitted[-1].head, features)
        fitted[-1].section["int8_fp32_top1_agreement"] = agreement
        print(f"  int8 weights: top-1 agreement with float32 weights {agreement:.4f} on {len(task.photos)} photos")
    heads_ = [f.head for f in fitted]
    sample = np.stack([decode(photo.path, size) for photo in chosen[0].photos[::max(1, len(chosen[0].photos) // 16)]])
    _install(stripped, model, heads_, int8=True, check=sample)
    if fp32.exists():
        _install(fp32, fp32, heads_, int8=False, check=sample)
    plots = {f.head.output: _confusion_plot(f, model.parent / f"{model.stem}-eval" / f"{f.head.output}-confusion.png")
             for f in fitted}
    card = json.loads(card_path(model).read_text(encoding="utf-8"))
    card["version"] = card_module.VERSION
    card["sha256"], card["size_bytes"] = sha256_file(model), model.stat().st_size
    card["extra_outputs"] = {**card["extra_outputs"], **EXTRA_OUTPUTS}
    card["attributes"] = {f.head.output: {**f.section, "plot": str(plots[f.head.output].relative_to(model.parent))}
                          for f in fitted}
    card["attributes"]["training"] = {"command": command, "non_pedigree_photos": non_pedigree, "limit": limit,
                                      "c_grid": list(c_grid), "fit_wall_seconds": round(time.time() - started),
                                      "weights": "int8 per class in the int8 file, float32 in the fp32 file"}
    card["evaluation_plots"] = sorted({*card.get("evaluation_plots", []),
                                       *(str(p.relative_to(model.parent)) for p in plots.values())})
    card_path(model).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {model} ({model.stat().st_size:,} bytes), {fp32 if fp32.exists() else '(no fp32 twin)'}, "
          f"{card_path(model)} and {', '.join(map(str, plots.values()))}")
    return card["attributes"]


def _input_size(model: Path) -> int:
    """The card's input size (read directly: the card's sha256 is the old file's while heads are replaced)."""
    return int(json.loads(card_path(model).read_text(encoding="utf-8"))["input"]["size"])


EXTRA_OUTPUTS = {
    "breeds": "softmax over attributes.breeds.labels (12 breeds and domestic), float32 (N, 13); a breed is named only "
              "where it is the top label with p >= attributes.breeds.confident",
    "mood": "softmax over attributes.mood.labels (7 moods read from one photo: a guess), float32 (N, 7)",
}


def _int8_agreement(head: heads.Head, features: dict[str, np.ndarray]) -> float:
    """Share of photos whose top label is the same with the int8-stored weights as with float32 ones."""
    x = heads.normalised([features[name] for name in head.reads], head.power)
    return float(np.mean(np.argmax(x @ heads.stored_weights(head, True) + head.bias, axis=1)
                         == np.argmax(x @ head.weights + head.bias, axis=1)))


def _install(source: Path, target: Path, fitted: list[heads.Head], int8: bool, check: np.ndarray) -> None:
    """Write `source` (heads stripped) with `fitted` appended to `target`, after checking on real images
    that its probabilities are bit for bit those of the graph without heads."""
    from training import runtime

    base = without_heads(onnx.load(str(source)))
    model = heads.append(base, fitted, int8)
    before = runtime.session(base.SerializeToString()).run(["probabilities"], {"image": check})[0]
    after = runtime.session(model.SerializeToString()).run(["probabilities"], {"image": check})[0]
    if not np.array_equal(before, after):
        raise RuntimeError(f"appending the heads changed {target}'s probabilities")
    partial = target.with_suffix(".partial.onnx")
    onnx.save(model, str(partial))
    partial.replace(target)


def _confusion_plot(fitted: Fitted, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = fitted.section["metrics"]["out_of_fold"]
    labels = list(fitted.head.labels)
    matrix = np.array(m["confusion"])
    if attributes.DOMESTIC in labels:  # rows of pedigree photos only: keep the domestic column
        matrix = matrix[:-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(labels), 1.0 + 0.45 * len(matrix)))
    ax.imshow(matrix, cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        if v:
            ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                    color="black" if v < matrix.max() / 2 else "white")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix)), labels[:len(matrix)], fontsize=8)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    ax.set_title(f"{fitted.head.output}, out of fold: top-1 {m['top1']:.3f}, macro F1 {m['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(model: Path, datasets: Path, workdir: Path) -> dict:
    """The card's out-of-fold figures recomputed from the model file: the same photos (as the card's
    training section chose them), features read from the model itself, the same folds and recipe."""
    card = json.loads(card_path(model).read_text(encoding="utf-8"))
    if "attributes" not in card:
        raise SystemExit(f"{model}'s card has no attributes: fit them with `python -m training attributes`")
    section = card["attributes"]
    config = section["training"]
    base = Path(workdir) / "attributes-base.onnx"
    base.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(without_heads(onnx.load(str(model))), str(base))
    results = {}
    for task in tasks(datasets, config["non_pedigree_photos"], config["limit"]):
        stored = section[task.output]
        validation = stored["validation"]
        raw = validation["recipe"]
        recipe = Recipe(tuple(raw["reads"]), raw["power"], raw["flips"], raw["c"])
        features = attributes.features(base, task.photos, workdir, _input_size(model))
        fold = folds(task.targets, near_duplicate_groups(task.photos, features), validation["folds"], validation["seed"])
        p = out_of_fold(task, features, fold, recipe)
        results[task.output] = {"metrics": {"out_of_fold": scores(task, p, stored.get("confident"))}}
        print(f"{task.output} ({recipe.name}), out of fold: {summary(task.output, results[task.output])}")
        print(f"  card:                     {summary(task.output, stored)}")
    return results
