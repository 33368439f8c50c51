"""`--group-cats`: cat photos sorted by individual cat, on real campus-cats photos.

Each campus cat's photos are named `campus-cats-<10 characters of cat id>_...`. Besides the real
photos, each library holds mirror images of a few of them: a different file (and sha256) of the
same cat, which any usable identity embedding puts with its original."""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from prerequisites import need_module, need_that

from notcat_sort.cats import UNKNOWN, CatGrouper, NamesError, read_names
from notcat_sort.model import card_path, default_model_path, load_card

CATS = ("8d2ee5cf67", "8d2ee5cf93", "4d49198bdd")  # the campus cats with the most photos
MIRRORED = 3  # per cat


def _model() -> Path:
    """The shipped model, or NOTCAT_TEST_MODEL (a model of the same kind, for trying one out)."""
    return Path(os.environ.get("NOTCAT_TEST_MODEL") or default_model_path())


@pytest.fixture(scope="session")
def model() -> Path:
    path = _model()
    need_that(load_card(path).has_embedding, f"{path} has no embedding output")
    return path


def cat_of(path: str | Path) -> str:
    return re.search(r"campus-cats-(.{10})", Path(path).name).group(1)


@pytest.fixture
def library(shared: Path, tmp_path: Path) -> Path:
    """Photos of three campus cats, mirror images of some of them, and a few photos with no cat."""
    folder = tmp_path / "photos"
    (folder / "garden").mkdir(parents=True)
    pool = shared / "datasets" / "catnotcat"
    for cat in CATS:
        photos = sorted((pool / "cat").glob(f"campus-cats-{cat}_*"))
        for photo in photos:
            shutil.copyfile(photo, folder / "garden" / photo.name)
        for photo in photos[:MIRRORED]:
            ImageOps.mirror(Image.open(photo)).save(folder / f"{photo.stem}-mirrored.jpg", quality=95)
    for photo in sorted((pool / "not-cat").glob("bsd68-*"))[:3]:
        shutil.copyfile(photo, folder / photo.name)
    return folder


