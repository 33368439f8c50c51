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

from notcat_sort.actions import Kind, OnConflict, Outcome, Plan, execute, plan
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
        return self.out if self.out is not None else root

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


def _failure(settings: SortSettings, error: Exception, target: Path | None = None) -> Outcome:
    """An error outcome. It keeps the planned `target`, so that --undo can look there after a
    failure half-way through (e.g. a cross-filesystem copy that was made but not verified)."""
    if isinstance(error, FileNotFoundError) and error.filename and not os.path.lexists(error.filename):
        reason = f"{error.filename} disappeared during the run"
    else:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        if getattr(error, "filename", None):
            reason = f"{reason}: {error.filename}"
    return Outcome(Status.ERROR, target, f"{settings.action_name} failed: {reason}")


def _plan(settings: SortSettings, prediction: Prediction, label: Label, reserved: set[Path]) -> Plan | Outcome:
    """The plan for one file, with its target reserved against the rest of the batch; or an error."""
    try:
        planned = plan(
            settings.action or "copy", prediction.candidate.path, settings.destination(prediction.candidate, label),
            prediction.sha256, settings.on_conflict, reserved,
        )
    except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
        return _failure(settings, error)
    if planned.kind == Kind.PLACE and planned.target is not None:
        reserved.add(planned.target)
    return planned


def _journal_row(settings: SortSettings, prediction: Prediction, label: Label, planned: Plan) -> Row:
    status = Status.STARTED if planned.kind == Kind.PLACE else Status.STARTED_REMOVE_DUPLICATE
    return Row(str(prediction.candidate.path), label.value, format_p(prediction.p_cat), settings.action_name,
               str(planned.target), status, "", prediction.sha256 or "")


def _execute(settings: SortSettings, planned: Plan | Outcome) -> Outcome:
    if isinstance(planned, Outcome):
        return planned
    if not settings.changes_files:
        return Outcome(Status.PLANNED if planned.changes_files else Status.SKIPPED, planned.target, planned.reason)
    try:
        return execute(planned)
    except Exception as error:  # noqa: BLE001 - one file's failure must not stop the batch
        return _failure(settings, error, planned.target)


def sort_files(
    candidates: Iterable[Candidate], settings: SortSettings, report: ReportWriter,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Result]:
    """Classify and act on `candidates`, writing the report as it goes.

    Per batch: plan every file (settling final names), journal the plans that change files in
    one fsynced write, then execute them one by one and record the outcomes."""
    for predictions in classify(candidates, settings.classify):
        decided = [(p, settings.policy.decide(p.p_cat)) for p in predictions]
        reserved: set[Path] = set()
        plans = {
            i: _plan(settings, p, label, reserved)
            for i, (p, label) in enumerate(decided)
            if label is not Label.ERROR
        }
        if settings.changes_files:
            journal = [_journal_row(settings, p, label, plans[i]) for i, (p, label) in enumerate(decided)
                       if isinstance(plans.get(i), Plan) and plans[i].changes_files]
            if journal:
                report.write(journal, durable=True)
        results = []
        for i, (prediction, label) in enumerate(decided):
            if label is Label.ERROR:
                outcome = Outcome(Status.ERROR)
            elif stop():
                outcome = Outcome(Status.SKIPPED, None, getattr(stop, "reason", "interrupted"))
            else:
                outcome = _execute(settings, plans[i])
            results.append(Result(prediction, label, outcome))
        report.write((result.row(settings.action_name) for result in results), durable=settings.changes_files)
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
