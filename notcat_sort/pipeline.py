"""The pipeline: scan → decode+classify → decide → act → report, one batch at a time.

It yields a `Result` per file; views (rich, plain) and the CSV report consume them. Each file of
a batch becomes a `WorkItem` that moves through the same stages: plan (settle the final name,
or the sidecar to tag), journal (the batch's plans that change files, as fsynced `started` rows,
before any file is touched), execute, report. So a crash at any instant leaves a report from
which a re-run or `--undo` can finish the job.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from notcat_sort.actions import Action, Kind, OnConflict, Outcome, Plan, Tagging, execute, perform, plan, preview
from notcat_sort.actions.common import remove_empty_folder
from notcat_sort.actions.conflict import resolve
from notcat_sort.actions.unwritable import Unwritable
from notcat_sort.cache import FileKey, PredictionCache, open_cache
from notcat_sort.cats import UNKNOWN, CatGrouper, examples_of, load_head, names_file_for, names_template
from notcat_sort.classify import ClassifySettings, Prediction, classify
from notcat_sort.content import DigestOf, sha256_file
from notcat_sort.decide import SORTED_LABELS, Label, Policy
from notcat_sort.known_cats import Namer
from notcat_sort.model import DOMESTIC, Guess, ModelCard, Trait
from notcat_sort.report import ReportWriter, Row, Status, rows_for, run_key
from notcat_sort.scan import Candidate, scan
from notcat_sort.sidecars import SidecarName, companion_name, companions, xmp_path

ACTION_THREADS = 4  # files of one batch acted on at once; the work is mostly waiting on the disk


@dataclass(frozen=True)
class SortSettings:
    classify: ClassifySettings
    policy: Policy
    action: Action | None = None  # None: only report
    dry_run: bool = False  # work out what `action` would do, change nothing
    out: Path | None = None  # None: sort into each PATH itself
    on_conflict: OnConflict = OnConflict.RENAME
    sidecar_name: SidecarName = SidecarName.APPEND  # for `tag`, when the image has no sidecar yet
    with_raw: bool = False  # carry RAW partners (IMG_0001.CR2 beside IMG_0001.JPG) with the image

    remove_emptied_folders: bool = False  # with move: remove the source folders the move left empty
    group_cats: bool = False  # sort cat photos by individual cat: cat/<cat-id>/...
    cat_names: dict[int, str] = field(default_factory=dict)  # --cat-names: cat number -> name
    namer: Namer | None = None  # --known-cats: names the cats it knows, before any grouping
    breed_folders: bool = False  # sort cat photos by breed: cat/<breed>/..., cat/domestic/... (not with group_cats)

    @property
    def changes_files(self) -> bool:
        return self.action is not None and not self.dry_run

    @property
    def places_files(self) -> bool:
        return self.action is not None and self.action.places_files

    @property
    def action_name(self) -> str:
        return str(self.action or "none")

    def __post_init__(self) -> None:
        """`out` made absolute once, so the report's destinations are valid from any working directory."""
        if self.out is not None:
            object.__setattr__(self, "out", Path(os.path.abspath(self.out)))

    def output_base(self, root: Path) -> Path:
        return self.out if self.out is not None else root

    def output_folders(self, roots: Iterable[Path]) -> list[Path]:
        if self.action is Action.TAG:
            return []
        return [self.output_base(Path(root).absolute()) / label.value for root in roots for label in SORTED_LABELS]

    def sub_folder(self, label: Label, cat: str, guesses: Mapping[Trait, Guess]) -> str:
        """The folder under cat/ a cat photo goes into: its cat's with --group-cats, its breed's with
        --breed-folders (`domestic` where no breed is confident); "" for none."""
        if self.breed_folders and label is Label.CAT:
            breed = guesses.get(Trait.BREED)
            return breed.name if breed is not None and breed.name else DOMESTIC
        return cat

    def label_folder(self, candidate: Candidate, label: Label, sub_folder: str = "") -> Path:
        """Where `label`'s images from `candidate`'s PATH go (tagging leaves them where they are);
        a cat photo into its `sub_folder` of cat/ (see `sub_folder`)."""
        if self.action is Action.TAG:
            return candidate.path.parent
        folder = self.output_base(candidate.root) / label.value
        return folder / sub_folder if sub_folder else folder

    def destination(self, candidate: Candidate, label: Label, sub_folder: str = "") -> Path:
        if self.action is Action.TAG:
            return xmp_path(candidate.path, self.sidecar_name)
        return self.label_folder(candidate, label, sub_folder) / candidate.relative


