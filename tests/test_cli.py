"""The installed `notcat-sort` command, run as a subprocess on a real image tree.

No test here says which photo is a cat (the model's accuracy is measured by `training`, and
must not make these tests change with each new model): each checks that every report row
agrees with its own p_cat, the threshold and the band, and that the files on disk are where
the rows say.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from PIL import Image, features

from notcat_sort.content import sha256_file
from notcat_sort.model import default_model_path, load_card

REQUIRED_COLUMNS = {"path", "label", "p_cat", "action", "destination", "status", "error"}
# Sub-paths of the images in the tree `library` builds; everything else there must be left alone.
IMAGES = (
    "2019/IMG_0001.jpg",
    "2020/IMG_0001.jpg",  # same name, other folder, other picture
    "2020/party/IMG_0002.png",
    "2020/party/IMG_0003.webp",
    "scans/old/scan.gif",
    "scans/old/scan.bmp",
    "scans/scan.tiff",
    "IMG_0004",  # a JPEG without extension, found by its content
)
NOT_SCANNED = (".thumbnails/IMG_0001.jpg", "notes.txt")
CARD_THRESHOLD = load_card(default_model_path()).threshold


def inventory(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones and reports included): sub-path -> content hash."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def real_jpegs(shared: Path, count: int) -> list[Path]:
    """Real JPEG photos of both labels (180 px), so the converted formats are real photos too."""
    pool = shared / "datasets" / "catnotcat"
    cats, others = sorted((pool / "cat").glob("petimages-*.jpg")), sorted((pool / "not-cat").glob("petimages-*.jpg"))
    picked = [photo for pair in zip(cats, others) for photo in pair][:count]
    if len(picked) < count:
        pytest.skip("not enough petimages photos in ../shared")
    return picked


@pytest.fixture
def library(tmp_path: Path, shared: Path) -> Path:
    """A photo tree: nested folders, a same-named file in two folders, every format converted
    from a real JPEG with Pillow, a JPEG without extension, a hidden folder and a text file."""
    root = tmp_path / "photos"
    jpegs = iter(real_jpegs(shared, len(IMAGES) + 1))
    for sub_path in IMAGES:
        target = root / sub_path
        target.parent.mkdir(parents=True, exist_ok=True)
        source = next(jpegs)
        suffix = target.suffix.lower()
        if suffix in ("", ".jpg"):
            shutil.copyfile(source, target)
        else:
            if suffix == ".webp" and not features.check("webp"):
                pytest.skip("this Pillow cannot write WebP")
            with Image.open(source) as image:
                image.convert("RGB").save(target, format={".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, suffix[1:].upper()))
    (root / ".thumbnails").mkdir()
    shutil.copyfile(next(jpegs), root / NOT_SCANNED[0])
    (root / NOT_SCANNED[1]).write_text("not an image, and not named like one\n")
    return root


def expected_label(p_cat: float, threshold: float, band: tuple[float, float] | None = None) -> str | None:
    """The label for a p_cat as printed (4 decimals); None when rounding makes it ambiguous."""
    edges = [threshold] + (list(band) if band else [])
    if any(abs(p_cat - edge) <= 5e-5 for edge in edges):
        return None
    if band and band[0] <= p_cat <= band[1]:
        return "unsure"
    return "cat" if p_cat >= threshold else "not-cat"


def check_rows(rows: list[dict[str, str]], root: Path, out: Path, action: str, status: str,
               threshold: float = CARD_THRESHOLD, band: tuple[float, float] | None = None) -> None:
    """One row per image and none for anything else; each row consistent with itself."""
    assert rows and REQUIRED_COLUMNS <= set(rows[0])
    assert sorted(row["path"] for row in rows) == sorted(str(root / sub) for sub in IMAGES)
    for row in rows:
        p_cat = float(row["p_cat"])
        assert 0.0 <= p_cat <= 1.0
        assert row["label"] == (expected_label(p_cat, threshold, band) or row["label"]), row
        sub_path = Path(row["path"]).relative_to(root)
        assert row["destination"] == str(out / row["label"] / sub_path), row
        assert (row["action"], row["status"], row["error"]) == (action, status, ""), row


@pytest.mark.parametrize(
    "action, to_out",
    [(None, False), ("move", False), ("copy", False), ("link", False), (None, True), ("move", True)],
    ids=["dry-run", "move", "copy", "link", "dry-run-out", "move-out"],
)
def test_action_puts_every_image_where_its_row_says(run_cli, library: Path, tmp_path: Path,
                                                     action: str | None, to_out: bool) -> None:
    before = inventory(library)
    out = tmp_path / "sorted" if to_out else library
    args = [library, "-j", "2" if action is None else "1"]
    args += [f"--{action}"] if action else []
    args += ["--out", out] if to_out else []

    result = run_cli(*args)

    assert result.returncode == 0, result.stderr
    rows = result.rows()
    check_rows(rows, library, out, action or "none", "done" if action else "planned")
    if action is None:  # a dry run changes nothing, not even the output folder: its report goes to the cache
        assert inventory(library) == before
        assert not (tmp_path / "sorted").exists()
        assert result.report_path.is_relative_to(tmp_path / "xdg-cache")
        assert "nothing was changed; add --move, --copy or --link" in result.stderr
        return
    assert result.report_path.parent == out and result.report_path.name.startswith("notcat-sort-")
    for row in rows:
        source, destination = Path(row["path"]), Path(row["destination"])
        original = before[str(source.relative_to(library))]
        assert sha256_file(destination) == original
        assert source.exists() == (action != "move")
        if action == "link":
            assert not destination.is_symlink() and os.path.samefile(source, destination)
    for sub_path in NOT_SCANNED:
        assert sha256_file(library / sub_path) == before[sub_path]


def test_link_across_filesystems_falls_back_to_symlinks(run_cli, library: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == library.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    out = Path(__import__("tempfile").mkdtemp(dir=other, prefix="notcat-cli-"))
    try:
        result = run_cli(library, "--link", "--out", out, "-j", "1")
        assert result.returncode == 0, result.stderr
        rows = result.rows()
        check_rows(rows, library, out, "link", "done")
        for row in rows:
            destination = Path(row["destination"])
            assert destination.is_symlink() and destination.resolve() == Path(row["path"]).resolve()
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize("action", ["move", "copy"])
def test_second_run_does_not_resort_the_output_folders(run_cli, library: Path, action: str) -> None:
    first = run_cli(library, f"--{action}", "-j", "1")
    assert first.returncode == 0, first.stderr
    after_first = inventory(library)

    second = run_cli(library, f"--{action}", "-j", "1", "--report", library.parent / "second.csv")

    assert second.returncode == 0, second.stderr
    rows = second.rows()
    assert not any(Path(row["path"]).parts[len(library.parts)] in ("cat", "not-cat", "unsure") for row in rows)
    if action == "move":  # everything was moved away: nothing left to find
        assert rows == []
    else:  # the originals are found again, and their copies are recognised
        assert len(rows) == len(IMAGES)
        assert {(row["status"], row["error"]) for row in rows} == {("skipped", "already sorted: an identical copy is there")}
    assert inventory(library) == after_first


def test_uncertain_band_goes_to_unsure(run_cli, library: Path, tmp_path: Path) -> None:
    dry = run_cli(library, "-j", "1", "--report", "-")
    probabilities = sorted(float(row["p_cat"]) for row in dry.rows())
    # From the lowest to the median, so at least half are in it; widened past the report's rounding.
    band = (max(0.0, round(probabilities[0] - 1e-4, 4)), min(1.0, round(statistics.median(probabilities) + 1e-4, 4)))
    out = tmp_path / "sorted"

    result = run_cli(library, "--copy", "--out", out, "--uncertain", f"{band[0]}:{band[1]}", "-j", "1")

    assert result.returncode == 0, result.stderr
    rows = result.rows()
    check_rows(rows, library, out, "copy", "done", band=band)
    unsure = {Path(row["destination"]) for row in rows if row["label"] == "unsure"}
    assert len(unsure) >= len(IMAGES) // 2
    assert {p for p in (out / "unsure").rglob("*") if p.is_file()} == unsure


@pytest.mark.parametrize("threshold", [0, 1])
def test_threshold_overrides_the_model_card(run_cli, library: Path, tmp_path: Path, threshold: int) -> None:
    out = tmp_path / "sorted"
    result = run_cli(library, "--copy", "--out", out, "--threshold", threshold, "-j", "1")

    assert result.returncode == 0, result.stderr
    rows = result.rows()
    check_rows(rows, library, out, "copy", "done", threshold=threshold)
    if threshold == 0:
        assert {row["label"] for row in rows} == {"cat"}
        assert not (out / "not-cat").exists()
    else:  # only a probability that prints as 1.0000 could reach 1
        assert all(row["label"] == "not-cat" for row in rows if float(row["p_cat"]) < 0.9999)


def test_a_bad_file_is_an_error_row_and_the_exit_status_says_so(run_cli, library: Path) -> None:
    (library / "2020" / "broken.jpg").write_text("this is text, not a JPEG")
    missing = library.parent / "no-such-folder"

    result = run_cli(library, missing, "--copy", "-j", "1")

    assert result.returncode == 1
    rows = {row["path"]: row for row in result.rows()}
    for path in (library / "2020" / "broken.jpg", missing):
        row = rows.pop(str(path))
        assert (row["label"], row["status"], row["destination"]) == ("error", "error", "")
        assert row["error"] and f"error: {path}: {row['error']}" in result.stderr
    assert len(rows) == len(IMAGES) and {row["status"] for row in rows.values()} == {"done"}
    assert "failed: 2" in result.stderr


def test_a_mistyped_path_is_an_error_not_a_new_empty_folder(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "Photso"

    result = run_cli(missing, "--move")

    assert result.returncode == 1 and not missing.exists()
    [row] = result.rows()
    assert (row["path"], row["label"], row["status"]) == (str(missing), "error", "error")
    assert "failed: 1" in result.stderr


@pytest.mark.parametrize("args, complaint", [((), "PATH"), (("photos", "--uncertain", "0.7:0.3"), "LOW <= HIGH")])
def test_usage_errors_exit_2_and_say_what_to_change(run_cli, args: tuple[str, ...], complaint: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert complaint in result.stderr and result.stdout == ""


def test_report_dash_gives_csv_on_stdout_and_logs_on_stderr(run_cli, library: Path) -> None:
    result = run_cli(library, "--move", "--report", "-", "-j", "1")

    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split(",")
    assert REQUIRED_COLUMNS <= set(header)
    check_rows(result.rows(), library, library, "move", "done")  # one final row per file, no journal rows
    assert "path," not in result.stderr and "failed: 0" in result.stderr and result.report_path is None
    assert not [name for name in inventory(library) if name.endswith(".csv")]  # no report file besides


def test_quiet_prints_only_errors(run_cli, library: Path) -> None:
    quiet = run_cli(library, "-q", "-j", "1")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    (library / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")

    result = run_cli(library, "--quiet", "-j", "1", "--report", library.parent / "report.csv")

    assert result.returncode == 1
    error = next(row["error"] for row in result.rows() if row["label"] == "error")
    assert result.stderr.splitlines() == [f"error: {library / 'broken.png'}: {error}"]


def test_help_shows_examples_that_use_real_options(run_cli) -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    options_part, examples = result.stdout.split("Options:")[1].split("Examples:")
    options = set(re.findall(r"^ +(?:-\w, )?(--[\w-]+)", options_part, flags=re.MULTILINE))
    assert {"--move", "--copy", "--link", "--out", "--report", "--jobs"} <= options
    lines = [line.strip() for line in examples.splitlines() if line.strip().startswith("notcat-sort ")]
    assert len(lines) >= 3
    for line in lines:
        used = {word for word in line.split("#")[0].split() if word.startswith("--")}
        assert used <= options, f"the example {line!r} uses options --help does not list"


def test_plain_lines_when_stderr_is_not_a_terminal(run_cli, library: Path) -> None:
    result = run_cli(library, "-j", "1")
    assert result.returncode == 0
    assert "\x1b[" not in result.stderr and "━" not in result.stderr
    summary = result.stderr.splitlines()
    assert summary[0].startswith(f"{len(IMAGES)} files in ") and "/s)" in summary[0]
    assert any(line.startswith("labels: ") for line in summary) and "failed: 0" in summary


def test_rich_bar_and_summary_on_a_terminal(cli: Path, cli_env: dict[str, str], library: Path) -> None:
    """stderr on a pseudo-terminal, as when a person runs it: a live bar with img/s, then the summary."""
    primary, secondary = pty.openpty()
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen([str(cli), str(library), "-j", "1"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal closed when the command exited
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert process.wait(timeout=120) == 0
    text = screen.decode("utf-8", "replace")
    assert "━" in text and "img/s" in text and "\x1b[" in text  # a drawn, coloured bar
    assert f"{len(IMAGES)}/{len(IMAGES)}" in text
    assert f"{len(IMAGES)} files in " in text and "failed: 0" in text


def test_report_never_clobbers_a_file_that_is_not_a_report(run_cli, library: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.csv"
    notes.write_text("my own notes\n")
    refused = run_cli(library, "--report", notes)
    assert refused.returncode == 2 and "--report" in refused.stderr and "not a notcat-sort report" in refused.stderr
    assert notes.read_text() == "my own notes\n"

    fifo = tmp_path / "report.fifo"  # like /dev/null or /dev/stdout: written to, never replaced by a file
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    streamed = run_cli(library, "-j", "1", "--report", fifo)
    received = reader.communicate(timeout=60)[0]
    assert streamed.returncode == 0, streamed.stderr
    assert fifo.is_fifo() and len(received.splitlines()) == len(IMAGES) + 1
