"""Plain log lines on stderr, for logs, pipes and cron jobs."""

from __future__ import annotations

import sys
import time

from notcat_sort.output import Tally, describe, describe_failure
from notcat_sort.pipeline import Result


class PlainView:
    def __init__(self, quiet: bool = False, every_seconds: float = 5.0, each_file: bool = False) -> None:
        """`each_file`: a line per file (watch mode, where files come one by one) instead of a
        progress line every `every_seconds`."""
        self.tally = Tally()
        self.quiet = quiet
        self.each_file = each_file
        self._every = every_seconds
        self._last = time.monotonic()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def add(self, result: Result) -> None:
        self.tally.add(result)
        if result.failed:
            print(describe_failure(result), file=sys.stderr, flush=True)
        elif self.each_file:
            self.log(describe(result))
        now = time.monotonic()
        if not self.each_file and now - self._last >= self._every:
            self._last = now
            self.log(f"{self.tally.total} files so far ({self.tally.rate():.1f}/s)")

    def finish(self, extra: list[str]) -> None:
        for line in self.tally.summary_lines(watched=self.each_file) + extra:
            self.log(line)