@dataclass(frozen=True)
class Companion:
    """A sidecar or RAW partner that goes where its image goes (see notcat_sort.sidecars)."""

    path: Path
    sha256: str
    outcome: Outcome = Outcome(Status.PLANNED)


@dataclass(frozen=True)
class Result:
    prediction: Prediction
    label: Label
    outcome: Outcome
    companions: tuple[Companion, ...] = ()
    cat: str = ""  # with --group-cats, the cat photo's cat id (or `unknown`)
    guesses: Mapping[Trait, Guess] = field(default_factory=dict)  # a cat photo's breed and mood, where the model has them

    @property
    def failed(self) -> bool:
        return (self.label is Label.ERROR or self.outcome.status == Status.ERROR
                or any(companion.outcome.status == Status.ERROR for companion in self.companions))


@dataclass
class StopFlag:
    """Set from a signal handler; the pipeline finishes the file in hand and stops."""

    requested: bool = False
    reason: str = "interrupted before this file was touched"

    def __call__(self) -> bool:
        return self.requested


@dataclass
class WorkItem:
    """One file on its way through plan -> journal -> execute -> report."""

    prediction: Prediction
    label: Label
    cat: str = ""  # with --group-cats, a cat photo's cat id
    guesses: Mapping[Trait, Guess] = field(default_factory=dict)  # a cat photo's breed and mood
    plan: Plan | None = None  # None until planned, and for a file with nothing to act on
    outcome: Outcome | None = None  # set once known: by a failure before acting, else by acting
    companions: tuple[Companion, ...] = ()

    @property
    def changes_files(self) -> bool:
        return self.outcome is None and self.plan is not None and self.plan.changes_files

    def result(self) -> Result:
        assert self.outcome is not None
        return Result(self.prediction, self.label, self.outcome, self.companions, self.cat, self.guesses)


def _failure(settings: SortSettings, error: Exception, target: Path | None = None,
             unwritable: Unwritable | None = None) -> Outcome:
    """An error outcome. It keeps the planned `target`, so that --undo can look there after a
    failure half-way through (e.g. a cross-filesystem copy that was made but not verified).
    A destination found full or read-only is noted in `unwritable`, and the reason says so."""
    filename = getattr(error, "filename", None)
    full = (unwritable.note(error, target) if unwritable is not None and target is not None
            and isinstance(error, OSError) else None)
    if full is not None:
        reason = full
    elif isinstance(error, FileNotFoundError) and filename and not os.path.lexists(filename):
        reason = f"{filename} disappeared during the run"
    else:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        if filename:
            reason = f"{reason}: {filename}"
    return Outcome(Status.ERROR, target, f"{settings.action_name} failed: {reason}")


# --- plan ---------------------------------------------------------------------------------------


def _plan(settings: SortSettings, item: WorkItem, reserved: set[Path], digest_of: DigestOf, run: str,
          unwritable: Unwritable) -> None:
    """Give `item` its plan, with its target reserved against the rest of the batch, and the
    companions that travel with it; or, when it cannot be acted on, its outcome."""
    if item.label is Label.ERROR:
        item.outcome = Outcome(Status.ERROR)
        return
    candidate, card = item.prediction.candidate, settings.classify.card
    tagging = (Tagging(item.label.value, item.prediction.p_cat, f"{card.name} {card.version}", run, item.cat,
                       item.guesses) if settings.action is Action.TAG else None)
    try:
        item.plan = plan(
            settings.action or Action.COPY, candidate.path,
            settings.destination(candidate, item.label, settings.sub_folder(item.label, item.cat, item.guesses)),
            item.prediction.sha256, settings.on_conflict, reserved, digest_of, tagging,
        )
        if settings.places_files and item.plan.changes_files:  # a skipped file carries nothing
            item.companions = tuple(Companion(path, sha256_file(path) if settings.changes_files else "")
                                    for path in companions(candidate.path, settings.with_raw))
    except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
        item.plan, item.outcome = None, _failure(settings, error)
        return
    if settings.changes_files and (skipped := _not_tried(settings, item.plan, unwritable)) is not None:
        item.plan, item.outcome = None, skipped
        return
    if item.plan.kind is Kind.PLACE and item.plan.target is not None:
        reserved.add(item.plan.target)


