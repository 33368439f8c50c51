"""The pipeline: scan → decode+classify → decide → act → report, one batch at a time.

It yields a `Result` per file; views (rich, plain) and the CSV report consume them. For each
batch the planned actions are journalled (fsynced `started` rows) before any file is touched,
so a crash at any instant leaves a report from which a re-run or `--undo` can finish the job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from notcat_sort.actions import OnConflict, Outcome, perform
from notcat_sort.actions.common import sha256_file
from notcat_sort.actions.conflict import resolve
from notcat_sort.classify import ClassifySettings, Prediction, classify
from notcat_sort.decide import SORTED_LABELS, Label, Policy
from notcat_sort.report import ReportWriter, Row, Status, format_p
from notcat_sort.scan import Candidate, scan
from notcat_sort.sidecars import SidecarName, companion_name, companions, xmp_path


@dataclass(frozen=True)
class SortSettings:
    classify: ClassifySettings
    policy: Policy
    action: str | None = None  # a key of notcat_sort.actions.ACTIONS; None: only report
    dry_run: bool = False  # work out what `action` would do, change nothing
    out: Path | None = None  # None: sort into each PATH itself
    on_conflict: OnConflict = OnConflict.RENAME
    sidecar_name: SidecarName = SidecarName.APPEND  # for `tag`, when the image has no sidecar yet
    with_raw: bool = False  # carry RAW partners (IMG_0001.CR2 beside IMG_0001.JPG) with the image

    @property
    def changes_files(self) -> bool:
        return self.action is not None and not self.dry_run

    @property
    def action_name(self) -> str:
        return self.action or "none"

    def output_base(self, root: Path) -> Path:
        return self.out if self.out is not None else root

    def output_folders(self, roots: Iterable[Path]) -> list[Path]:
        if self.action == "tag":
            return []
        return [self.output_base(Path(root).absolute()) / label.value for root in roots for label in SORTED_LABELS]

    def destination(self, candidate: Candidate, label: Label) -> Path:
        if self.action == "tag":
            return xmp_path(candidate.path, self.sidecar_name)
        return self.output_base(candidate.root) / label.value / candidate.relative


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

    @property
    def failed(self) -> bool:
        return (self.label is Label.ERROR or self.outcome.status == Status.ERROR
                or any(companion.outcome.status == Status.ERROR for companion in self.companions))

    def rows(self, action: str) -> list[Row]:
        """The image's row, then one per companion carried with it."""
        image = self.row(action)
        return [image] + [
            replace(image, path=str(companion.path), destination=str(companion.outcome.destination or ""),
                    status=companion.outcome.status, error=companion.outcome.error, sha256=companion.sha256)
            for companion in self.companions
        ]

    def row(self, action: str) -> Row:
        prediction, outcome = self.prediction, self.outcome
        return Row(
            path=str(prediction.candidate.path),
            label=self.label.value,
            p_cat=format_p(prediction.p_cat),
            action=action,
            destination=str(outcome.destination or ""),
            status=outcome.status,
            error=prediction.error or outcome.error,
            sha256=prediction.sha256 or "",
        )


@dataclass
class StopFlag:
    """Set from a signal handler; the pipeline finishes the file in hand and stops."""

    requested: bool = False
    reason: str = field(default="interrupted before this file was touched")

    def __call__(self) -> bool:
        return self.requested


def _perform(settings: SortSettings, source: Path, destination: Path, sha256: str | None,
             on_conflict: OnConflict, **details: object) -> Outcome:
    try:
        return perform(
            settings.action or "copy", source, destination, sha256, on_conflict,
            dry_run=not settings.changes_files, **details,
        )
    except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Outcome(Status.ERROR, None, f"{settings.action_name} failed: {reason}")


def _act(settings: SortSettings, prediction: Prediction, label: Label) -> Outcome:
    details = {}
    if settings.action == "tag":
        card = settings.classify.card
        details = {"label": label.value, "p_cat": prediction.p_cat, "model": f"{card.name} {card.version}"}
    return _perform(settings, prediction.candidate.path, settings.destination(prediction.candidate, label),
                    prediction.sha256, settings.on_conflict, **details)


def _companions(settings: SortSettings, image: Path) -> list[Companion]:
    """What travels with `image` under a move/copy/link, hashed when files will change."""
    if settings.action in (None, "tag"):
        return []
    return [Companion(path, sha256_file(path) if settings.changes_files else "")
            for path in companions(image, settings.with_raw)]


def _started(settings: SortSettings, prediction: Prediction, label: Label, found: list[Companion]) -> Result:
    """The journal entry written before acting: where the image and its companions are headed."""
    destination = settings.destination(prediction.candidate, label)
    heading = tuple(replace(companion, outcome=Outcome(Status.STARTED, companion_name(
        companion.path, prediction.candidate.path, destination))) for companion in found)
    return Result(prediction, label, Outcome(Status.STARTED, destination), heading)


def _carry(settings: SortSettings, image: Path, image_outcome: Outcome,
           found: list[Companion]) -> tuple[Companion, ...]:
    """Give each companion the action its image got, named after where the image went.

    A companion is never renamed on its own: if its name is taken by a different file it stays
    where it is and its row says so."""
    if image_outcome.status not in (Status.DONE, Status.PLANNED) or image_outcome.destination is None:
        return ()
    carried = []
    for companion in found:
        target = companion_name(companion.path, image, image_outcome.destination)
        if resolve(companion.path, target, companion.sha256 or None, OnConflict.SKIP)[0] == "taken":
            outcome = Outcome(Status.ERROR, target, f"not carried with {image.name}: {target} exists "
                                                    "with different content; left in place")
        else:
            outcome = _perform(settings, companion.path, target, companion.sha256 or None, OnConflict.SKIP)
        carried.append(replace(companion, outcome=outcome))
    return tuple(carried)


def sort_files(
    candidates: Iterable[Candidate], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Classify and act on `candidates`, writing the report as it goes."""
    action = settings.action_name
    for predictions in classify(candidates, settings.classify):
        decided = [(p, settings.policy.decide(p.p_cat)) for p in predictions]
        to_act = [(p, label) for p, label in decided if label is not Label.ERROR]
        found = {p.candidate.path: _companions(settings, p.candidate.path) for p, _ in to_act}
        if settings.changes_files and to_act:
            report.write(
                (row for p, label in to_act
                 for row in _started(settings, p, label, found[p.candidate.path]).rows(action)),
                durable=True,
            )
        results = []
        for prediction, label in decided:
            carried: tuple[Companion, ...] = ()
            if label is Label.ERROR:
                outcome = Outcome(Status.ERROR)
            elif stop():
                outcome = Outcome(Status.SKIPPED, None, getattr(stop, "reason", "interrupted"))
            else:
                outcome = _act(settings, prediction, label)
                carried = _carry(settings, prediction.candidate.path, outcome, found[prediction.candidate.path])
            results.append(Result(prediction, label, outcome, carried))
        report.write((row for result in results for row in result.rows(action)), durable=settings.changes_files)
        yield from results
        if stop():
            return


def sort_paths(
    roots: Sequence[Path], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Scan `roots` (never entering the output folders) and sort what is found."""
    candidates = scan(roots, skip=settings.output_folders(roots))
    return sort_files(candidates, settings, report, stop)
