"""Small-cat composites (training/composites.py) and `python -m training small-cats`: composites of one
fold's sources only, pasted cats and animals made the same way, and the command's figures as evaluate's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED, requires

from notcat_sort.content import sha256_file
from notcat_sort.model import card_path, default_model_path
from training import composites, metrics, splits
from training.data import load_items
from training.evaluate import fit_folds, split_predictions

REPO = Path(__file__).resolve().parents[1]
DATASET = SHARED / "datasets" / "catnotcat"

pytestmark = requires(DATASET)


@pytest.fixture(scope="module")
def planned() -> tuple[list, dict[str, int]]:
    items, fold = fit_folds(default_model_path(), load_items(DATASET))
    fold_of_source = {splits.source(item): int(k) for item, k in zip(items, fold, strict=True)
                      if splits.is_out_of_source(item)}
    return composites.plan(items, fold, per_fold=40, seed=3), fold_of_source


def test_composites_never_put_a_source_on_both_sides_of_a_fold(planned):
    made, fold_of_source = planned
    assert {c.label for c in made} == {"cat", "not-cat"}
    assert len({c.fold for c in made if c.label == "cat"}) >= 2  # the cat sources are dealt to several folds
    for composite in made:
        # The paste and the scene are both out-of-source photos of the composite's own fold: the head
        # validated on it was fitted without either.
        assert fold_of_source[splits.source(composite.paste)] == composite.fold
        assert fold_of_source[splits.source(composite.scene)] == composite.fold
        assert composites.is_scene(composite.scene) and composite.scene.label == "not-cat"
        assert composite.label == "cat" or composites.is_animal(composite.paste)


def test_a_cat_and_an_animal_are_pasted_the_same_way_at_their_share_of_the_frame(planned):
    made, _ = planned
    for composite in (next(c for c in made if c.label == "cat"), next(c for c in made if c.label == "not-cat")):
        image, box = composite.render()
        scene = np.asarray(composites._open(composite.scene), dtype=np.float32)
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.shape == scene.shape
        area = (box.right - box.left) * (box.bottom - box.top)
        assert composites.AREA[0] * 0.8 <= area <= composites.AREA[1] * 1.2
        height, width = scene.shape[:2]
        inside = np.zeros((height, width), dtype=bool)
        inside[round(box.top * height):round(box.bottom * height), round(box.left * width):round(box.right * width)] = True
        difference = np.abs(pixels - scene).mean(axis=2)
        assert difference[~inside].mean() < composites.NOISE[1]  # outside the paste: the scene, plus noise
        assert difference[inside].mean() > 3 * difference[~inside].mean()  # inside: the pasted photo
        assert composite.encoded()[:2] == b"\xff\xd8"  # a JPEG, as a phone writes it


def test_the_command_writes_its_figures_into_the_card_and_nothing_else(model_copy):
    before = json.loads(card_path(model_copy).read_text())
    before.pop("small_cats", None)
    model_sha = sha256_file(model_copy)
    done = subprocess.run([sys.executable, "-m", "training", "small-cats", "--model", str(model_copy),
                           "--data", str(DATASET), "--limit", "40", "--composites", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = json.loads(card_path(model_copy).read_text())
    entry = after.pop("small_cats")
    assert after == before and sha256_file(model_copy) == model_sha
    assert [row["variant"] for row in entry["variants"]] == [line.split("  ")[0] for line in done.stdout.splitlines()[1:4]]
    assert entry["photos"] == 40 and entry["composites"]["cats"] > 0 and entry["composites"]["animals"] > 0
    # The shipped variant's figures are evaluate --split out-of-source's on the same photos.
    y, p, _ = split_predictions(model_copy, load_items(DATASET), "out-of-source", limit=40)
    expected = metrics.binary(y, p >= before["threshold"])
    shipped = entry["variants"][0]
    assert shipped["accuracy"] == pytest.approx(expected["accuracy"]) and shipped["f1"] == pytest.approx(expected["f1"])
    # A closer look only adds cats: never fewer found, in photos or composites.
    for row in entry["variants"][1:]:
        assert row["recall"] >= shipped["recall"] and row["small_cat_recall"] >= shipped["small_cat_recall"]
