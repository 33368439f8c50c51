"""How classify hands files to its threads: every file once, in scan order, and the last files of
a run spread evenly, so that no thread waits idle while another classifies the last batch."""

from __future__ import annotations

from pathlib import Path

from photos import photos

from notcat_sort.classify import ClassifySettings, classify
from notcat_sort.model import default_model_path, load_card
from notcat_sort.scan import Candidate


def groups(files: list[Path], jobs: int, batch_size: int) -> list[list[Path]]:
    settings = ClassifySettings(load_card(default_model_path()), jobs=jobs, batch_size=batch_size)
    return [[p.candidate.path for p in group] for group in classify([Candidate(f, f.parent) for f in files], settings)]


def test_the_last_batches_are_as_many_as_the_threads_can_share_and_of_even_sizes():
    files = photos(10)
    two = groups(files, jobs=2, batch_size=4)
    assert [path for group in two for path in group] == files
    assert [len(group) for group in two] == [2, 3, 2, 3]  # 4 + 4 + 2 would leave one thread idle for the last
    one = groups(files, jobs=1, batch_size=4)  # one thread: batches as asked
    assert [len(group) for group in one] == [4, 4, 2]
