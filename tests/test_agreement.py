"""On photos the model never saw in training, `notcat-sort` labels every file as the training
code's own `python -m training evaluate` does: the runtime feeds the model the same pixels.

`python -m training evaluate --model M --data DIR` on an unlabelled DIR prints one line per
file, `path<TAB>p_cat<TAB>label` (label `error: ...` when it cannot be decoded).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from prerequisites import need_module, unavailable

from notcat_sort.model import default_model_path

need_module("torch", "the train extra: pip install -e '.[train]'")
REPO = Path(__file__).resolve().parents[1]


def unseen_photos(shared: Path, folder: Path) -> Path:
    """Camera JPEGs and one photo in every EXIF orientation: none of them is in datasets/catnotcat."""
    samples = shared / "samples"
    photos = sorted((samples / "camera").glob("*.jpg")) + sorted((samples / "orientation").glob("*.jpg"))
    if len(photos) < 20:
        unavailable("../shared/samples has too few photos")
    for photo in photos:
        target = folder / photo.parent.name / photo.name  # nested, and only images: evaluate takes every file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target)
    return folder


def evaluate_predictions(model: Path, folder: Path) -> dict[Path, tuple[float | None, str]]:
    done = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model), "--data", str(folder)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    predictions = {}
    for line in done.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] != "path":
            p_cat = float(fields[1]) if fields[1] else None
            predictions[Path(fields[0]).resolve()] = (p_cat, "error" if fields[2].startswith("error") else fields[2])
    return predictions


def test_sort_labels_agree_with_training_evaluate(run_cli, tmp_path: Path, shared: Path) -> None:
    model = default_model_path()
    folder = unseen_photos(shared, tmp_path / "unseen")

    expected = evaluate_predictions(model, folder)
    # --full-decode: the same pixels as evaluate; the EXIF-thumbnail fast path is tested in test_thumbnails.py
    result = run_cli(folder, "--model", model, "--report", "-", "-j", "2", "--no-cache", "--full-decode")

    rows = {Path(row["path"]).resolve(): row for row in result.rows()}
    assert len(expected) == len(list(folder.rglob("*.jpg"))) and rows.keys() == expected.keys()
    for path, (p_cat, label) in expected.items():
        row = rows[path]
        assert row["label"] == label, (path, row, p_cat)
        if p_cat is not None:
            assert abs(float(row["p_cat"]) - p_cat) <= 2e-4, (path, row["p_cat"], p_cat)
    assert result.returncode == (1 if any(label == "error" for _, label in expected.values()) else 0)
