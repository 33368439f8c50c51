"""The README says what the code does: its numbers, names and options are checked against it."""

from __future__ import annotations

import re
from pathlib import Path

from notcat_sort.actions.tag import _PROPERTIES
from notcat_sort.model import default_model_path, load_card

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_default_threshold_it_states_is_the_cards() -> None:
    [row] = [line for line in README.splitlines() if line.startswith("| `--threshold P`")]
    stated = [float(number) for number in re.findall(r"\b0\.\d+", row)]
    assert stated == [round(load_card(default_model_path()).threshold, 4)], row


def test_every_property_a_sidecar_gets_is_documented() -> None:
    for name in _PROPERTIES:
        assert f"`notcat:{name}`" in README, name


def test_it_says_where_it_runs_and_what_the_tests_need() -> None:
    assert "on Linux or macOS" in README and "Windows\nis not supported" in README
    assert "`../shared`" in README and "CI=true" in README


def test_every_option_it_lists_is_a_real_one(run_cli) -> None:
    help_text = run_cli("--help").stdout
    listed = set(re.findall(r"^\| `(--[\w-]+)", README, flags=re.MULTILINE))
    assert len(listed) > 10
    for option in listed:
        assert re.search(rf"(^|[ ,]){option}\b", help_text, flags=re.MULTILINE), option
