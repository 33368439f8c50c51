"""A cat's breed and mood (issue 26), as the runtime gives them: the report's columns, the XMP keywords,
`--breed-folders` (undone byte for byte), serve's answer and review filters; and a model without the
heads, whose columns stay empty. Real breed photos, a real onnxruntime session, the CLI as a subprocess.

The heads are the shipped model's when it has them; otherwise two heads with fixed random weights are
appended to it (tests/attribute_models.py): the runtime is tested either way, not the heads' accuracy."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from prerequisites import need_module, need_tool
from shared_data import need

from notcat_sort.decode import decode
from notcat_sort.model import DOMESTIC, Classifier, Trait, default_model_path, load_card

BREEDS = ("Siamese", "Bombay", "Persian", "Sphynx", "Maine_Coon", "Russian_Blue")  # one photo of each (as manifest.csv names them)
# A campus cat of no breed (the shipped model's top label for it: `domestic`, p 0.99).
HOUSE_CAT = "cat/campus-cats-4d49198bd2_18ef419b-3c71-4105-f30c-053051ba6bab_original.jpg"


@pytest.fixture(scope="module")
def heads_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with breed and mood heads: the shipped one if it has them, else the shipped one given heads."""
    shipped = default_model_path()
    if load_card(shipped).attributes:
        return shipped
    need_module("onnx", "the train extra: pip install '.[train]'")
    from attribute_models import with_heads

    return with_heads(shipped, tmp_path_factory.mktemp("heads") / shipped.name, confident=0.7)


