"""The `notcat-sort` command: parse options, build the pipeline, pick a view, set the exit status."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from notcat_sort import __version__
from notcat_sort.actions import Action, OnConflict
from notcat_sort.actions.unwritable import read_only_problem
from notcat_sort.cache import default_cache_path
from notcat_sort.cats import NamesError, load_head, names_file_for, read_names
from notcat_sort.classify import ClassifySettings, default_jobs
from notcat_sort.cluster import Cluster, ClusterError, ClusterSpec, MissingExtra, require_extra
from notcat_sort.decide import Policy
from notcat_sort.decode import DEFAULT_MAX_PIXELS
from notcat_sort.known_cats import KnownCatsError, Learned, learn
from notcat_sort.model import ModelCard, ModelError, Trait, default_model_path, load_card
from notcat_sort.output import Preview, View
from notcat_sort.output.plain import PlainView
from notcat_sort.pipeline import SortSettings, StopFlag, sort_paths
from notcat_sort.report import ReportLost, ReportWriter, Status, data_reports_folder, final_rows
from notcat_sort.scan import scan
from notcat_sort.sidecars import SidecarName
from notcat_sort.undo import undo, undo_report_path

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

EPILOG = """\b
Examples:
  notcat-sort ~/Photos                      # dry run: classify and report, change nothing
  notcat-sort ~/Photos --move               # move into ~/Photos/cat and ~/Photos/not-cat
  notcat-sort ~/Photos --move --remove-emptied-folders
  notcat-sort ~/Photos --copy --out ~/Sorted --uncertain   # doubtful photos to unsure/ (the card's band)
  notcat-sort ~/Photos --move --dry-run     # show where each file would go
  notcat-sort ~/Photos --tag                # leave files in place, add cat/not-cat to XMP sidecars
  notcat-sort ~/Photos --copy --out ~/Sorted --breed-folders   # cat/Siamese/..., cat/domestic/...
  notcat-sort ~/Photos --copy --out ~/Sorted --group-cats      # cat/cat-1/..., cat/cat-2/..., cat/unknown/...
  notcat-sort ~/Photos --copy --out ~/Sorted --group-cats --cat-names REPORT.cats.toml
  notcat-sort ~/Photos --copy --out ~/Sorted --group-cats --known-cats ~/my-cats   # ~/my-cats/Tom/*.jpg: cat/Tom/...
  notcat-sort --undo ~/Photos/notcat-sort-20261122-101500.csv
  notcat-sort --watch ~/Downloads --move    # keep running: sort each image as it arrives
  notcat-sort serve --report REPORT.csv     # a local web page to check photos and correct a run
  notcat-sort /mnt/nas/photos --move --cluster tcp://scheduler:8786   # classify on a Dask cluster

\b
A file given as PATH is sorted into cat/ and not-cat/ in its own folder (or under --out).

