"""`python -m training identity`: trains and evaluates the identity head on campus-cats, laid out
as NekoNet does (one folder per cat), and writes a head the runtime reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prerequisites import need_module, need_that

from notcat_sort.cats import head_path, load_head
from notcat_sort.model import card_path, default_model_path, load_card

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[1]


def test_identity_trains_evaluates_and_writes_a_head_for_the_runtime(shared: Path, tmp_path: Path) -> None:
    need_module("torch", "the train extra: pip install -e '.[train]'")
    model = Path(os.environ.get("NOTCAT_TEST_MODEL") or default_model_path())
    need_that(load_card(model).has_embedding, f"{model} has no embedding output")
    data = tmp_path / "cats"
    for photo in sorted((shared / "datasets" / "catnotcat" / "cat").glob("campus-cats-*")):
        folder = data / photo.name[len("campus-cats-"):][:10]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo)
    head = tmp_path / "head.npz"
    done = subprocess.run([sys.executable, "-m", "training", "identity", "--data", str(data), "--model", str(model),
                           "--out", str(head), "--steps", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "219 photos of 32 cats" in done.stdout
    for variant in ("raw embedding", "identity head"):
        line = re.search(rf"{variant}: 1-NN accuracy across sessions ([0-9.]+) .*pairwise precision ([0-9.]+), "
                         rf"recall ([0-9.]+)", done.stdout)
        assert line, done.stdout
        assert all(0.0 <= float(value) <= 1.0 for value in line.groups())
    assert float(re.search(r"raw embedding: 1-NN accuracy across sessions ([0-9.]+)", done.stdout).group(1)) > 0.3
    stored = np.load(head)
    assert stored["matrix"].shape == (1280, 128) and str(stored["model_sha256"]) == load_card(model).sha256
    # The runtime reads the head from beside the model, for that very model file only.
    copy = tmp_path / "model" / model.name
    copy.parent.mkdir()
    for source, target in ((model, copy), (card_path(model), card_path(copy)), (head, head_path(copy))):
        shutil.copyfile(source, target)
    runtime = load_head(copy, load_card(copy).sha256)
    assert runtime.matrix is not None and runtime.threshold == pytest.approx(float(stored["threshold"]))
    vectors = runtime.vectors(np.ones((2, 1280), np.float32))
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert load_head(copy, "another model's sha256").matrix is None