@pytest.fixture(scope="module")
def plain_model(heads_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model without the heads' outputs and card entry: an older model, or a user's own."""
    need_module("onnx", "the train extra: pip install '.[train]'")
    from attribute_models import without_heads

    return without_heads(heads_model, tmp_path_factory.mktemp("plain") / heads_model.name)


@pytest.fixture
def photos(shared: Path, tmp_path: Path) -> Path:
    """A few real breed photos and two photos of no cat, in two folders."""
    folder = tmp_path / "photos"
    breeds = need(shared / "datasets" / "breeds")
    with open(breeds / "manifest.csv", encoding="utf-8", newline="") as handle:
        first = {}
        for row in csv.DictReader(handle):
            first.setdefault(row["breed"], breeds / row["path"])
    pool = shared / "datasets" / "catnotcat"
    not_cats = sorted((pool / "not-cat").iterdir())[:2]
    for number, source in enumerate([*(first[breed] for breed in BREEDS), *not_cats, pool / HOUSE_CAT]):
        target = folder / f"roll{number % 2}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder


def _expected(model: Path, path: Path) -> dict[Trait, np.ndarray]:
    """The heads' outputs for a photo, straight from onnxruntime on the CLI's decode."""
    card = load_card(model)
    return Classifier(card).scores(decode(path, card.input_size)[None], embedding=False).of(0)


def test_report_names_breed_and_mood_of_cats_only(run_cli, photos, heads_model, tmp_path):
    card = load_card(heads_model)
    breeds, moods = card.attributes[Trait.BREED], card.attributes[Trait.MOOD]
    done = run_cli(photos, "--model", heads_model, "--report", tmp_path / "r.csv", "-j", "1", "--no-cache", "--full-decode")
    assert done.returncode == 0, done.stderr
    rows = done.rows()
    assert [row["label"] for row in rows].count("cat") >= 4 and "not-cat" in {row["label"] for row in rows}
    house_cats = 0
    for row in rows:
        if row["label"] != "cat":
            assert (row["breed"], row["breed_p"], row["mood"], row["mood_p"]) == ("", "", "", ""), row
            continue
        expected = _expected(heads_model, Path(row["path"]))
        ranked = breeds.ranked(expected[Trait.BREED], len(breeds.labels))
        top = next(guess for guess in ranked if guess.name != DOMESTIC)  # breed_p: the best breed's, never domestic's
        assert float(row["breed_p"]) == pytest.approx(top.p, abs=2e-4), row
        named = top is ranked[0] and top.p >= breeds.confident
        assert row["breed"] == (top.name if named else ""), row
        house_cats += ranked[0].name == DOMESTIC
        assert row["mood"] == moods.ranked(expected[Trait.MOOD], 1)[0].name, row
        assert float(row["mood_p"]) == pytest.approx(float(expected[Trait.MOOD].max()), abs=2e-4), row
    assert house_cats >= 1 or heads_model != default_model_path()  # the shipped heads call the campus cat domestic
    # A run answered by the prediction cache says the same.
    assert run_cli(photos, "--model", heads_model, "--report", tmp_path / "warm.csv", "-j", "1", "--full-decode").returncode == 0
    cached = run_cli(photos, "--model", heads_model, "--report", tmp_path / "cached.csv", "-j", "1", "--full-decode")
    assert f"{len(rows)} from cache" in cached.stderr, cached.stderr
    columns = ("path", "breed", "breed_p", "mood", "mood_p")
    assert [[row[c] for c in columns] for row in cached.rows()] == [[row[c] for c in columns] for row in rows]


def test_a_model_without_heads_leaves_the_columns_empty(run_cli, photos, plain_model, tmp_path):
    done = run_cli(photos, "--model", plain_model, "--report", tmp_path / "r.csv", "-j", "1", "--no-cache")
    assert done.returncode == 0, done.stderr
    rows = done.rows()
    assert "cat" in {row["label"] for row in rows}
    assert all((row["breed"], row["breed_p"], row["mood"], row["mood_p"]) == ("", "", "", "") for row in rows)
    refused = run_cli(photos, "--model", plain_model, "--copy", "--breed-folders", "--out", tmp_path / "out")
    assert refused.returncode == 2 and "--breed-folders needs a model that names breeds" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_tag_writes_breed_and_mood_keywords_exiftool_reads(run_cli, photos, heads_model, tmp_path):
    exiftool = need_tool("exiftool", "libimage-exiftool-perl")
    report = tmp_path / "tag.csv"
    done = run_cli(photos, "--model", heads_model, "--tag", "--report", report, "-j", "1", "--no-cache")
    assert done.returncode == 0, done.stderr
    rows = done.rows()
    sidecars = [f"{row['path']}.xmp" for row in rows]
    read = json.loads(subprocess.run([exiftool, "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", *sidecars],
                                     capture_output=True, text=True, check=True).stdout)
    found = {entry["SourceFile"]: entry for entry in read}

    def listed(value: object) -> list[str]:
        return [] if value is None else [str(item) for item in value] if isinstance(value, list) else [str(value)]

    named = 0
    for row, sidecar in zip(rows, sidecars, strict=True):
        subject, hierarchy = listed(found[sidecar].get("Subject")), listed(found[sidecar].get("HierarchicalSubject"))
        if row["label"] != "cat":
            assert subject == [row["label"]] and hierarchy == [], sidecar
            continue
        expected = [f"cat/mood/{row['mood']}"] + ([f"cat/breed/{row['breed']}"] if row["breed"] else [])
        assert sorted(subject) == sorted(["cat", *expected]), sidecar
        assert sorted(hierarchy) == sorted(keyword.replace("/", "|") for keyword in expected), sidecar
        named += bool(row["breed"])
    assert named >= 1  # a breed keyword was written and read back
    undone = run_cli("--undo", report)
    assert undone.returncode == 0, undone.stderr
    assert not any(os.path.exists(sidecar) for sidecar in sidecars)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_breed_folders_move_and_undo_byte_for_byte(run_cli, photos, heads_model, tmp_path):
    siamese_name = sorted(photos.rglob("Siamese_*.jpg"))[0].name
    (photos / "roll0" / f"{siamese_name}.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")  # a sidecar travels
    before = _snapshot(photos)
    report = tmp_path / "breeds.csv"
    done = run_cli(photos, "--model", heads_model, "--move", "--breed-folders", "--report", report, "-j", "1", "--no-cache")
    assert done.returncode == 0, done.stderr
    rows = [row for row in done.rows() if not row["path"].endswith(".xmp")]
    folders = set()
    for row in rows:
        destination = Path(row["destination"])
        source = Path(row["path"])
        if row["label"] == "cat":
            folder = row["breed"] or DOMESTIC
            assert destination == photos / "cat" / folder / source.relative_to(photos), row
            folders.add(folder)
        else:
            assert destination == photos / row["label"] / source.relative_to(photos), row
        assert destination.is_file() and not source.exists()
    assert len(folders) >= 2, folders  # cats went to more than one breed folder
    siamese = next(row for row in rows if row["path"].endswith(siamese_name))
    assert Path(siamese["destination"] + ".xmp").is_file()
    undone = run_cli("--undo", report)
    assert undone.returncode == 0, undone.stderr
    assert _snapshot(photos) == before
    assert not (photos / "cat").exists()


def test_breed_folders_and_group_cats_are_one_or_the_other(run_cli, photos, heads_model):
    done = run_cli(photos, "--model", heads_model, "--copy", "--breed-folders", "--group-cats")
    assert done.returncode == 2 and "choose one" in done.stderr


# --- serve -----------------------------------------------------------------------------------------

def _client(model: Path, tmp_path: Path, report: Path | None = None):
    need_module("starlette", "the serve extra: pip install '.[serve]'")
    from starlette.testclient import TestClient

    from notcat_sort.decide import Policy
    from notcat_sort.serve.app import ServeConfig, create_app
    from notcat_sort.serve.corrections import CorrectionsFolder
    from notcat_sort.serve.review import Review

    card = load_card(model)
    review = Review(report, CorrectionsFolder(tmp_path / "corrections")) if report else None
    return TestClient(create_app(ServeConfig(card, Policy(card.threshold), "token-26", review)), base_url="http://127.0.0.1")


def test_api_gives_the_top_five_breeds_and_the_mood(photos, heads_model, plain_model, tmp_path):
    card = load_card(heads_model)
    breeds, moods = card.attributes[Trait.BREED], card.attributes[Trait.MOOD]
    with _client(heads_model, tmp_path) as client:
        for path in sorted(photos.rglob("*.jpg")):
            answer = client.post("/api/classify", content=path.read_bytes()).json()
            listed = answer["breeds"]
            assert len(listed) == 5 and all(set(item) == {"name", "p"} for item in listed)
            ps = [item["p"] for item in listed]
            assert ps == sorted(ps, reverse=True) and sum(ps) <= 1 + 1e-5 and min(ps) >= 0
            assert {item["name"] for item in listed} <= set(breeds.labels) - {DOMESTIC}  # five breeds: domestic is none
            expected = _expected(heads_model, path)
            p_breeds = {label: float(p) for label, p in zip(breeds.labels, expected[Trait.BREED], strict=True)}
            best = sorted((p for label, p in p_breeds.items() if label != DOMESTIC), reverse=True)[:5]
            assert ps == pytest.approx(best, abs=1e-5)
            assert all(item["p"] == pytest.approx(p_breeds[item["name"]], abs=1e-5) for item in listed)
            assert answer["breed"] == breeds.guess(expected[Trait.BREED]).name
            assert answer["mood"]["name"] in moods.labels
            assert answer["mood"]["p"] == pytest.approx(float(expected[Trait.MOOD].max()), abs=1e-5)
    with _client(plain_model, tmp_path) as client:
        answer = client.post("/api/classify", content=next(photos.rglob("Siamese_*.jpg")).read_bytes()).json()
        assert answer["breeds"] == [] and answer["breed"] is None and answer["mood"] is None


def test_review_filters_by_breed_and_mood(run_cli, photos, heads_model, tmp_path):
    report = tmp_path / "run.csv"
    assert run_cli(photos, "--model", heads_model, "--report", report, "-j", "1", "--no-cache").returncode == 0
    with open(report, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle)]
    cats = [row for row in rows if row["label"] == "cat"]
    with _client(heads_model, tmp_path, report) as client:
        answer = client.get("/api/review", params={"token": "token-26"}).json()
        described = {item["name"]: item for item in answer["filters"]}
        by_breed = {}
        for row in cats:
            by_breed.setdefault(row["breed"] or DOMESTIC, []).append(row["path"])
        assert described["breed"]["values"] == {name: len(paths) for name, paths in sorted(by_breed.items())}
        for breed, paths in by_breed.items():
            listed = client.get("/api/review", params={"token": "token-26", "breed": breed}).json()["entries"]
            assert sorted(entry["path"] for entry in listed) == sorted(paths)
            assert all(entry["breed"] == breed for entry in listed)
        mood = cats[0]["mood"]
        listed = client.get("/api/review", params={"token": "token-26", "mood": mood}).json()["entries"]
        assert sorted(entry["path"] for entry in listed) == sorted(row["path"] for row in cats if row["mood"] == mood)


def test_a_report_from_before_the_columns_is_still_read(run_cli, photos, tmp_path):
    """serve and --undo read a report of the columns before `breed` (an earlier version's)."""
    report = tmp_path / "old.csv"
    done = run_cli(photos, "--copy", "--out", tmp_path / "out", "--report", report, "-j", "1", "--no-cache")
    assert done.returncode == 0, done.stderr
    with open(report, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    cut = rows[0].index("breed")
    with open(report, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(row[:cut] for row in rows)
    with _client(default_model_path(), tmp_path, report) as client:
        assert len(client.get("/api/review", params={"token": "token-26"}).json()["entries"]) == len(rows) - 1
    assert run_cli("--undo", report).returncode == 0
    assert not any(path.is_file() for path in (tmp_path / "out").rglob("*"))
