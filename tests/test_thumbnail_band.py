"""`python -m training thumbnails`: the band in which a thumbnail's verdict is checked against the image."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prerequisites import need_module
from shared_data import SHARED, requires

from notcat_sort.content import sha256_file
from notcat_sort.model import card_path, load_card
from training.data import limit, load_items
from training.thumbnails import choose_band, choose_for_model, out_of_source, write_band

REPO = Path(__file__).resolve().parents[1]
DATASET = SHARED / "datasets" / "catnotcat"


def agreement_and_savings(full, thumbnail, threshold, low, high):
    decides = (thumbnail < low) | (thumbnail > high)
    wrong = ((full >= threshold) != (thumbnail >= threshold)) & decides
    return 1 - wrong.mean(), decides.sum()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-0.3, 0.3)), min_size=1, max_size=40),
       st.sampled_from([0.9, 0.95, 0.999]))
def test_the_band_meets_the_target_and_none_saves_more(pairs, target):
    full = np.array([p for p, _ in pairs])
    thumbnail = np.clip(full + np.array([d for _, d in pairs]), 0, 1)
    band = choose_band(full, thumbnail, 0.5, target)
    agreement, saved = agreement_and_savings(full, thumbnail, 0.5, band.low, band.high)
    assert agreement >= target and band.low <= 0.5 <= band.high
    assert abs(agreement - band.agreement) < 1e-12
    # The card's band is rounded outwards to 4 decimals: photos that close to an edge may go to the image.
    rounding = int(np.sum((np.abs(thumbnail - band.low) < 1e-4) | (np.abs(thumbnail - band.high) < 1e-4)))
    edges = sorted(set(thumbnail.tolist()) | {0.5})  # every band that decides a different set of photos
    for low, high in itertools.product([e for e in edges if e <= 0.5], [e for e in edges if e >= 0.5]):
        other_agreement, other_saved = agreement_and_savings(full, thumbnail, 0.5, low, high)
        if other_agreement >= target:
            assert other_saved <= saved + rounding


@requires(DATASET)
def test_the_command_writes_the_band_into_the_card_and_nothing_else(model_copy):
    need_module("torch", "python -m training needs the train extra: pip install -e '.[train]'")
    before = json.loads(card_path(model_copy).read_text())
    before.pop("thumbnail", None)  # the shipped card's own band is replaced
    model_sha = sha256_file(model_copy)
    done = subprocess.run([sys.executable, "-m", "training", "thumbnails", "--model", str(model_copy),
                           "--data", str(DATASET), "--limit", "24"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = json.loads(card_path(model_copy).read_text())
    band = after.pop("thumbnail")
    assert after == before and sha256_file(model_copy) == model_sha
    assert 0 <= band["low"] <= before["threshold"] <= band["high"] <= 1 and band["photos"] == 24
    assert band["agreement"] >= 0.999
    assert load_card(model_copy).thumbnail_band == (band["low"], band["high"])
    assert load_card(model_copy).thumbnail_size == band["size"] == 192  # the default --size


@requires(DATASET)
def test_the_chooser_writes_only_the_cards_thumbnail_entry(model_copy):
    """The same without the train extra: the chooser needs only onnxruntime and Pillow."""
    before = json.loads(card_path(model_copy).read_text())
    before.pop("thumbnail", None)  # the shipped card's own band is replaced
    model_sha = sha256_file(model_copy)
    photos = limit(out_of_source(load_items(DATASET)), 24, seed=0)
    band = choose_for_model(model_copy, photos)
    write_band(model_copy, band)
    after = json.loads(card_path(model_copy).read_text())
    assert after.pop("thumbnail")["photos"] == 24 and after == before and sha256_file(model_copy) == model_sha
    assert band.agreement >= 0.999 and load_card(model_copy).thumbnail_band == (band.low, band.high)
