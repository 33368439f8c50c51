"""A live progress bar with images/second, for a person at a terminal."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from notcat_sort.decide import Label
from notcat_sort.output import Tally, describe_failure
from notcat_sort.pipeline import Result


class RichView:
    def __init__(self, count_files: Callable[[], int] | None = None, doing: str = "sorting", unsure: bool = False) -> None:
        """`count_files` runs in a background thread to give the bar its total while sorting starts;
        `doing` names the work ("classifying" in a dry run); `unsure`: an --uncertain band is in use, so
        the bar counts unsure photos too."""
        self.tally = Tally()
        self.console = Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} img/s"),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("remaining"), TimeRemainingColumn(),
            TextColumn("cat {task.fields[cat]} · not-cat {task.fields[not_cat]}"
                       + (" · unsure {task.fields[unsure]}" if unsure else "")),
            TextColumn("[red]{task.fields[failed]} failed"), console=self.console, transient=False,
        )
        self._task = self._progress.add_task(doing, total=None, rate=0.0, failed=0, cat=0, not_cat=0, unsure=0)
        self._count_files = count_files

    def __enter__(self) -> RichView:
        self._progress.start()
        if self._count_files is not None:
            threading.Thread(target=self._count, daemon=True).start()
        return self

    def _count(self) -> None:
        if self._count_files is not None:
            self._progress.update(self._task, total=self._count_files())

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False, markup=False)

    def add(self, result: Result) -> None:
        self.tally.add(result)
        if result.failed:
            self._progress.console.print(describe_failure(result), style="red", highlight=False, markup=False)
        labels = self.tally.labels
        self._progress.update(self._task, advance=1, rate=self.tally.rate(), failed=self.tally.failed,
                              cat=labels[Label.CAT.value], not_cat=labels[Label.NOT_CAT.value],
                              unsure=labels[Label.UNSURE.value])

    def finish(self, extra: list[str]) -> None:
        self._progress.stop()
        for line in self.tally.summary_lines() + extra:
            self.console.print(line, highlight=False, markup=False)
