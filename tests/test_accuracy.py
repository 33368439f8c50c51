"""The shipped model's accuracy, guarded in CI: a fixed slice of the pool's out-of-source photos
(sources the model's figures are judged on, training/splits.py), sorted by the installed
`notcat-sort` as a user runs it (scan, decode, EXIF fast path, model, threshold), must score at
least the model card's out-of-source figures, less what chance alone takes off on a slice this
size. A model, preprocessing or decision regression turns CI red; a refit needs no change here,
as the floors are read from the card.

The card's figures are out-of-fold (each photo predicted by a head fitted without its source);
the shipped head has seen these photos, so it should do at least as well: the floor is
conservative, and a miss means something broke, not bad luck."""

from __future__ import annotations

import json
import math

from shared_data import SHARED, need

from notcat_sort.model import card_path, default_model_path
from training.data import load_items
from training.splits import is_out_of_source

POOL = SHARED / "datasets" / "catnotcat"
CAT_STEP, NOT_CAT_STEP = 4, 21  # every 4th out-of-source cat, every 21st not-cat: about 150 and 250
Z = 3.0  # standard errors of slack: a sound model falls below a floor by chance about once in 700 runs


def the_slice() -> list:
    """The fixed slice: out-of-source photos, in path order, every CAT_STEP-th cat and NOT_CAT_STEP-th not-cat."""
    photos = sorted((item for item in load_items(need(POOL)) if is_out_of_source(item)), key=lambda item: str(item.path))
    cats = [item for item in photos if item.label == "cat"]
    not_cats = [item for item in photos if item.label == "not-cat"]
    return cats[::CAT_STEP] + not_cats[::NOT_CAT_STEP]


def floor(card_value: float, n: int) -> float:
    """The card's proportion less Z binomial standard errors for a sample of `n`."""
    return card_value - Z * math.sqrt(card_value * (1 - card_value) / max(n, 1))


def test_the_shipped_model_scores_the_cards_out_of_source_figures_on_a_fixed_slice(run_cli) -> None:
    items = the_slice()
    card = json.loads(card_path(default_model_path()).read_text(encoding="utf-8"))
    figures = card["metrics"]["out_of_source"]["int8"]["overall"]

    result = run_cli(*[item.path for item in items], "--report", "-", "--no-cache", timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    labels = {row["path"]: row["label"] for row in result.rows()}
    truth = {str(item.path): item.label == "cat" for item in items}
    assert set(labels) == set(truth) and "error" not in labels.values()
    said_cat = {path: labels[path] == "cat" for path in truth}
    cats = sum(truth.values())
    tp = sum(truth[path] and said_cat[path] for path in truth)
    called = sum(said_cat.values())
    measured = {"accuracy": sum(truth[p] == said_cat[p] for p in truth) / len(truth),
                "recall": tp / cats, "precision": tp / called if called else 0.0}
    sizes = {"accuracy": len(truth), "recall": cats, "precision": called}
    below = {name: (round(value, 4), round(floor(figures[name], sizes[name]), 4), round(figures[name], 4))
             for name, value in measured.items() if value < floor(figures[name], sizes[name])}
    assert not below, f"below the card's out-of-source figures (measured, floor, card) on {len(truth)} photos: {below}"
