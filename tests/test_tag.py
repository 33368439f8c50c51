"""`--tag`: XMP sidecars that exiftool (as digiKam, darktable and Lightroom would) reads back."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import need_tool
from shared_data import SHARED, requires

from notcat_sort.actions.tag import untag
from notcat_sort.content import sha256_file
from notcat_sort.report import run_key

SAMPLE = SHARED / "samples" / "orientation" / "Landscape_1.jpg"
CLI = Path(sys.executable).parent / "notcat-sort"

pytestmark = requires(SAMPLE)
need_tool("exiftool", "libimage-exiftool-perl")  # it reads the sidecars back, as digiKam would


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache (predictions) and data folder (tag undo records) for the CLI and in-process untag."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data")}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "IMG_0001.jpg")
    return folder


def run(env, *args):
    completed = subprocess.run([str(CLI), *map(str, args), "-j", "1"], env=env, capture_output=True, text=True)
    report = Path(args[args.index("--report") + 1])
    rows = list(csv.DictReader(report.open())) if report.exists() else []
    return completed, rows


def exif_read(path: Path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-XMP:Subject", "-XMP-notcat:all", str(path)],
                         capture_output=True, text=True, check=True).stdout
    record = json.loads(out)[0]
    subject = record.get("Subject", [])
    record["Subject"] = subject if isinstance(subject, list) else [subject]
    return record


def labels(sidecar: Path) -> list[str]:
    """The sidecar's keywords less a cat's breed and mood ones (the shipped model has the heads; they are
    tested in test_attributes.py): what these tests say of the label keywords, whatever the photo's mood."""
    return [subject for subject in exif_read(sidecar)["Subject"] if not subject.startswith(("cat/breed/", "cat/mood/"))]


def test_tag_creates_sidecar_and_leaves_image_in_place(photos, env, tmp_path):
    before = sha256_file(photos / "IMG_0001.jpg")
    done, rows = run(env, photos, "--tag", "--report", tmp_path / "r.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = photos / "IMG_0001.jpg.xmp"
    xmp = exif_read(sidecar)
    [row] = rows
    assert row["destination"] == str(sidecar) and row["status"] == "done"
    assert xmp["Subject"] == [row["label"]]
    assert abs(float(xmp["PCat"]) - float(row["p_cat"])) < 1e-4
    assert xmp["Model"].startswith("notcat-lite0")
    # Only what applies: the keyword it added, no empty cat-id keyword without --group-cats.
    assert xmp["Keyword"] == row["label"] and "CatKeyword" not in xmp, xmp
    assert sorted(p.name for p in photos.iterdir()) == ["IMG_0001.jpg", "IMG_0001.jpg.xmp"]
    assert sha256_file(photos / "IMG_0001.jpg") == before


def test_tag_merges_existing_sidecar_and_rerun_adds_nothing(photos, env, tmp_path):
    sidecar = photos / "IMG_0001.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Subject=holiday",
                    "-XMP-dc:Subject=beach", str(photos / "IMG_0001.jpg")], check=True)
    first, rows = run(env, photos, "--tag", "--report", tmp_path / "r1.csv")
    assert first.returncode == 0, first.stderr[-2000:]
    label = rows[0]["label"]
    assert exif_read(sidecar)["Subject"] == ["holiday", "beach", label]
    written = sidecar.read_bytes()

    again, rows = run(env, photos, "--tag", "--report", tmp_path / "r2.csv")
    assert again.returncode == 0
    assert rows[0]["status"] == "skipped"
    assert exif_read(sidecar)["Subject"] == ["holiday", "beach", label]
    assert sidecar.read_bytes() == written


def test_new_label_replaces_earlier_one_but_not_the_users_keywords(photos, env, tmp_path):
    sidecar = photos / "IMG_0001.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Subject=holiday",
                    str(photos / "IMG_0001.jpg")], check=True)
    run(env, photos, "--tag", "--threshold", "0", "--report", tmp_path / "r1.csv")  # everything is a cat
    assert labels(sidecar) == ["holiday", "cat"]
    done, rows = run(env, photos, "--tag", "--threshold", "1", "--uncertain", "0:0.99999",
                     "--report", tmp_path / "r2.csv")  # now unsure
    assert done.returncode == 0 and rows[0]["label"] == "unsure"
    assert labels(sidecar) == ["holiday", "unsure"]
    assert exif_read(sidecar)["Label"] == "unsure"


