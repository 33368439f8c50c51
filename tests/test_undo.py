"""--undo REPORT: every moved, copied or linked file back exactly as it was; twice is harmless."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safety_support import (
    image_tree,
    inventory,
    run_cli,
    sort_in_process,
    undo_in_process,
)

from notcat_sort.report import Status, final_rows


@pytest.mark.parametrize("action", ["move", "copy", "link"])
def test_undo_of_the_cli_puts_everything_back_and_twice_is_harmless(tmp_path: Path, action: str) -> None:
    photos = image_tree(tmp_path / "photos", 4)
    before = inventory(photos)
    run_cli(photos, f"--{action}", "-j", "1", "--report", tmp_path / "r.csv", cache=tmp_path / "cache", check=True)
    assert inventory(photos) != before
    first = run_cli("--undo", tmp_path / "r.csv", cache=tmp_path / "cache", check=True)
    assert b"undone: 4" in first.stderr
    assert inventory(photos) == before
    second = run_cli("--undo", tmp_path / "r.csv", cache=tmp_path / "cache", check=True)
    assert b"skipped: 4" in second.stderr and inventory(photos) == before
    assert {row.status for row in final_rows(tmp_path / "r.undo.csv")} == {Status.SKIPPED}


def test_undo_leaves_a_file_changed_since_the_run_and_says_so(tmp_path: Path) -> None:
    photos = image_tree(tmp_path / "photos", 2)
    [first, second] = sort_in_process([photos], "copy", tmp_path / "r.csv")
    first.outcome.destination.write_bytes(b"edited after sorting")
    rows = {row.destination: row for row in undo_in_process(tmp_path / "r.csv")}
    assert rows[str(first.outcome.destination)].status == Status.ERROR
    assert first.outcome.destination.read_bytes() == b"edited after sorting"
    assert rows[str(second.outcome.destination)].status == Status.UNDONE


def test_undo_restores_a_duplicate_source_that_a_move_removed(tmp_path: Path) -> None:
    photos = image_tree(tmp_path / "photos", 1)
    [image] = list(photos.iterdir())
    out = tmp_path / "sorted"
    for label in ("cat", "not-cat"):
        (out / label).mkdir(parents=True)
        shutil.copy2(image, out / label / image.name)
    before = inventory(photos, out)
    [result] = sort_in_process([photos], "move", tmp_path / "r.csv", out=out)
    assert result.outcome.status == Status.DUPLICATE_REMOVED and not image.exists()
    undo_in_process(tmp_path / "r.csv")
    assert inventory(photos, out) == before


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 255 - shade, 40)).save(buffer, "PNG")
    return buffer.getvalue()


CONTENTS = [_png(shade) for shade in (0, 60, 120, 180, 240)] + [b"not an image at all"]
NAMES = st.sampled_from(["a.png", "b.png", "a (1).png", "sub/a.png", "sub/c.png", "x y.png"])
FILES = st.dictionaries(NAMES, st.integers(0, len(CONTENTS) - 1), max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    roots=st.lists(FILES, min_size=1, max_size=2),
    existing=FILES,
    action=st.sampled_from(["move", "copy", "link"]),
    on_conflict=st.sampled_from(["rename", "skip"]),
)
def test_property_a_run_keeps_every_content_and_undo_restores_every_path(
    tmp_path_factory, roots, existing, action, on_conflict,
) -> None:
    """Random trees, sorted together into one --out that already holds clashing names (same or
    different bytes, in both label folders): no content is ever lost, and undo gives back the
    exact tree."""
    base = tmp_path_factory.mktemp("prop")
    folders = []
    for number, files in enumerate(roots):
        folders.append(base / f"root{number}")
        folders[-1].mkdir()
        for name, content in files.items():
            (folders[-1] / name).parent.mkdir(exist_ok=True)
            (folders[-1] / name).write_bytes(CONTENTS[content])
    out = base / "out"
    for label in ("cat", "not-cat"):
        for name, content in existing.items():
            (out / label / name).parent.mkdir(parents=True, exist_ok=True)
            (out / label / name).write_bytes(CONTENTS[content])
    before, folders_before = inventory(*folders, out), _folders(out)
    results = sort_in_process(folders, action, base / "r.csv", out=out, on_conflict=on_conflict)
    assert not [r for r in results if r.outcome.status == Status.ERROR and r.label.value != "error"]
    assert set(inventory(*folders, out).values()) == set(before.values())
    undo_in_process(base / "r.csv")
    assert inventory(*folders, out) == before
    assert _folders(out) == folders_before  # the folders the run made are gone again


def _folders(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*") if path.is_dir()}
