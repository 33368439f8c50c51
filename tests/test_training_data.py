"""Split, synthetic renders and augmentation: the data side of training, without torch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training import data, synthetic

POOL = Path(__file__).parents[1] / ".." / "shared" / "datasets" / "catnotcat"


def _items() -> list[data.Item]:
    return [data.Item(label="cat" if g == "c" else "not-cat", group=g, path=Path(f"{g}{i}.jpg"))
            for g, n in (("c", 50), ("d", 20), ("tiny", 3)) for i in range(n)]


def test_split_is_seeded_and_stratified_by_group() -> None:
    train, val = data.split(_items(), seed=0)
    assert data.split(_items(), seed=0) == (train, val)
    assert data.split(_items(), seed=1)[1] != val
    assert Counter(item.group for item in val) == {"c": 10, "d": 4, "tiny": 1}
    assert not set(train) & set(val)


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


def test_augment_gives_runtime_shaped_uint8() -> None:
    augment = data.Augment(160, seed=0)
    source = np.random.default_rng(0).integers(0, 256, size=(120, 256, 3), dtype=np.uint8)
    outputs = [augment(source) for _ in range(20)]
    assert all(o.shape == (160, 160, 3) and o.dtype == np.uint8 for o in outputs)
    assert len({o.tobytes() for o in outputs}) == 20


def test_crop_scale_one_keeps_the_whole_image_in_frame() -> None:
    """A red left half and a blue right half: any crop would lose some columns of one colour."""
    source = np.zeros((120, 240, 3), np.uint8)
    source[:, :120, 0] = source[:, 120:, 2] = 255
    whole, cropping = data.Augment(160, seed=0, crop_scale=1.0), data.Augment(160, seed=0)
    for augment, always_whole in ((whole, True), (cropping, False)):
        halves = []
        for _ in range(20):
            out = augment(source).astype(int)
            flipped = out[:, 0, 2] > out[:, 0, 0]
            red = out[:, ::-1] if flipped.mean() > 0.5 else out
            halves.append(int(np.sum(red[80, :, 0] > red[80, :, 2])))  # columns redder than blue
        assert all(abs(count - 80) <= 2 for count in halves) == always_whole


@pytest.mark.skipif(not (POOL / "manifest.csv").is_file(), reason="training data not found")
def test_manifest_and_folder_layouts(tmp_path: Path) -> None:
    items = data.load_items(POOL)
    assert {item.label for item in items} == {"cat", "not-cat"}
    assert data.layout(tmp_path) == "unlabelled"
    for label in data.LABELS:
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.jpg").write_bytes((POOL / items[0].path.relative_to(POOL)).read_bytes())
    folder = data.load_items(tmp_path)
    assert [(i.label, i.group) for i in folder] == [("not-cat", "not-cat"), ("cat", "cat")]