\b
Exit status: 0 when every file was handled, 1 when any file failed (see the report's
error column), 2 for a usage error, 130 when interrupted. --watch runs until Ctrl-C or
SIGTERM stops it, and then exits 0, or 1 if any file failed.
"""


def _learn_known_cats(folder: Path, settings: SortSettings) -> Learned:
    """The known cats of --known-cats, embedded and fitted before the run (a usage error for a bad folder)."""
    card = settings.classify.card
    try:
        return learn(folder, settings.classify, load_head(card.path, card.sha256))
    except KnownCatsError as error:
        raise click.BadParameter(str(error), param_hint="--known-cats") from None


def _describe_known_cats(folder: Path, learned: Learned) -> str:
    cats = ", ".join(f"{name} ({count})" for name, count in learned.photos.items()) or "none: no photo in it"
    unreadable = "".join(f"; cannot use {path}: {why}" for path, why in learned.unreadable)
    return f"known cats from {folder}: {cats}{unreadable}"


CARD_BAND = "card"  # --uncertain without a value (or `--uncertain card`): the model card's band


def _parse_band(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | str | None:
    if value is None or value == CARD_BAND:
        return value
    try:
        low, high = (float(part) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected LOW:HIGH, for example 0.8:0.95, or no value for the model card's band "
                                 f"(then put it after the PATHs, or write --uncertain {CARD_BAND}), not {value!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise click.BadParameter("need 0 <= LOW <= HIGH <= 1")
    return low, high


def _unsure_band(given: tuple[float, float] | str | None, card: ModelCard, threshold: float,
                 quiet: bool) -> tuple[float, float] | None:
    """The band --uncertain asks for (the card's, for CARD_BAND), with a warning when it does not hold the
    threshold (a given band, or the card's with another --threshold): the photos between the two would
    then be sorted with no doubt raised, the ones most likely wrong."""
    if given is None:
        return None
    if given == CARD_BAND and card.uncertain_band is None:
        raise click.BadParameter(f"the card of {card.path} gives no band: give one as LOW:HIGH", param_hint="--uncertain")
    band = card.uncertain_band if given == CARD_BAND else given
    assert isinstance(band, tuple)
    low, high = band
    if not low <= threshold <= high and not quiet:
        side, other = ("not-cat/", f"{high:g} and {threshold:.4g}") if high < threshold else ("cat/", f"{threshold:.4g} and {low:g}")
        suggestion = (f"; --uncertain without a value takes the model card's band, {card.uncertain_band[0]:g}:"
                      f"{card.uncertain_band[1]:g}" if card.uncertain_band and given != CARD_BAND else "")
        click.echo(f"warning: --uncertain {low:g}:{high:g} does not contain the threshold {threshold:.4g}: photos "
                   f"between {other} go to {side} as if they were sure{suggestion}", err=True)
    return band


def _dry_run_reports() -> Path:
    """Where a run that changes no files keeps its report, so that nothing in the photos changes."""
    return default_cache_path().parent / "reports"


def _stamped_report(folder: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, number = folder / f"notcat-sort-{stamp}.csv", 1
    while path.exists():
        path, number = folder / f"notcat-sort-{stamp}-{number}.csv", number + 1
    return path


def _sorted_into(root: Path) -> Path:
    """The folder a PATH sorts into (without --out): itself, or for a file its folder."""
    root = root.absolute()
    return root if root.is_dir() else root.parent


def _default_report(settings: SortSettings, roots: list[Path]) -> Path:
    """Beside the sorted files when files change (the journal --undo reads); in the user's cache
    folder for a dry run, so that nothing in the photos changes."""
    return _stamped_report(settings.output_base(_sorted_into(roots[0])) if settings.changes_files
                           else _dry_run_reports())


def _keep_out_of_the_photos(report: Path, created: list[Path], names_file: Path | None) -> Path:
    """A run that changed nothing moves its report (and its cat names file) from the user's folders
    to the cache's reports folder (and removes the folders made only to hold it): a no-op cron job
    leaves no trace."""
    _dry_run_reports().mkdir(parents=True, exist_ok=True)
    kept = shutil.move(report, _stamped_report(_dry_run_reports()))
    if names_file is not None and names_file.exists():
        shutil.move(names_file, names_file_for(Path(kept)))
    for folder in created:
        try:
            os.rmdir(folder)
        except OSError:
            break
    return Path(kept)


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _check_destinations(settings: SortSettings, roots: list[Path]) -> None:
    """Refuse, before any file is read, an output folder this process cannot create or write in
    (else every file would fail one by one)."""
    if not settings.changes_files:
        return
    for base in [settings.out] if settings.out is not None else [_sorted_into(root) for root in roots]:
        missing = _missing_folders(base)
        existing = missing[-1].parent if missing else base
        if not existing.is_dir():
            problem = f"{existing} is not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = read_only_problem(existing) or f"cannot write in {existing}: permission denied"
        else:
            continue
        if settings.out is not None:
            raise click.BadParameter(problem, param_hint="--out")
        raise click.BadParameter(f"{problem}; sort elsewhere with --out DIR", param_hint="PATH")


def _dry_run_hint(settings: SortSettings) -> list[str]:
    if settings.changes_files:
        return []
    to_do = f"drop --dry-run to {settings.action}" if settings.action else "add --move, --copy or --link to sort"
    return [f"dry run: nothing was changed; {to_do}"]


def _install_stop_handlers(stop: StopFlag, log) -> None:
    def request_stop(signum: int, frame: object) -> None:
        if stop.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop.requested = True
        log(f"{signal.Signals(signum).name}: finishing the file in hand, then stopping (again to abort)")

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def _cluster(address: str | None, send_bytes: bool) -> Cluster | None:
    """The cluster --cluster names, not connected yet; usage errors for a bad address or a missing extra."""
    if address is None:
        if send_bytes:
            raise click.UsageError("--cluster-send-bytes goes with --cluster")
        return None
    if click.get_current_context().get_parameter_source("jobs") is not ParameterSource.DEFAULT:
        raise click.UsageError("--jobs sets the threads of a local run; with --cluster the workers' threads classify")
    try:
        spec = ClusterSpec.parse(address, send_bytes)
        require_extra()
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--cluster") from None
    except MissingExtra as error:
        raise click.UsageError(str(error)) from None
    return Cluster(spec)


def _connect(cluster: Cluster) -> None:
    """Connect (or start a LocalCluster) now, once the command is known to be sound; closed when it ends."""
    try:
        cluster.__enter__()
    except ClusterError as error:
        raise click.ClickException(str(error)) from None
    click.get_current_context().call_on_close(cluster.__exit__)


def _report_moved(log: Callable[[str], None]) -> Callable[[Path, Path, str], None]:
    def moved(old: Path, new: Path, why: str) -> None:
        log(f"the report cannot grow where it was ({old}: {why}); it goes on, with every row so far, in {new}")

    return moved


def _undo(report: Path, quiet: bool) -> None:
    """Run --undo, log what failed and a summary on stderr, and exit. Its own record is opened
    first: an undo that cannot write it changes nothing."""
    rows = final_rows(report)
    if rows and all(row.status == Status.PLANNED or row.action == "none" for row in rows):
        if not quiet:
            click.echo(f"undo: {report} is the report of a dry run: it changed nothing, so there is nothing "
                       "to undo", err=True)
        sys.exit(0)

    def log(message: str) -> None:
        click.echo(message, err=True)

    undo_report = undo_report_path(report)
    try:
        writer = ReportWriter(undo_report, fallback=data_reports_folder(), on_move=_report_moved(log))
    except OSError as error:
        log(f"undo: cannot write its record {undo_report} ({error.strerror or error}): nothing was undone")
        sys.exit(EXIT_FAILED)
    statuses: Counter[str] = Counter()
    try:
        for row in undo(report, writer):
            statuses[row.status] += 1
            if row.status == Status.ERROR:
                log(f"error: {row.destination or row.path}: {row.error}")
    except ReportLost as error:
        log(f"undo: stopped, {error.strerror}; what is undone so far is on disk: run it again when there is room")
        statuses[Status.ERROR] += 1
    finally:
        writer.close()
    if not quiet:
        summary = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        log(f"undo: {summary or 'nothing recorded'}\nreport: {writer.path}")
    sys.exit(EXIT_FAILED if statuses[Status.ERROR] else 0)


def _note_action(ctx: click.Context, param: click.Parameter, given: bool) -> None:
    """Collect the action flags given, so that two of them are a usage error, not "the last wins"."""
    if given:
        ctx.meta.setdefault("notcat_actions", []).append(Action(param.name))


def _chosen_action(ctx: click.Context) -> Action | None:
    actions: list[Action] = ctx.meta.get("notcat_actions", [])
    if len(actions) > 1:
        raise click.UsageError(f"{' and '.join(f'--{action}' for action in actions)} are different actions: "
                               "choose one")
    return actions[0] if actions else None


# Options that mean something only with some actions: option -> (the actions, what to say).
_NEEDS_ACTION = {
    "sidecar_name": ((Action.TAG,), "--sidecar-name names the sidecars --tag writes"),
    "with_raw": ((Action.MOVE, Action.COPY, Action.LINK),
                 "--with-raw carries RAW files with --move, --copy or --link; "
                 "with --tag each RAW file that is scanned is tagged on its own"),
    "on_conflict": ((Action.MOVE, Action.COPY, Action.LINK),
                    "--on-conflict is for --move, --copy or --link (tagging merges into the sidecar)"),
    "out": ((None, Action.MOVE, Action.COPY, Action.LINK), "--out is where --move, --copy or --link sort to; "
                                                           "--tag leaves every image where it is"),
    "remove_emptied_folders": ((Action.MOVE,), "--remove-emptied-folders goes with --move"),
    "breed_folders": ((None, Action.MOVE, Action.COPY, Action.LINK),
                      "--breed-folders sorts cat photos into folders with --move, --copy or --link; --tag writes "
                      "the breed as a keyword anyway"),
}


def _check_options_fit(ctx: click.Context, action: Action | None) -> None:
    for name, (actions, complaint) in _NEEDS_ACTION.items():
        if action not in actions and ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            raise click.UsageError(complaint)


# The sections of --help, each option in one (by parameter name); the rest go under "Other options".
OPTION_GROUPS = (
    ("What to do (without one, nothing changes)", ("move", "copy", "link", "tag", "dry_run")),
    ("Where things go", ("out", "breed_folders", "report_path", "on_conflict", "remove_emptied_folders", "with_raw",
                         "sidecar_name")),
    ("Which photos", ("max_pixels", "full_decode")),
    ("Model and threshold", ("model", "threshold", "uncertain")),
    ("Which cat", ("group_cats", "cat_names", "known_cats")),
    ("Speed", ("jobs", "batch_size", "no_cache")),
    ("Watch a folder", ("watch_dir", "settle", "polling")),
    ("Cluster", ("cluster_address", "cluster_send_bytes")),
    ("Undo", ("undo_path",)),
)


class _SortOrServe(click.Command):
    """`notcat-sort serve ...` is the web app (see `notcat-sort serve --help`); anything else sorts.
    (A folder named `serve` is sorted as `./serve`.)"""

    def main(self, args=None, prog_name=None, **extra):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        if args[:1] != ["serve"]:
            return super().main(args, prog_name, **extra)
        from notcat_sort.serve.command import serve  # its --help needs no extra; running it says if one is missing

        return serve.main(args[1:], f"{prog_name or 'notcat-sort'} serve", **extra)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] PATH...")
        formatter.write_usage(f"{ctx.command_path} serve", "[OPTIONS]", prefix="   or: ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options in groups (OPTION_GROUPS), then the command `serve`."""
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)
                   if isinstance(param, click.Option)}
        for title, names in OPTION_GROUPS:
            with formatter.section(title):
                formatter.write_dl([record for name in names if (record := records.pop(name, None))])
        with formatter.section("Other options"):
            formatter.write_dl([record for record in records.values() if record])
        with formatter.section("Commands"):
            formatter.write_dl([("serve", "A local web page and API: check photos, review and correct a run "
                                          "(notcat-sort serve --help)")])