def _by_cat_id(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    groups = defaultdict(list)
    for row in rows:
        if row["cat_id"]:
            groups[row["cat_id"]].append(row["path"])
    return groups


def test_copy_puts_one_cat_together_and_keeps_different_cats_apart(run_cli, library: Path, tmp_path: Path,
                                                                    model: Path) -> None:
    out = tmp_path / "sorted"
    result = run_cli(library, "--copy", "--group-cats", "--out", out, "--model", model, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = result.rows()
    for row in rows:
        assert bool(row["cat_id"]) == (row["label"] == "cat"), row
        if row["label"] == "cat":
            destination = Path(row["destination"])
            assert destination.relative_to(out / "cat" / row["cat_id"]) == Path(row["path"]).relative_to(library)
            assert destination.read_bytes() == Path(row["path"]).read_bytes()
    groups = {cat: paths for cat, paths in _by_cat_id(rows).items() if cat != UNKNOWN}
    assert groups, "no photos were grouped"
    for cat, paths in groups.items():
        assert re.fullmatch(r"cat-[0-9]+", cat)
        assert len({cat_of(path) for path in paths}) == 1, f"{cat} merges different cats: {paths}"
        assert len(paths) >= 2
    ids = {row["path"]: row["cat_id"] for row in rows}
    for mirrored in library.glob("*-mirrored.jpg"):
        original = str(library / "garden" / mirrored.name.replace("-mirrored", ""))
        if ids[str(mirrored)] and ids[original]:  # both taken for cats
            assert ids[str(mirrored)] == ids[original] != UNKNOWN, (mirrored, ids[str(mirrored)], ids[original])
    names = result.report_path.with_name(f"{result.report_path.stem}.cats.toml")
    assert set(read_names_template(names)) == {int(cat.split("-")[1]) for cat in groups}


def read_names_template(path: Path) -> list[int]:
    return [int(number) for number in re.findall(r"^cat-([0-9]+) = \"\"", path.read_text(), flags=re.MULTILINE)]


def test_names_stick_across_runs(run_cli, library: Path, tmp_path: Path, model: Path) -> None:
    first = run_cli(library, "--group-cats", "--model", model, timeout=600)  # a dry run names the groups too
    assert first.returncode == 0, first.stderr
    groups = {cat: paths for cat, paths in _by_cat_id(first.rows()).items() if cat != UNKNOWN}
    named = sorted(groups)[0]
    template = first.report_path.with_name(f"{first.report_path.stem}.cats.toml")
    names = tmp_path / "names.toml"
    names.write_text(template.read_text().replace(f'{named} = ""', f'{named} = "Marmalade"'))

    out = tmp_path / "sorted"
    second = run_cli(library, "--copy", "--group-cats", "--cat-names", names, "--out", out, "--model", model, timeout=600)
    assert second.returncode == 0, second.stderr
    # The same photos (and perhaps some that were unknown before, nearer the cat's centroid now).
    marmalade = _by_cat_id(second.rows())["Marmalade"]
    assert set(groups[named]) <= set(marmalade)
    assert {Path(path).name for path in marmalade} == {path.name for path in (out / "cat" / "Marmalade").rglob("*.jpg")}

    # A new photo of Marmalade, in a later run without --cat-names, goes to her.
    newcomer = tmp_path / "new"
    newcomer.mkdir()
    ImageOps.mirror(Image.open(groups[named][0])).save(newcomer / "new-photo.jpg", quality=90)
    third = run_cli(newcomer, "--copy", "--group-cats", "--out", out, "--model", model, timeout=600)
    assert third.returncode == 0, third.stderr
    assert [row["cat_id"] for row in third.rows()] == ["Marmalade"]
    assert (out / "cat" / "Marmalade" / "new-photo.jpg").is_file()


def test_move_then_undo_puts_everything_back(run_cli, library: Path, model: Path) -> None:
    before = {path.relative_to(library): path.read_bytes() for path in library.rglob("*") if path.is_file()}
    moved = run_cli(library, "--move", "--group-cats", "--model", model, timeout=600)
    assert moved.returncode == 0, moved.stderr
    assert any(row["cat_id"] not in ("", UNKNOWN) for row in moved.rows())
    assert not (library / "garden").exists() or not any((library / "garden").iterdir())
    undone = run_cli("--undo", moved.report_path, timeout=600)
    assert undone.returncode == 0, undone.stderr
    after = {path.relative_to(library): path.read_bytes() for path in library.rglob("*")
             if path.is_file() and not path.name.startswith("notcat-sort-")}
    assert after == before
    assert not (library / "cat").exists() and not (library / "not-cat").exists()


def _subjects(sidecar: Path) -> list[str]:
    items = ET.parse(sidecar).getroot().iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")
    return [item.text or "" for item in items]


def test_tag_adds_a_cat_keyword_and_undo_takes_it_out(run_cli, library: Path, model: Path) -> None:
    tagged = run_cli(library, "--tag", "--group-cats", "--model", model, timeout=600)
    assert tagged.returncode == 0, tagged.stderr
    rows = tagged.rows()
    for row in rows:
        subjects = _subjects(Path(row["destination"]))
        if row["label"] == "cat":  # with a model that has the heads, its breed and mood keywords besides
            attributes = [s for s in subjects if s.startswith(("cat/breed/", "cat|breed|", "cat/mood/", "cat|mood|"))]
            assert [s for s in subjects if s not in attributes] == ["cat", f"cat/{row['cat_id']}"]
            named = [("mood", row["mood"]), ("breed", row["breed"])]
            assert sorted(attributes) == sorted(f"cat{sep}{trait}{sep}{name}" for trait, name in named if name
                                                for sep in "/|")
        else:
            assert subjects == [row["label"]]
    assert any(row["cat_id"] not in ("", UNKNOWN) for row in rows)
    undone = run_cli("--undo", tagged.report_path, timeout=600)
    assert undone.returncode == 0, undone.stderr
    assert not list(library.rglob("*.xmp"))


def test_a_rerun_needs_no_inference(run_cli, library: Path, model: Path) -> None:
    first = run_cli(library, "--group-cats", "--model", model, timeout=600)
    second = run_cli(library, "--group-cats", "--model", model, timeout=600)
    assert first.returncode == second.returncode == 0
    count = len(first.rows())
    assert f"{count} files" in second.stderr and f"{count} from cache" in second.stderr
    assert [(r["path"], r["cat_id"]) for r in second.rows()] == [(r["path"], r["cat_id"]) for r in first.rows()]


def test_usage_errors(run_cli, library: Path, tmp_path: Path, model_copy: Path) -> None:
    bad = tmp_path / "names.toml"
    bad.write_text('cat-1 = "../escape"\n')
    for args, complaint in [
        (("--cat-names", bad), "--cat-names names the cats --group-cats finds"),
        (("--group-cats", "--cat-names", bad), "cannot be a cat's folder name"),
    ]:
        result = run_cli(library, *args, timeout=600)
        assert result.returncode == 2 and complaint in result.stderr, result.stderr
    card = json.loads(card_path(model_copy).read_text())  # a model whose card lists no embedding output
    card.get("extra_outputs", {}).pop("embedding", None)
    card_path(model_copy).write_text(json.dumps(card))
    result = run_cli(library, "--group-cats", "--model", model_copy, timeout=600)
    assert result.returncode == 2 and "needs a model with an `embedding` output" in result.stderr, result.stderr


def test_names_file_is_checked(tmp_path: Path) -> None:
    names = tmp_path / "names.toml"
    names.write_text('cat-x = "Tom"')
    with pytest.raises(NamesError):
        read_names(names)
    names.write_text('cat-2 = "Tom"\ncat-3 = ""  # no name yet\n')
    assert read_names(names) == {2: "Tom"}


def _blobs(seed: int, cats: int, per_cat: int, dimensions: int = 64) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    centres = np.linalg.qr(generator.normal(size=(dimensions, cats)))[0].T  # orthogonal
    labels = np.repeat(np.arange(cats), per_cat)
    return centres[labels] + 0.03 * generator.normal(size=(len(labels), dimensions)), labels


def _group(vectors: np.ndarray, digests: list[str], threshold: float | None = None) -> list[str]:
    grouper = CatGrouper(None, threshold=threshold)
    try:
        for digest, vector in zip(digests, vectors, strict=True):
            grouper.add(digest, vector)
        return grouper.group().ids
    finally:
        grouper.close()


def test_grouping_is_deterministic_and_chunked() -> None:
    """More photos than one chunk, shuffled: the same cats, whatever order the photos come in."""
    vectors, labels = _blobs(0, cats=4, per_cat=200)
    digests = [f"{i:064x}" for i in range(len(labels))]
    ids = _group(vectors, digests)
    assert len(set(ids)) == 4 and UNKNOWN not in ids
    for cat in set(ids):
        assert len({labels[i] for i, found in enumerate(ids) if found == cat}) == 1
    order = np.random.default_rng(1).permutation(len(labels))
    shuffled = _group(vectors[order], [digests[i] for i in order])
    assert [shuffled[list(order).index(i)] for i in range(len(labels))] == ids


def test_a_photo_like_no_other_is_unknown() -> None:
    vectors, _ = _blobs(2, cats=3, per_cat=1)
    assert _group(vectors, ["a", "b", "c"]) == [UNKNOWN] * 3


def test_new_cats_are_the_clusters_hdbscan_finds() -> None:
    """Cats seen in a few sessions each, some close together, some spread out: the new cats are
    scikit-learn's HDBSCAN clusters (min_cluster_size 2, cosine distances), found here in chunks
    over each photo's nearest neighbours."""
    hdbscan = need_module("sklearn.cluster", "the train extra: pip install -e '.[train]'").HDBSCAN
    generator = np.random.default_rng(3)
    centres = np.linalg.qr(generator.normal(size=(64, 6)))[0].T
    sessions = np.repeat(np.arange(6), 3)  # the cat of each session
    session_centres = centres[sessions] + np.repeat([0.2, 0.5, 0.9], 6)[:, None] * generator.normal(size=(18, 64)) / 8
    of_session = generator.integers(0, 18, 300)
    vectors = session_centres[of_session] + 0.03 * generator.normal(size=(300, 64))
    # Threshold -1: every photo HDBSCAN puts in a cluster stays in it.
    ids = _group(vectors, [f"{i:064x}" for i in range(len(vectors))], threshold=-1.0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = np.clip(1 - unit @ unit.T, 0, None)
    np.fill_diagonal(distances, 0)
    expected = hdbscan(min_cluster_size=2, metric="precomputed", copy=True).fit_predict(distances)
    partition = {frozenset(np.flatnonzero(expected == label)) for label in set(expected) if label >= 0}
    assert len(partition) > 6  # some cats are one cluster, the spread-out ones one per session
    found = {frozenset(i for i, cat in enumerate(ids) if cat == name) for name in set(ids) if name != UNKNOWN}
    assert found == partition
    for cluster in partition:  # no cluster holds two cats
        assert len(set(sessions[of_session[list(cluster)]])) == 1


# --- --known-cats: the cats you named --------------------------------------------------------------

KNOWN = dict(zip(CATS, ("Tom", "Mia", "Leo"), strict=True))
EXAMPLES = 5  # named photos per cat


def _known_cats(library: Path, folder: Path) -> dict[str, str]:
    """A folder per cat with EXAMPLES of its photos from the library (copies); path -> name of those photos."""
    named = {}
    for photo in sorted((library / "garden").iterdir()):
        name = KNOWN[cat_of(photo)]
        (folder / name).mkdir(parents=True, exist_ok=True)
        if len(list((folder / name).iterdir())) < EXAMPLES:
            shutil.copyfile(photo, folder / name / photo.name)
            named[str(photo)] = name
    return named


def test_known_cats_name_the_photos_of_the_cats_you_named(run_cli, library: Path, tmp_path: Path, model: Path) -> None:
    known, out = tmp_path / "known", tmp_path / "sorted"
    examples = _known_cats(library, known)
    result = run_cli(library, "--copy", "--group-cats", "--known-cats", known, "--out", out, "--model", model, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "known cats from" in result.stderr and "Leo (5), Mia (5), Tom (5)" in result.stderr
    cats = [row for row in result.rows() if row["label"] == "cat"]
    named = [row for row in cats if row["cat_id"] in KNOWN.values()]
    for path, name in examples.items():  # a photo that is one of the examples is that cat
        assert next(row["cat_id"] for row in cats if row["path"] == path) == name
    asked = [row for row in named if row["path"] not in examples]
    right = sum(row["cat_id"] == KNOWN[cat_of(row["path"])] for row in asked)
    assert right >= 0.9 * len(asked) and len(asked) >= 0.6 * (len(cats) - len(examples)), (right, len(asked), len(cats))
    for row in named:
        assert Path(row["destination"]) == out / "cat" / row["cat_id"] / Path(row["path"]).relative_to(library)


def test_known_cats_usage_errors(run_cli, library: Path, tmp_path: Path) -> None:
    known = tmp_path / "known"
    (known / "Tom").mkdir(parents=True)
    without = run_cli(library, "--known-cats", known)
    assert without.returncode == 2 and "add --group-cats" in without.stderr
    (known / "cat-3").mkdir()
    bad = run_cli(library, "--group-cats", "--known-cats", known)
    assert bad.returncode == 2 and "cat-3" in bad.stderr


def test_a_photo_is_named_only_well_past_the_boundary_between_two_cats() -> None:
    """Points placed in the space the discriminants see (`features`: a signed square root more):
    on the boundary, short of NAME_MARGIN of the way to a cat's mean, and well past it."""
    from notcat_sort.known_cats import NAME_MARGIN, choose, features, fit

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    vectors = np.concatenate([centres[cat] + 0.05 * rng.normal(size=(5, 16)) for cat in (0, 1)])
    fitted = fit(["Tom"] * 5 + ["Mia"] * 5, vectors)
    seen = features(vectors)
    tom, mia = seen[:5].mean(axis=0), seen[5:].mean(axis=0)
    middle = (tom + mia) / 2  # on the boundary; the share of the way grows (nearly) linearly towards each mean
    points = np.stack([tom, mia, middle, middle + 0.5 * NAME_MARGIN * (tom - middle), middle + 2 * NAME_MARGIN * (tom - middle),
                       middle + 2 * NAME_MARGIN * (mia - middle)])
    given = np.sign(points) * points ** 2  # what `features` turns into `points` (up to length)
    assert choose(fitted, given) == ["Tom", "Mia", None, None, "Tom", "Mia"]
    assert choose(fitted, given, margin=0.0)[2:4] != [None, None]  # the margin is what leaves them out
    tom, mia = vectors[:5].mean(axis=0), vectors[5:].mean(axis=0)
    alone = fit(["Tom"] * 5, vectors[:5])
    assert choose(alone, np.stack([tom / np.linalg.norm(tom), mia / np.linalg.norm(mia)]), alone=0.9) == ["Tom", None]