def _not_tried(settings: SortSettings, planned: Plan, unwritable: Unwritable) -> Outcome | None:
    """The error outcome of a plan that would write where an earlier file found no room (or a
    read-only filesystem): it is not tried. None when it may be."""
    if planned.kind not in (Kind.PLACE, Kind.TAG) or planned.target is None:
        return None
    reason = unwritable.reason(planned.target)
    return None if reason is None else Outcome(Status.ERROR, None, f"{settings.action_name} not tried: {reason}")


# --- journal ------------------------------------------------------------------------------------


def _journal_rows(item: WorkItem, action: str) -> list[Row]:
    """The journal entry written before acting: where the image and its companions are headed.
    A move whose identical copy is already there is journalled as the removal of a duplicate."""
    assert item.plan is not None
    destination = item.plan.target
    status = Status.STARTED_REMOVE_DUPLICATE if item.plan.kind is Kind.REMOVE_DUPLICATE else Status.STARTED
    heading = tuple(replace(companion, outcome=Outcome(Status.STARTED, companion_name(
        companion.path, item.prediction.candidate.path, destination))) for companion in item.companions
        if destination is not None)
    return rows_for(Result(item.prediction, item.label, Outcome(status, destination), heading, item.cat, item.guesses),
                    action)


def _journal(items: list[WorkItem], report: ReportWriter, action: str) -> None:
    """One fsynced write for the whole batch, before any of its files is touched."""
    journal = [row for item in items if item.changes_files for row in _journal_rows(item, action)]
    if journal:
        report.write(journal, durable=True)


# --- execute ------------------------------------------------------------------------------------


def _execute(settings: SortSettings, stop: Callable[[], bool], unwritable: Unwritable, item: WorkItem) -> Result:
    """Carry out one file's plan (and its companions'), unless a stop was asked for first or its
    destination was found full since it was planned. Runs on an action thread: the batch's
    targets are distinct and already journalled."""
    if item.outcome is None:
        assert item.plan is not None
        if stop():
            item.outcome = Outcome(Status.INTERRUPTED, None, getattr(stop, "reason", "interrupted"))
            return item.result()
        if settings.changes_files and (skipped := _not_tried(settings, item.plan, unwritable)) is not None:
            item.outcome = skipped
            return item.result()
        try:
            item.outcome = execute(item.plan) if settings.changes_files else preview(item.plan)
        except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
            item.outcome = _failure(settings, error, item.plan.target, unwritable)
        item.companions = _carry(settings, item.prediction.candidate.path, item.outcome, item.companions, unwritable)
    return item.result()


def _carry(settings: SortSettings, image: Path, image_outcome: Outcome,
           found: tuple[Companion, ...], unwritable: Unwritable) -> tuple[Companion, ...]:
    """Give each companion the action its image got, named after where the image went.

    A companion is never renamed on its own: if its name is taken by a different file it stays
    where it is and its row says so."""
    if (image_outcome.status not in (Status.DONE, Status.PLANNED, Status.DUPLICATE_REMOVED)
            or image_outcome.destination is None):
        return ()
    carried = []
    for companion in found:
        target = companion_name(companion.path, image, image_outcome.destination)
        if resolve(companion.path, target, companion.sha256 or None, OnConflict.SKIP)[0] == "taken":
            outcome = Outcome(Status.ERROR, target, f"not carried with {image.name}: {target} exists "
                                                    "with different content; left in place")
        else:
            try:
                outcome = perform(settings.action or Action.COPY, companion.path, target, companion.sha256 or None,
                                  OnConflict.SKIP, dry_run=not settings.changes_files)
            except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
                outcome = _failure(settings, error, target, unwritable)
        carried.append(replace(companion, outcome=outcome))
    return tuple(carried)