@click.command(cls=_SortOrServe, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--move", is_flag=True, expose_value=False, callback=_note_action,
              help="Move each image into cat/, not-cat/ (or unsure/).")
@click.option("--copy", is_flag=True, expose_value=False, callback=_note_action,
              help="Copy each image, leaving the original.")
@click.option("--link", is_flag=True, expose_value=False, callback=_note_action,
              help="Hard-link each image (symlink across filesystems).")
@click.option("--tag", is_flag=True, expose_value=False, callback=_note_action,
              help="Leave each image in place; add its label (and a cat's breed and mood, where the model "
                   "gives them) to the keywords of its XMP sidecar.")
@click.option("--remove-emptied-folders", is_flag=True,
              help="With --move: remove the source folders the move left empty (journalled: --undo "
                   "recreates them).")
@click.option("--sidecar-name", type=click.Choice([naming.value for naming in SidecarName]), default="append",
              show_default=True,
              help="Name for a new XMP sidecar with --tag: IMG_1.jpg.xmp (append) or IMG_1.xmp (replace). "
                   "An existing sidecar of either name is used as it is.")
@click.option("--with-raw", is_flag=True,
              help="Carry each image's RAW partner (IMG_1.CR2 beside IMG_1.JPG) with it; "
                   "XMP and AAE sidecars always go with their image.")