def test_a_keyword_the_user_had_is_kept_when_the_label_changes(photos, env, tmp_path):
    sidecar = photos / "IMG_0001.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Subject=cat",
                    str(photos / "IMG_0001.jpg")], check=True)
    run(env, photos, "--tag", "--threshold", "0", "--report", tmp_path / "r1.csv")
    assert labels(sidecar) == ["cat"]  # reused the existing Lightroom-style name
    assert not (photos / "IMG_0001.jpg.xmp").exists()
    run(env, photos, "--tag", "--threshold", "1", "--report", tmp_path / "r2.csv")
    assert labels(sidecar) == ["cat", "not-cat"]


def test_sidecar_name_replace_and_dry_run(photos, env, tmp_path):
    planned, rows = run(env, photos, "--tag", "--dry-run", "--sidecar-name", "replace", "--report", tmp_path / "r.csv")
    assert planned.returncode == 0
    assert rows[0]["status"] == "planned" and rows[0]["destination"] == str(photos / "IMG_0001.xmp")
    assert sorted(p.name for p in photos.iterdir()) == ["IMG_0001.jpg"]
    run(env, photos, "--tag", "--sidecar-name", "replace", "--report", tmp_path / "r2.csv")
    assert exif_read(photos / "IMG_0001.xmp")["Subject"]


def test_unreadable_sidecar_is_left_alone_and_reported(photos, env, tmp_path):
    sidecar = photos / "IMG_0001.jpg.xmp"
    sidecar.write_text("not xml <")
    done, rows = run(env, photos, "--tag", "--report", tmp_path / "r.csv")
    assert done.returncode == 1
    assert rows[0]["status"] == "error" and "not valid XML" in rows[0]["error"]
    assert sidecar.read_text() == "not xml <"


def test_untag_restores_previous_content_or_removes_created_sidecar(photos, env, tmp_path):
    shutil.copy(SAMPLE, photos / "IMG_0002.jpg")
    kept = photos / "IMG_0001.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(kept), "-XMP-dc:Subject=holiday",
                    str(photos / "IMG_0001.jpg")], check=True)
    original = kept.read_bytes()
    created = photos / "IMG_0002.jpg.xmp"
    run(env, photos, "--tag", "--threshold", "0", "--report", tmp_path / "r1.csv")
    run(env, photos, "--tag", "--threshold", "1", "--report", tmp_path / "r2.csv")
    assert labels(kept) == ["holiday", "not-cat"]

    first, second = run_key(tmp_path / "r1.csv"), run_key(tmp_path / "r2.csv")
    assert untag(photos / "IMG_0001.jpg", kept, second).status == "done"  # undo the second run ...
    assert labels(kept) == ["holiday", "cat"]
    assert untag(photos / "IMG_0001.jpg", kept, first).status == "done"  # ... then the first
    assert kept.read_bytes() == original
    assert untag(photos / "IMG_0001.jpg", kept, first).status == "skipped"  # nothing left to undo

    untag(photos / "IMG_0002.jpg", created, second)
    untag(photos / "IMG_0002.jpg", created, first)
    assert not created.exists()


def test_undo_of_an_older_tag_run_keeps_the_newer_runs_tag(photos, env, tmp_path):
    kept = photos / "IMG_0001.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(kept), "-XMP-dc:Subject=holiday",
                    str(photos / "IMG_0001.jpg")], check=True)
    original = kept.read_bytes()
    run(env, photos, "--tag", "--threshold", "0", "--report", tmp_path / "older.csv")
    run(env, photos, "--tag", "--threshold", "1", "--report", tmp_path / "newer.csv")

    older = subprocess.run([str(CLI), "--undo", str(tmp_path / "older.csv")], env=env, capture_output=True, text=True)

    assert older.returncode == 0, older.stderr
    assert exif_read(kept)["Subject"] == ["holiday", "not-cat"]  # the newer run's tag is still there
    newer = subprocess.run([str(CLI), "--undo", str(tmp_path / "newer.csv")], env=env, capture_output=True, text=True)
    assert newer.returncode == 0, newer.stderr
    assert kept.read_bytes() == original  # as before either run
    assert (tmp_path / "data" / "notcat-sort" / "tag-undo").is_dir()  # kept as data, not in the cache
    assert not (tmp_path / "cache" / "notcat-sort" / "tag-undo").exists()


def test_untag_after_the_user_edited_the_sidecar_keeps_the_edits(photos, env, tmp_path):
    run(env, photos, "--tag", "--threshold", "0", "--report", tmp_path / "r.csv")
    sidecar = photos / "IMG_0001.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject+=edited", str(sidecar)], check=True)
    outcome = untag(photos / "IMG_0001.jpg", sidecar, run_key(tmp_path / "r.csv"))
    assert outcome.status == "done" and "edited" in outcome.error
    xmp = exif_read(sidecar)
    assert xmp["Subject"] == ["edited"]
    assert "Label" not in xmp and "PCat" not in xmp
