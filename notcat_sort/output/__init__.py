"""Presentation: views that consume the pipeline's results. Nothing here decides anything."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from notcat_sort.decide import Label
from notcat_sort.pipeline import Result
from notcat_sort.report import Status


@dataclass
class Tally:
    """Running counts for progress lines and the final summary."""

    labels: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failed: int = 0
    cached: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: Result) -> None:
        self.labels[result.label.value] += 1
        self.statuses[result.outcome.status] += 1
        self.failed += result.failed
        self.cached += result.prediction.cached

    @property
    def total(self) -> int:
        return sum(self.labels.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def summary_lines(self, watched: bool = False) -> list[str]:
        """What the run did, each thing once: the labels of the files classified, what was done with
        them, and how many failed (a failure is neither a label nor an action: the report's `error`
        column says what went wrong). A watcher's files came as they arrived, so a rate would measure
        the arrivals: it says how long it watched instead."""
        files = f"{self.total} {'file' if self.total == 1 else 'files'}"
        if watched:
            head = f"{files} sorted while watching for {_duration(self.elapsed)}"
        else:
            head = f"{files} in {self.elapsed:.1f} s ({self.rate():.1f}/s)"
        labels = ", ".join(f"{label}: {count}" for label, count in sorted(self.labels.items()) if label != Label.ERROR)
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items())
                             if status != Status.ERROR)
        return [f"{head}, {self.cached} from cache", f"labels: {labels or 'none'}", f"actions: {statuses or 'none'}",
                f"failed: {self.failed}"]


def _duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minute} min"
    return f"{minute} min {second} s" if minute else f"{second} s"


@runtime_checkable
class View(Protocol):
    """What the command needs from a view (rich.RichView, plain.PlainView): a context that is
    entered for the run, fed each result, and told the closing lines."""

    tally: Tally

    def __enter__(self) -> View: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def log(self, message: str) -> None: ...

    def add(self, result: Result) -> None: ...

    def finish(self, extra: list[str]) -> None: ...


def describe_failure(result: Result) -> str:
    reason = result.prediction.error or result.outcome.error
    return f"error: {result.prediction.candidate.path}: {reason}"


def describe(result: Result) -> str:
    """One line per file: what happened to it and where it went."""
    if result.failed:
        return describe_failure(result)
    outcome, source = result.outcome, result.prediction.candidate.path
    where = f" -> {outcome.destination}" if outcome.destination is not None else ""
    why = f" ({outcome.error})" if outcome.error else ""
    return f"{outcome.status} {result.label}: {source}{where}{why}"


@dataclass
class Preview:
    """What a dry run would do: how many images each destination folder would get, with a few examples."""

    folder_of: Callable[[Result], Path]
    examples_per_folder: int = 2
    counts: Counter = field(default_factory=Counter)
    examples: dict[Path, list[str]] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        if result.outcome.status != Status.PLANNED:
            return
        folder = self.folder_of(result)
        self.counts[folder] += 1
        shown = self.examples.setdefault(folder, [])
        if len(shown) < self.examples_per_folder:
            shown.append(f"  {result.prediction.candidate.path} -> {result.outcome.destination}")

    def lines(self) -> list[str]:
        if not self.counts:
            return ["would change nothing"]
        lines = ["would go to:"] + [f"  {count:6d}  {folder}" for folder, count in sorted(self.counts.items())]
        return lines + ["for example:"] + [line for folder in sorted(self.examples) for line in self.examples[folder]]
