"""The installed `notcat-sort` command, run as a subprocess on a real image tree.

No test here says which photo is a cat (the model's accuracy is measured by `training`, and
must not make these tests change with each new model): each checks that every report row
agrees with its own p_cat, the threshold and the band, and that the files on disk are where
the rows say.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from photos import photos
from PIL import Image, features
from prerequisites import need_that

from notcat_sort.content import sha256_file
from notcat_sort.model import card_path, default_model_path, load_card

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


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A photo tree: nested folders, a same-named file in two folders, every format converted
    from a JPEG with Pillow, a JPEG without extension, a hidden folder and a text file."""
    root = tmp_path / "photos"
    jpegs = iter(photos(len(IMAGES) + 1))
    for sub_path in IMAGES:
        target = root / sub_path
        target.parent.mkdir(parents=True, exist_ok=True)
        source = next(jpegs)
        suffix = target.suffix.lower()
        if suffix in ("", ".jpg"):
            shutil.copyfile(source, target)
        else:
            if suffix == ".webp":
                need_that(features.check("webp"), "this Pillow cannot write WebP")
            with Image.open(source) as image:
                image.convert("RGB").save(target, format={".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, suffix[1:].upper()))
    (root / ".thumbnails").mkdir()
    shutil.copyfile(next(jpegs), root / NOT_SCANNED[0])
    (root / NOT_SCANNED[1]).write_text("not an image, and not named like one\n")
    return root


def read_csv_file(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


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
    assert rows and set(rows[0]) >= REQUIRED_COLUMNS
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
    need_that(other.is_dir() and other.stat().st_dev != library.stat().st_dev, "no second filesystem at /dev/shm")
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


def test_the_shipped_card_gives_an_uncertain_band_around_its_threshold() -> None:
    card = load_card(default_model_path())
    assert card.uncertain_band is not None
    low, high = card.uncertain_band
    assert 0 < low < card.threshold < high < 1


def _with_uncertain_band(model: Path, band: dict | None) -> None:
    card = json.loads(card_path(model).read_text(encoding="utf-8"))
    card.pop("uncertain", None)
    card.update({"uncertain": band} if band is not None else {})
    card_path(model).write_text(json.dumps(card), encoding="utf-8")


def test_uncertain_without_a_value_takes_the_cards_band(run_cli, library: Path, model_copy: Path) -> None:
    _with_uncertain_band(model_copy, {"low": 0.0, "high": 1.0})  # a band that holds every photo
    for args in ((library, "--uncertain"), ("--uncertain", "card", library), (library, "--uncertain", "-j", "1")):
        result = run_cli(*args, "--model", model_copy, "--report", "-")
        assert result.returncode == 0, result.stderr
        assert {row["label"] for row in result.rows()} == {"unsure"} and "warning" not in result.stderr
    _with_uncertain_band(model_copy, {"low": 0.5, "high": 0.9})  # chosen round the card's threshold, not 0.3
    moved = run_cli(library, "--uncertain", "--threshold", "0.3", "--model", model_copy, "--report", "-")
    assert "warning: --uncertain 0.5:0.9 does not contain the threshold 0.3" in moved.stderr, moved.stderr
    mistaken = run_cli("--uncertain", library, "--model", model_copy)  # the PATH taken for the band
    assert mistaken.returncode == 2 and "--uncertain card" in mistaken.stderr
    _with_uncertain_band(model_copy, None)
    without = run_cli(library, "--uncertain", "--model", model_copy)
    assert without.returncode == 2 and "gives no band: give one as LOW:HIGH" in without.stderr


@pytest.mark.parametrize("band, warned", [("0.3:0.7", True), ("0.95:0.99", True), ("0.3:0.95", False)])
def test_a_band_that_misses_the_threshold_is_warned_about(run_cli, library: Path, band: str, warned: bool) -> None:
    result = run_cli(library, "--uncertain", band, "-j", "1", "--report", "-")
    assert result.returncode == 0, result.stderr
    warning = f"warning: --uncertain {band} does not contain the threshold {CARD_THRESHOLD:.4g}"
    assert (warning in result.stderr) == warned, result.stderr
    if warned:
        low, high = load_card(default_model_path()).uncertain_band or (None, None)
        assert f"the model card's band, {low:g}:{high:g}" in result.stderr
    assert "warning" not in run_cli(library, "--uncertain", band, "-q", "-j", "1", "--report", "-").stderr


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
    broken = library / "2020" / "broken.jpg"
    broken.write_text("this is text, not a JPEG")

    result = run_cli(library, "--copy", "-j", "1")

    assert result.returncode == 1
    rows = {row["path"]: row for row in result.rows()}
    row = rows.pop(str(broken))
    assert (row["label"], row["status"], row["destination"]) == ("error", "error", "")
    assert row["error"] and f"error: {broken}: {row['error']}" in result.stderr
    assert len(rows) == len(IMAGES) and {row["status"] for row in rows.values()} == {"done"}
    # The summary says each thing once: the failure is neither a label nor an action, and no unsure
    # count without --uncertain.
    assert "failed: 1" in result.stderr.splitlines()
    summary = [line for line in result.stderr.splitlines() if line.startswith(("labels: ", "actions: "))]
    assert len(summary) == 2 and "error" not in str(summary) and "unsure" not in result.stderr, result.stderr


def test_a_mistyped_path_is_a_usage_error_before_anything_runs(run_cli, library: Path, tmp_path: Path) -> None:
    missing = tmp_path / "Photoz"
    before = inventory(library)

    result = run_cli(library, missing, "--move")

    assert result.returncode == 2 and str(missing) in result.stderr and "does not exist" in result.stderr
    assert not missing.exists() and inventory(library) == before  # not even the good PATH was sorted
    assert not (tmp_path / "xdg-cache" / "notcat-sort" / "reports").exists()  # and no report anywhere


def test_a_file_given_as_path_is_sorted_into_its_own_folder(run_cli, library: Path) -> None:
    image = library / "2019" / "IMG_0001.jpg"

    result = run_cli(image, "--copy", "-j", "1")

    assert result.returncode == 0, result.stderr
    [row] = result.rows()
    assert row["destination"] == str(library / "2019" / row["label"] / "IMG_0001.jpg")
    assert sha256_file(Path(row["destination"])) == sha256_file(image)


@pytest.mark.parametrize("flags", [("--move", "--copy"), ("--tag", "--move"), ("--copy", "--link"),
                                   ("--link", "--tag")])
def test_two_actions_are_a_usage_error_naming_both(run_cli, library: Path, flags: tuple[str, str]) -> None:
    before = inventory(library)

    result = run_cli(library, *flags)

    assert result.returncode == 2 and all(flag in result.stderr for flag in flags), result.stderr
    assert inventory(library) == before


@pytest.mark.parametrize("options, named", [
    (("--move", "--sidecar-name", "replace"), "--sidecar-name"),
    (("--sidecar-name", "append"), "--sidecar-name"),  # even the default value, when given, is a mistake here
    (("--tag", "--with-raw"), "--with-raw"),
    (("--with-raw",), "--with-raw"),
    (("--tag", "--on-conflict", "skip"), "--on-conflict"),
    (("--tag", "--out", "elsewhere"), "--out"),
    (("--copy", "--remove-emptied-folders"), "--remove-emptied-folders"),
], ids=["sidecar-name-move", "sidecar-name-dry", "with-raw-tag", "with-raw-dry", "on-conflict-tag", "out-tag",
        "remove-emptied-copy"])
def test_an_option_for_another_mode_is_a_usage_error(run_cli, library: Path, options: tuple[str, ...],
                                                      named: str) -> None:
    before = inventory(library)

    result = run_cli(library, *options)

    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert inventory(library) == before


def test_an_out_that_cannot_be_written_is_refused_first_and_named(run_cli, library: Path, tmp_path: Path) -> None:
    """A --out below a file can never be made; the unwritable-for-a-user case is in test_bad_input."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = inventory(library)

    result = run_cli(library, "--copy", "--out", blocker / "sorted", "-j", "1")

    assert result.returncode == 2 and "--out" in result.stderr and "--report" not in result.stderr, result.stderr
    assert "not a folder" in result.stderr and "error: " not in result.stderr  # no file was tried
    assert inventory(library) == before


@pytest.mark.parametrize("args, complaint", [((), "PATH"), (("photos", "--uncertain", "0.7:0.3"), "LOW <= HIGH")])
def test_usage_errors_exit_2_and_say_what_to_change(run_cli, args: tuple[str, ...], complaint: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert complaint in result.stderr and result.stdout == ""


def test_report_dash_gives_csv_on_stdout_and_logs_on_stderr(run_cli, library: Path) -> None:
    result = run_cli(library, "--report", "-", "-j", "1")

    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split(",")
    assert set(header) >= REQUIRED_COLUMNS
    check_rows(result.rows(), library, library, "none", "planned")
    assert "path," not in result.stderr and "failed: 0" in result.stderr and "report: " not in result.stderr


def test_report_dash_of_a_run_that_changes_files_still_journals_to_a_file(run_cli, library: Path) -> None:
    result = run_cli(library, "--move", "--report", "-", "-j", "1")

    assert result.returncode == 0, result.stderr
    streamed = result.rows()
    check_rows(streamed, library, library, "move", "done")  # one final row per file, no journal rows
    [journal] = re.findall(r"^report: (.+)$", result.stderr, flags=re.MULTILINE)
    assert Path(journal).parent == library and read_csv_file(Path(journal)) == streamed
    undone = run_cli("--undo", journal)
    assert undone.returncode == 0 and all(Path(row["path"]).exists() for row in streamed)


def test_a_run_that_changes_nothing_leaves_no_report_in_the_photos(run_cli, library: Path, tmp_path: Path) -> None:
    first = run_cli(library, "--copy", "--out", tmp_path / "sorted", "-j", "1")
    assert first.returncode == 0 and first.report_path.parent == tmp_path / "sorted"
    after_first = inventory(tmp_path / "sorted")

    again = [run_cli(library, "--copy", "--out", tmp_path / "sorted", "-j", "1") for _ in range(2)]

    assert [run.returncode for run in again] == [0, 0]
    assert inventory(tmp_path / "sorted") == after_first  # no notcat-sort-...-1.csv piling up
    for run in again:
        assert run.report_path.is_relative_to(tmp_path / "xdg-cache")
        assert {row["status"] for row in run.rows()} == {"skipped"}
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli(empty, "--move", "--out", tmp_path / "new-out")
    assert nothing.returncode == 0 and not (tmp_path / "new-out").exists()  # not even the folder for the report


def test_remove_emptied_folders_after_a_move_and_undo_brings_them_back(run_cli, library: Path) -> None:
    (library / "scans" / "keep-me").mkdir()  # empty before the run: not the move's doing, stays
    folders_before = sorted(str(p.relative_to(library)) for p in library.rglob("*") if p.is_dir())

    result = run_cli(library, "--move", "--remove-emptied-folders", "-j", "1")

    assert result.returncode == 0, result.stderr
    left = {str(p.relative_to(library)) for p in library.rglob("*") if p.is_dir()}
    for emptied in ("2019", "2020", "2020/party", "scans/old"):
        assert emptied not in left
    assert {"scans", "scans/keep-me", ".thumbnails"} <= left  # not emptied by the move: kept
    undo = run_cli("--undo", result.report_path)
    assert undo.returncode == 0, undo.stderr
    assert sorted(str(p.relative_to(library)) for p in library.rglob("*") if p.is_dir()) == folders_before
    assert all((library / sub_path).is_file() for sub_path in IMAGES)


def test_dry_run_shows_where_things_would_go(run_cli, library: Path, tmp_path: Path) -> None:
    result = run_cli(library, "--out", tmp_path / "sorted", "-j", "1")

    assert result.returncode == 0, result.stderr
    rows = result.rows()
    lines = result.stderr.splitlines()
    counted = {}
    for line in lines[lines.index("would go to:") + 1:lines.index("for example:")]:
        count, folder = line.split()
        counted[folder] = int(count)
    expected = {}
    for row in rows:
        folder = str(tmp_path / "sorted" / row["label"])
        expected[folder] = expected.get(folder, 0) + 1
    assert counted == expected
    examples = [f"  {row['path']} -> {row['destination']}" for row in rows]
    shown = lines[lines.index("for example:") + 1:]
    assert any(line in examples for line in shown)
    assert f"report: {result.report_path}" in lines


def test_undo_of_a_dry_run_report_says_so(run_cli, library: Path) -> None:
    dry = run_cli(library, "-j", "1")

    result = run_cli("--undo", dry.report_path)

    assert result.returncode == 0 and "dry run" in result.stderr and "skipped" not in result.stderr, result.stderr
    assert "take its tags out of the sidecars" in " ".join(run_cli("--help").stdout.split())


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
    options_part, examples = result.stdout.split("Examples:")
    options = set(re.findall(r"^ +(?:-\w, )?(--[\w-]+)", options_part, flags=re.MULTILINE))
    assert {"--move", "--copy", "--link", "--out", "--report", "--jobs"} <= options
    lines = [line.strip() for line in examples.splitlines() if line.strip().startswith("notcat-sort ")]
    assert len(lines) >= 3
    for line in lines:
        used = {word for word in line.split("#")[0].split() if word.startswith("--")}
        assert used <= options, f"the example {line!r} uses options --help does not list"


SECTIONS = ("What to do", "Where things go", "Which photos", "Model and threshold", "Which cat", "Speed",
            "Watch a folder", "Cluster", "Undo", "Other options", "Commands")


def test_help_groups_the_options_and_lists_serve_as_a_command(run_cli) -> None:
    help_text = run_cli("--help").stdout.split("Examples:")[0]
    headings = [line.rstrip(":").split(" (")[0] for line in help_text.splitlines() if re.match(r"^[A-Z][\w ,()/-]*:$", line)]
    assert headings == list(SECTIONS), headings
    listed = re.findall(r"^ +(?:-\w, )?(--[\w-]+)", help_text, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)) > 25  # every option once
    commands = help_text.split("Commands:")[1]
    assert re.search(r"^  serve +\S", commands, flags=re.MULTILINE) and "notcat-sort serve [OPTIONS]" in help_text


def test_serve_help_needs_no_serve_extra(tmp_path: Path) -> None:
    """Without Starlette and uvicorn (as after `pip install .`), `serve --help` shows the help; running it
    says which extra is missing (exit status 2, no traceback)."""
    def without_extra(*args: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys; sys.modules.update(dict.fromkeys(['uvicorn', 'starlette'])); "
                f"from notcat_sort.cli import main; sys.argv = ['notcat-sort', *{list(args)!r}]; main()")
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    shown = without_extra("serve", "--help")
    assert shown.returncode == 0 and "--report" in shown.stdout and "--port" in shown.stdout, shown.stderr
    refused = without_extra("serve")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "needs the serve extra" in refused.stderr and "pip install 'notcat-sort[serve]'" in refused.stderr


def test_plain_lines_when_stderr_is_not_a_terminal(run_cli, library: Path) -> None:
    result = run_cli(library, "-j", "1")
    assert result.returncode == 0
    assert "\x1b[" not in result.stderr and "━" not in result.stderr
    summary = [line for line in result.stderr.splitlines() if "files so far" not in line]  # a slow run logs progress
    assert summary[0].startswith(f"{len(IMAGES)} files in ") and "/s)" in summary[0]
    assert any(line.startswith("labels: ") for line in summary) and "failed: 0" in summary


def on_a_terminal(cli: Path, env: dict[str, str], *args: object, stdout_too: bool = False) -> str:
    """Run the command with stderr (and with `stdout_too` stdout) on a pseudo-terminal, as when a
    person runs it; return what the terminal showed."""
    primary, secondary = pty.openpty()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "200"}
    process = subprocess.Popen([str(cli), *map(str, args)], stdin=subprocess.DEVNULL,
                               stdout=secondary if stdout_too else subprocess.DEVNULL, stderr=secondary, env=env)
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
    return screen.decode("utf-8", "replace")


@pytest.mark.parametrize("action, doing", [(None, "classifying"), ("--copy", "sorting")])
def test_rich_bar_and_summary_on_a_terminal(cli: Path, cli_env: dict[str, str], library: Path, tmp_path: Path,
                                            action: str | None, doing: str) -> None:
    """A live bar with img/s, labelled times and live label counts, then the summary."""
    args = [library, "-j", "1", "--report", tmp_path / "report.csv"] + ([action, "--out", tmp_path / "out"] if action else [])

    text = on_a_terminal(cli, cli_env, *args)

    assert "━" in text and "img/s" in text and "\x1b[" in text  # a drawn, coloured bar
    assert f"{len(IMAGES)}/{len(IMAGES)}" in text and doing in text
    assert "elapsed" in text and "remaining" in text
    labels = {row["label"] for row in read_csv_file(tmp_path / "report.csv")}
    counts = {label: sum(row["label"] == label for row in read_csv_file(tmp_path / "report.csv")) for label in labels}
    final = f"cat {counts.get('cat', 0)} · not-cat {counts.get('not-cat', 0)}"
    assert final in text and "unsure" not in text  # no unsure count without --uncertain
    assert f"{len(IMAGES)} files in " in text and "failed: 0" in text


def test_report_dash_on_a_terminal_is_not_mixed_into_a_progress_bar(cli: Path, cli_env: dict[str, str],
                                                                      library: Path) -> None:
    text = on_a_terminal(cli, cli_env, library, "-j", "1", "--report", "-", stdout_too=True)

    assert "━" not in text  # no bar redrawn between the CSV lines
    lines = [line for line in text.replace("\r", "").splitlines() if line.startswith(str(library))]
    assert len(lines) == len(IMAGES) and all(line.count(",") >= 6 for line in lines)


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


def test_a_model_that_is_not_the_one_its_card_describes_is_refused(run_cli, library: Path, model_copy: Path) -> None:
    model_copy.write_bytes(model_copy.read_bytes() + b"\x32\x05other")  # still a valid ONNX file, but another one

    result = run_cli(library, "--model", model_copy)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{model_copy} is not the model its card" in result.stderr and "sha256" in result.stderr
    assert result.stdout == "" and "report: " not in result.stderr
