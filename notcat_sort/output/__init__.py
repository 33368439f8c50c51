"""Presentation: views that consume the pipeline's results. Nothing here decides anything."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from notcat_sort.pipeline import Result


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

    def summary_lines(self) -> list[str]:
        labels = ", ".join(f"{label}: {count}" for label, count in sorted(self.labels.items()))
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))
        return [
            f"{self.total} {'file' if self.total == 1 else 'files'} in {self.elapsed:.1f} s ({self.rate():.1f}/s), {self.cached} from cache",
            f"labels: {labels or 'none'}",
            f"actions: {statuses or 'none'}",
            f"failed: {self.failed}",
        ]


def describe_failure(result: Result) -> str:
    reason = result.prediction.error or result.outcome.error
    return f"error: {result.prediction.candidate.path}: {reason}"
