"""The --uncertain band (`training.metrics.uncertain_band`, written into the card by `python -m
training uncertain` and by fit): the narrowest band around the threshold that leaves the photos
decided outside it with the target cat precision and recall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import SHARED, requires

from notcat_sort.content import sha256_file
from notcat_sort.model import card_path, load_card
from training.data import load_items
from training.evaluate import split_predictions
from training.metrics import uncertain_band

REPO = Path(__file__).resolve().parents[1]
DATASET = SHARED / "datasets" / "catnotcat"
THRESHOLD = 0.6


def outside_counts(y: np.ndarray, p: np.ndarray, low: float, high: float) -> tuple[int, int, int]:
    """(cats above the band, not-cats above it, cats below it)."""
    return int(np.sum(y & (p > high))), int(np.sum(~y & (p > high))), int(np.sum(y & (p < low)))


def meets(y: np.ndarray, p: np.ndarray, low: float, high: float, target: float) -> bool:
    cats, others, lost = outside_counts(y, p, low, high)
    precise = cats + others == 0 or cats / (cats + others) >= target
    return precise and lost <= cats * (1 - target) / target + 1e-9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=60),
       st.sampled_from([0.9, 0.95, 0.98, 0.99]))
def test_the_band_holds_the_threshold_meets_the_target_and_is_the_narrowest(pairs, target):
    y = np.array([cat for cat, _ in pairs])
    p = np.round(np.array([value for _, value in pairs]), 4)  # the band is rounded to 4 decimals
    band = uncertain_band(y, p, THRESHOLD, target)
    assert band.low <= THRESHOLD <= band.high and band.photos == len(p)
    assert meets(y, p, band.low, band.high, target)
    # Narrower at either end (the next cut that decides one more photo) misses the target.
    higher_lows = sorted({value for value in p[y] if band.low < value < THRESHOLD})
    lower_highs = sorted({value for value in p if THRESHOLD <= value < band.high}, reverse=True)
    if higher_lows:
        assert not meets(y, p, higher_lows[0] + 1e-9, band.high, target)
    if lower_highs and band.high > THRESHOLD:
        assert not meets(y, p, band.low, max(lower_highs[0], THRESHOLD) - 1e-9, target)


@requires(DATASET)
def test_the_command_writes_the_band_into_the_card_and_nothing_else(model_copy):
    before = json.loads(card_path(model_copy).read_text())
    before.pop("uncertain", None)  # the shipped card's own band is replaced
    model_sha = sha256_file(model_copy)
    done = subprocess.run([sys.executable, "-m", "training", "uncertain", "--model", str(model_copy),
                           "--data", str(DATASET), "--limit", "48"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = json.loads(card_path(model_copy).read_text())
    band = after.pop("uncertain")
    assert after == before and sha256_file(model_copy) == model_sha
    assert band["photos"] == 48 and band["low"] <= before["threshold"] <= band["high"]
    assert load_card(model_copy).uncertain_band == (band["low"], band["high"])
    # The same predictions, as evaluate --split out-of-source computes them, give the same band.
    y, p, _ = split_predictions(model_copy, load_items(DATASET), "out-of-source", limit=48)
    expected = uncertain_band(y, p, before["threshold"], band["target"])
    assert (band["low"], band["high"]) == (expected.low, expected.high)
