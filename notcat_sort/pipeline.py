"""The pipeline: scan → decode+classify → decide → act → report, one batch at a time.

It yields a `Result` per file; views (rich, plain) and the CSV report consume them. For each
batch the planned actions are journalled (fsynced `started` rows) before any file is touched,
so a crash at any instant leaves a report from which a re-run or `--undo` can finish the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from notcat_sort.actions import OnConflict, Outcome, perform
from notcat_sort.classify import ClassifySettings, Prediction, classify
from notcat_sort.decide import SORTED_LABELS, Label, Policy
from notcat_sort.report import ReportWriter, Row, Status, format_p
from notcat_sort.scan import Candidate, scan


@dataclass(frozen=True)
class SortSettings:
    classify: ClassifySettings
    policy: Policy
    action: str | None = None  # a key of notcat_sort.actions.ACTIONS; None: only report
    dry_run: bool = False  # work out what `action` would do, change nothing
    out: Path | None = None  # None: sort into each PATH itself
    on_conflict: OnConflict = OnConflict.RENAME

    @property
    def changes_files(self) -> bool:
        return self.action is not None and not self.dry_run

    @property
    def action_name(self) -> str:
        return self.action or "none"

    def output_base(self, root: Path) -> Path:
        """Absolute, so the report's destinations stay valid from any working directory."""
        return Path(os.path.abspath(self.out)) if self.out is not None else root

    def output_folders(self, roots: Iterable[Path]) -> list[Path]:
        return [self.output_base(Path(root).absolute()) / label.value for root in roots for label in SORTED_LABELS]

    def destination(self, candidate: Candidate, label: Label) -> Path:
        return self.output_base(candidate.root) / label.value / candidate.relative


@dataclass(frozen=True)
class Result:
    prediction: Prediction
    label: Label
    outcome: Outcome

    @property
    def failed(self) -> bool:
        return self.label is Label.ERROR or self.outcome.status == Status.ERROR

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


def _act(settings: SortSettings, prediction: Prediction, label: Label) -> Outcome:
    destination = settings.destination(prediction.candidate, label)
    try:
        return perform(
            settings.action or "copy", prediction.candidate.path, destination,
            prediction.sha256, settings.on_conflict, dry_run=not settings.changes_files,
        )
    except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return Outcome(Status.ERROR, None, f"{settings.action_name} failed: {reason}")


def sort_files(
    candidates: Iterable[Candidate], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Classify and act on `candidates`, writing the report as it goes."""
    action = settings.action_name
    for predictions in classify(candidates, settings.classify):
        decided = [(p, settings.policy.decide(p.p_cat)) for p in predictions]
        to_act = [(p, label) for p, label in decided if label is not Label.ERROR]
        if settings.changes_files and to_act:
            report.write(
                (Row(str(p.candidate.path), label.value, format_p(p.p_cat), action,
                     str(settings.destination(p.candidate, label)), Status.STARTED, "", p.sha256 or "")
                 for p, label in to_act),
                durable=True,
            )
        results = []
        for prediction, label in decided:
            if label is Label.ERROR:
                outcome = Outcome(Status.ERROR)
            elif stop():
                outcome = Outcome(Status.SKIPPED, None, getattr(stop, "reason", "interrupted"))
            else:
                outcome = _act(settings, prediction, label)
            results.append(Result(prediction, label, outcome))
        report.write((result.row(action) for result in results), durable=settings.changes_files)
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
