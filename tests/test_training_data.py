"""Leave-sources-out folds, calibration and synthetic renders: the data side of training, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from shared_data import requires

from training import calibration, data, splits, synthetic

POOL = Path(__file__).parents[1] / ".." / "shared" / "datasets" / "catnotcat"


def _items() -> list[data.Item]:
    """In-source groups, out-of-source groups, and imagenet-sample images of a few classes (two each)."""
    items = [data.Item(label="cat" if g in ("petimages-cat", "campus-cats", "oxford-full-cat") else "not-cat",
                       group=g, path=Path(f"{g}-{i}.jpg"))
             for g, n in (("petimages-cat", 40), ("petimages-dog", 30), ("campus-cats", 12), ("oxford-full-cat", 9),
                          ("lions", 15), ("food", 20), ("rooms", 7), ("streets", 11)) for i in range(n)]
    for name in ("n02123045_tabby", "n02127052_lynx", "n02325366_wood_rabbit", "n07747607_orange", "n03793489_mouse"):
        items += [data.Item(label="cat" if "tabby" in name else "not-cat", group="imagenet-sample",
                            path=Path(f"imagenet-sample-{name}.jpg"))] * 2
    return items


def test_leave_sources_out_folds_never_put_one_source_on_both_sides() -> None:
    items = _items()
    for seed in range(5):
        fold = splits.folds(items, seed, k=4)
        assert np.array_equal(fold, splits.folds(items, seed, k=4))  # seeded
        for k in range(4):
            held = {splits.source(item) for item, f in zip(items, fold, strict=True) if f == k and splits.is_out_of_source(item)}
            trained = {splits.source(item) for item, f in zip(items, fold, strict=True) if f != k}
            assert held and not held & trained
        # the in-source groups are dealt image by image: every fold has some
        assert all((fold[[i for i, item in enumerate(items) if item.group == "petimages-cat"]] == k).any()
                   for k in range(4))
        # the two cat sources land in different folds, so a model always trains on some real-photo cats
        cat_folds = {fold[i] for i, item in enumerate(items) if item.group in ("campus-cats", "oxford-full-cat")}
        assert len(cat_folds) == 2
    assert splits.source(items[-1]) == "imagenet-sample:n03793489_mouse"
    assert not np.array_equal(splits.folds(items, 0), splits.folds(items, 1))


def test_temperature_scaling_lowers_the_calibration_error() -> None:
    """An overconfident model (logits twice what they should be) is put right by T close to 2."""
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, size=4000)
    y = rng.random(4000) < calibration.sigmoid(true_logit)
    overconfident = 2 * true_logit
    temperature = calibration.fit_temperature(overconfident, y)
    before = calibration.expected_calibration_error(calibration.sigmoid(overconfident), y)
    after = calibration.expected_calibration_error(calibration.sigmoid(overconfident / temperature), y)
    assert 1.6 < temperature < 2.5
    assert after < 0.5 * before
    assert calibration.nll(overconfident / temperature, y) < calibration.nll(overconfident, y)


def test_synthetic_renders_are_deterministic_and_labelled_not_cat() -> None:
    for index in range(len(synthetic.KINDS)):
        first, fmt = synthetic.render(index)
        again, _ = synthetic.render(index)
        assert fmt in ("PNG", "JPEG")
        assert np.array_equal(np.asarray(first), np.asarray(again))
        item = synthetic.item(index)
        assert item.label == "not-cat" and item.group == f"synthetic-{synthetic.KINDS[index]}"
        assert data.runtime_batch([item], 160).shape == (1, 160, 160, 3)
    assert not np.array_equal(np.asarray(synthetic.render(0)[0]), np.asarray(synthetic.render(4)[0]))


@requires(POOL / "manifest.csv")
def test_manifest_and_folder_layouts(tmp_path: Path) -> None:
    items = data.load_items(POOL)
    assert {item.label for item in items} == {"cat", "not-cat"}
    assert data.layout(tmp_path) == "unlabelled"
    for label in data.LABELS:
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.jpg").write_bytes((POOL / items[0].path.relative_to(POOL)).read_bytes())
    folder = data.load_items(tmp_path)
    assert [(i.label, i.group) for i in folder] == [("not-cat", "not-cat"), ("cat", "cat")]