@click.option("--group-cats", is_flag=True,
              help="Tell individual cats apart: cat photos go to cat/<cat-id>/ (cat/unknown/ when unsure), "
                   "--tag adds the keyword cat/<cat-id>, the report gets a cat_id. Writes REPORT.cats.toml "
                   "beside the report, for naming the cats.")
@click.option("--cat-names", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="NAMES.toml",
              help="With --group-cats: names for the cats (cat-3 = \"Marmalade\"), e.g. a REPORT.cats.toml "
                   "filled in; a name sticks to its cat in later runs.")
@click.option("--known-cats", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR",
              help="With --group-cats: a folder per cat you know, named as the cat, holding example photos of it "
                   "(the review page keeps one per library). A photo confidently one of them goes to cat/<name>/; "
                   "the others are grouped as before. Each example added makes the next run better.")
@click.option("--breed-folders", is_flag=True,
              help="Sort cat photos by breed: cat/Siamese/..., and cat/domestic/... where the model names no "
                   "breed with confidence (most cats). Needs a model with breeds; not with --group-cats, which "
                   "sorts them by individual cat.")
@click.option("--dry-run", is_flag=True, help="With an action: show what it would do, change nothing.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Sort into OUT/cat, OUT/not-cat instead of into each PATH.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX model with its card (.json) beside it. Default: the shipped model.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Cat probability from which an image is a cat. Default: the model card's.")
@click.option("--uncertain", metavar="[LOW:HIGH]", is_flag=False, flag_value=CARD_BAND, callback=_parse_band,
              help="Send images whose cat probability is in [LOW, HIGH] to unsure/. Without a value: the model "
                   "card's band around its threshold, chosen on photos from sources the model never saw so that "
                   "cat/ and not-cat/ get the rest with the cat precision and recall the card states.")