# --- the batches --------------------------------------------------------------------------------


def sort_files(
    candidates: Iterable[Candidate], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Classify and act on `candidates`, writing the report as it goes.

    Per batch: plan every file (settling final names), journal the plans that change files in
    one fsynced write, then execute them and record the outcomes. The plans' targets are distinct
    and already journalled, so the batch's files are acted on concurrently: their work is mostly
    waiting on the disk (fsync, reading copies back to verify them). Once a destination is
    found full or read-only, no later file bound for it is tried."""
    known = open_cache(settings.classify.cache_path, settings.classify.card.sha256) if settings.places_files else None
    with ThreadPoolExecutor(ACTION_THREADS, thread_name_prefix="act") as actors, \
            closing(known) if known else nullcontext():
        yield from _sort_batches(candidates, settings, report, stop, actors, known, Unwritable())


def _digest_reader(known: PredictionCache | None) -> DigestOf:
    """How planning learns what an existing destination holds: by its stat key when the cache knows
    it (a copy placed by an earlier run, say), else by reading it. This is what makes re-running
    over an already-sorted library cheap."""
    if known is None:
        return sha256_file

    def digest_of(path: Path) -> str:
        return known.digest_at(FileKey.of(os.stat(path))) or sha256_file(path)

    return digest_of


def _remember_placed(known: PredictionCache | None, results: list[Result]) -> None:
    """Record the stat keys of the files just placed: verified copies, renames and links all hold
    the source's bytes."""
    if known is None:
        return
    placed = []
    for result in results:
        destination = result.outcome.destination
        if result.outcome.status == Status.DONE and destination is not None and result.prediction.sha256:
            try:
                placed.append((FileKey.of(os.stat(destination)), result.prediction.sha256))
            except OSError:
                continue
    try:
        known.remember(placed)
    except sqlite3.Error:  # only costs the next run a re-read
        pass


# Decided: a prediction, its label and (with --group-cats, for a cat) its cat id.
Decided = tuple[Prediction, Label, str]


def _sort_batches(candidates: Iterable[Candidate], settings: SortSettings, report: ReportWriter,
                  stop: Callable[[], bool], actors: ThreadPoolExecutor,
                  known: PredictionCache | None, unwritable: Unwritable) -> Iterator[Result]:
    """Act on each batch as it is classified. With --group-cats the cat photos wait (without
    their embeddings, which wait on disk) until every photo is classified and grouped."""
    card = settings.classify.card
    cats_cache = open_cache(settings.classify.cache_path, card.sha256) if settings.group_cats else None
    grouper = CatGrouper(cats_cache, settings.cat_names, load_head(card.path, card.sha256)) if settings.group_cats else None
    waiting: list[tuple[Prediction, int]] = []  # and its place in the grouping (-1: no embedding)
    digest_of = _digest_reader(known)
    try:
        for predictions in classify(candidates, settings.classify):
            decided = [(p, settings.policy.decide(p.p_cat), "") for p in predictions]
            if grouper is not None:
                decided = _name_known_cats(decided, settings.namer)
                for prediction, label, cat in decided:
                    if label is Label.CAT and not cat:
                        place = grouper.add(prediction.sha256 or "", prediction.embedding)
                        waiting.append((replace(prediction, embedding=None), place))
                decided = [entry for entry in decided if entry[1] is not Label.CAT or entry[2]]
            yield from _sort_batch(decided, settings, report, stop, actors, known, digest_of, unwritable)
            if stop():
                return
        if grouper is not None and waiting:
            grouping = grouper.group()
            grouper.remember(grouping)
            if report.path is not None:
                examples = examples_of((grouping.ids[place] for _, place in waiting if place >= 0),
                                       (str(p.candidate.path) for p, place in waiting if place >= 0))
                _write_names(names_file_for(report.path), names_template(grouping, examples))
            for start in range(0, len(waiting), _GROUPED_BATCH):
                batch = [(p, Label.CAT, grouping.ids[place] if place >= 0 else UNKNOWN)
                         for p, place in waiting[start:start + _GROUPED_BATCH]]
                yield from _sort_batch(batch, settings, report, stop, actors, known, digest_of, unwritable)
                if stop():
                    return
    finally:
        if grouper is not None:
            grouper.close()
        if cats_cache is not None:
            cats_cache.close()


_GROUPED_BATCH = 256  # grouped cat photos acted on at a time


def _write_names(path: Path, text: str) -> None:
    """The cat names template beside the report; a convenience, so a disk too full for it only
    leaves it out (never half of it)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def _name_known_cats(decided: list[Decided], namer: Namer | None) -> list[Decided]:
    """The cat photos that `namer` knows get their cat's name; the rest are left for the grouping."""
    cats = [i for i, (_, label, _) in enumerate(decided) if label is Label.CAT]
    if namer is None or not cats:
        return decided
    names = namer.name([decided[i][0].sha256 or "" for i in cats], [decided[i][0].embedding for i in cats])
    named = list(decided)
    for i, name in zip(cats, names, strict=True):
        if name:
            named[i] = (decided[i][0], Label.CAT, name)
    return named


def _sort_batch(decided: list[Decided], settings: SortSettings, report: ReportWriter, stop: Callable[[], bool],
                actors: ThreadPoolExecutor, known: PredictionCache | None, digest_of: DigestOf,
                unwritable: Unwritable) -> list[Result]:
    """One work item per file, through plan -> journal -> execute -> report."""
    action = settings.action_name
    run = run_key(report.path) if report.path is not None else ""
    card = settings.classify.card
    items = [WorkItem(prediction, label, cat, guesses(card, prediction) if label is Label.CAT else {})
             for prediction, label, cat in decided]
    reserved: set[Path] = set()
    for item in items:
        _plan(settings, item, reserved, digest_of, run, unwritable)
    if settings.changes_files:
        _journal(items, report, action)
    results = list(actors.map(lambda item: _execute(settings, stop, unwritable, item), items))
    report.write((row for result in results for row in rows_for(result, action)), durable=settings.changes_files)
    if settings.changes_files:
        _remember_placed(known, results)
        if settings.remove_emptied_folders:
            _remove_emptied_folders(results, report)
    return results


def guesses(card: ModelCard, prediction: Prediction) -> dict[Trait, Guess]:
    """A cat photo's breed and mood as the card's rules name them (the breed only where confident)."""
    return {trait: card.attributes[trait].guess(probabilities) for trait, probabilities in prediction.attributes.items()
            if trait in card.attributes}


def _is_empty_folder(folder: Path) -> bool:
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _remove_emptied_folders(results: list[Result], report: ReportWriter) -> None:
    """Remove the source folders these moves left empty, from the innermost up to (not including)
    the PATH, each journalled first, so that --undo recreates them."""
    left: set[Path] = set()
    for result in results:
        if result.outcome.status in (Status.DONE, Status.DUPLICATE_REMOVED):
            candidate = result.prediction.candidate
            folder = candidate.path.parent
            while folder != candidate.root and folder.is_relative_to(candidate.root):
                left.add(folder)
                folder = folder.parent
    for folder in sorted(left, key=lambda path: len(path.parts), reverse=True):  # children first
        if not _is_empty_folder(folder):
            continue
        row = Row(path=str(folder), label="", p_cat="", action=str(Action.MOVE), destination="",
                  status=Status.STARTED_REMOVE_FOLDER, error="")
        report.write([row], durable=True)
        if remove_empty_folder(folder):
            report.write([replace(row, status=Status.FOLDER_REMOVED)], durable=True)


def sort_paths(
    roots: Sequence[Path], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Scan `roots` (never entering the output folders) and sort what is found."""
    candidates = scan(roots, skip=settings.output_folders(roots))
    return sort_files(candidates, settings, report, stop)