@click.option("--on-conflict", type=click.Choice([mode.value for mode in OnConflict]), default="rename",
              show_default=True, help="When a different file already has the destination name.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="CSV report (and undo journal); '-' for stdout (a run that changes files still journals to "
                   "the default file). Default: a timestamped file in the output folder, or for a dry run (or "
                   "a run that changed nothing) in the user cache folder.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=default_jobs, show_default="all cores",
              help="Threads that read, decode and classify.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Images per model call.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this (decompression bombs).")
@click.option("--full-decode", is_flag=True,
              help="Always decode the image itself: never decide a JPEG from its EXIF thumbnail (the fast "
                   "path, used where the model card gives it a band and the thumbnail looks current).")
@click.option("--no-cache", is_flag=True,
              help="Do not read or write the prediction cache (in the user cache folder; it lets a re-run, "
                   "or a run over moved or renamed files, skip classifying what it has seen).")
@click.option("--undo", "undo_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Put back what the run that wrote this report did: move files back, remove copies and "
                   "links, take its tags out of the sidecars.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--watch", "watch_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Keep running: sort what is in DIR, then each image that lands there, until Ctrl-C or "
                   "SIGTERM. Report default: DIR/notcat-sort-watch.csv, which is also the restart journal.")
@click.option("--settle", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True, metavar="SECONDS",
              help="With --watch: how long a new file's size and time must stay unchanged before it is sorted.")
@click.option("--polling", is_flag=True,
              help="With --watch: poll for changes instead of inotify (network filesystems miss remote writes).")
@click.option("--cluster", "cluster_address", metavar="ADDRESS",
              help="Classify on a Dask cluster: tcp://HOST:PORT of its scheduler, or local:N to start N worker "
                   "processes here. Files are changed only here. Needs the cluster extra "
                   "(pip install 'notcat-sort[cluster]').")
@click.option("--cluster-send-bytes", is_flag=True,
              help="With --cluster: send each file's bytes to the workers, for workers that cannot read the "
                   "files at the same path (no shared storage).")
@click.version_option(__version__, prog_name="notcat-sort")
def main(paths: tuple[Path, ...], remove_emptied_folders: bool, sidecar_name: str, with_raw: bool,
         breed_folders: bool, group_cats: bool, cat_names: Path | None, known_cats: Path | None, dry_run: bool,
         out: Path | None, model: Path | None,
         threshold: float | None, uncertain: tuple[float, float] | str | None, on_conflict: str,
         report_path: Path | None, jobs: int, batch_size: int, max_pixels: int, full_decode: bool, no_cache: bool,
         undo_path: Path | None, quiet: bool, watch_dir: Path | None, settle: float, polling: bool,
         cluster_address: str | None, cluster_send_bytes: bool) -> None:
    """Sort the images under PATHS into cat/ and not-cat/ and write a CSV report of every decision.

    Without --move, --copy, --link or --tag nothing is changed: every image is classified and the
    report says where it would go. Nothing is ever overwritten, and every run can be undone
    with --undo REPORT.
    """
    ctx = click.get_current_context()
    action = _chosen_action(ctx)
    if undo_path is not None:
        if paths or action or watch_dir:
            raise click.UsageError("--undo takes only the report: drop the PATHS, --watch and --move/--copy/--link/--tag")
        _undo(undo_path, quiet)
    if watch_dir is not None and paths:
        raise click.UsageError("--watch takes one folder: give no other PATHS")
    if not paths and watch_dir is None:
        raise click.UsageError("give at least one PATH to sort")
    settle_given = ctx.get_parameter_source("settle") is not ParameterSource.DEFAULT
    if watch_dir is None and (polling or settle_given):
        raise click.UsageError("--settle and --polling go with --watch DIR")
    _check_options_fit(ctx, action)
    if cat_names is not None and not group_cats:
        raise click.UsageError("--cat-names names the cats --group-cats finds: add --group-cats")
    if known_cats is not None and not group_cats:
        raise click.UsageError("--known-cats names cat photos by individual cat: add --group-cats")
    if breed_folders and group_cats:
        raise click.UsageError("--breed-folders and --group-cats each choose the folder under cat/ (a breed, or an "
                               "individual cat): choose one")
    if group_cats and watch_dir is not None:
        raise click.UsageError("--group-cats groups a whole library at once; it does not go with --watch")
    try:
        names = read_names(cat_names) if cat_names is not None else {}
    except NamesError as error:
        raise click.BadParameter(str(error), param_hint="--cat-names") from None
    cluster = _cluster(cluster_address, cluster_send_bytes)
    try:
        card = load_card(model or default_model_path())
    except ModelError as error:
        raise click.ClickException(str(error)) from None
    if group_cats and not card.has_embedding:
        raise click.UsageError(f"--group-cats needs a model with an `embedding` output; the card of {card.path} "
                               "lists none")
    if breed_folders and Trait.BREED not in card.attributes:
        raise click.UsageError(f"--breed-folders needs a model that names breeds; the card of {card.path} lists none")
    roots = list(paths) if watch_dir is None else [watch_dir]
    threshold = card.threshold if threshold is None else threshold
    unsure = _unsure_band(uncertain, card, threshold, quiet)
    settings = SortSettings(
        classify=ClassifySettings(card, jobs, batch_size, max_pixels, None if no_cache else default_cache_path(),
                                  full_decode, cluster),
        policy=Policy(threshold, unsure),
        action=action, dry_run=dry_run, out=out, on_conflict=OnConflict(on_conflict),
        sidecar_name=SidecarName(sidecar_name), with_raw=with_raw, remove_emptied_folders=remove_emptied_folders,
        group_cats=group_cats, cat_names=names, breed_folders=breed_folders,
    )
    _check_destinations(settings, roots)
    learned = _learn_known_cats(known_cats, settings) if known_cats is not None else None
    if learned is not None:
        settings = replace(settings, namer=learned.namer)
    if cluster is not None:
        _connect(cluster)
    to_stdout = report_path == Path("-")
    given_report = None if to_stdout else report_path
    # A run that changes files always journals to a file; `--report -` then gets a copy of the final rows.
    default_needed = given_report is None and (settings.changes_files or not to_stdout)
    view: View
    # --watch (watchdog) and the progress bar (rich) are imported only when used: together they
    # were a fifth of the start-up of a run that sorts a folder in a pipe.
    if watch_dir is not None:
        from notcat_sort.watch import Journal, default_watch_report, watch

        report_file = default_watch_report(settings, watch_dir, _dry_run_reports()) if default_needed else given_report
        journal = Journal.from_report(settings.action_name, report_file)
        view = PlainView(quiet=quiet, each_file=True)
        view.log(f"watching {watch_dir} ({'polling' if polling else 'inotify'}, settle {settle:g} s); "
                 "Ctrl-C or SIGTERM stops after the batch in hand")
    else:
        report_file = _default_report(settings, roots) if default_needed else given_report
        # The bar is drawn on stderr; with the CSV on the same terminal the two would interleave.
        if sys.stderr.isatty() and not quiet and not (to_stdout and sys.stdout.isatty()):
            from notcat_sort.output.rich_view import RichView

            view = RichView(lambda: sum(1 for _ in scan(roots, settings.output_folders(roots))),
                            "sorting" if settings.changes_files else "classifying", unsure=unsure is not None)
        else:
            view = PlainView(quiet=quiet)
    if cluster is not None:
        view.log(cluster.describe())
    if known_cats is not None and learned is not None:
        view.log(_describe_known_cats(known_cats, learned))
    created = _missing_folders(report_file.parent) if report_file is not None else []
    stop = StopFlag()
    _install_stop_handlers(stop, view.log)
    try:
        report = ReportWriter(report_file, copy_to_stdout=to_stdout, fallback=data_reports_folder(),
                              on_move=_report_moved(view.log))
    except FileExistsError as error:
        raise click.BadParameter(f"{error.filename} {error.strerror}: choose another file", param_hint="--report") from None
    except OSError as error:
        raise click.ClickException(f"cannot write the report {report_file}: {error.strerror}; choose another place with --report") from None
    preview = Preview(lambda result: settings.label_folder(result.prediction.candidate, result.label,
                                                           settings.sub_folder(result.label, result.cat, result.guesses)))
    try:
        with view:
            results = (watch(watch_dir, settings, report, journal, stop, settle, polling) if watch_dir is not None
                       else sort_paths(roots, settings, report, stop))
            for result in results:
                view.add(result)
                preview.add(result)
    except ClusterError as error:  # between batches: what was acted on is reported, the rest untouched
        lost = True
        view.log(f"{error}: stopping; the report has every file handled so far, run again to finish")
    except ReportLost as error:  # nothing may be done that is not recorded first
        lost = False
        view.tally.failed += 1
        view.log(f"stopping: {error.strerror}; every file acted on so far is in the report, run again to finish")
    else:
        lost = False
    finally:
        report.close(compact=watch_dir is None)  # a watch report may name one path twice: keep every row
    report_file = report.path  # where the report went on, if its disk filled up
    names_file = names_file_for(report_file) if report_file is not None and group_cats else None
    if report_file is not None and given_report is None and watch_dir is None and settings.changes_files \
            and not report.journalled:
        report_file = _keep_out_of_the_photos(report_file, created, names_file)
        names_file = names_file_for(report_file) if names_file else None
    view.finish((preview.lines() if not settings.changes_files else []) + _dry_run_hint(settings)
                + ([cluster.summary()] if cluster else [])
                + ([f"report: {report_file}"] if report_file else [])
                + ([f"cat names: {names_file} (name the cats there, then pass it with --cat-names)"]
                   if names_file is not None and names_file.exists() else []))
    if lost or (stop.requested and watch_dir is None):
        sys.exit(EXIT_INTERRUPTED)
    if view.tally.failed:
        sys.exit(EXIT_FAILED)
