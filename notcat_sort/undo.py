"""`--undo REPORT`: put back every file a run moved, copied or linked, judged by what is on disk now.

The report is the journal. For each file it names the source, the destination and the content
hash, and whether the run finished (`done`) or may have been killed part-way (`started`, or an
`error` after acting began). Undo never trusts the status alone: it looks at both paths and the
hash, then does the one step that restores the source, and removes only files whose bytes it can
prove are the ones the run put there. Nothing is overwritten. Each step is atomic or a verified
copy, so an undo that is itself interrupted can simply be run again, and a second undo finds
nothing left to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from notcat_sort.actions import Action
from notcat_sort.actions.common import partial_name, remove
from notcat_sort.actions.copy import copy_verified
from notcat_sort.actions.move import move_new
from notcat_sort.actions.tag import untag
from notcat_sort.content import sha256_file
from notcat_sort.report import ReportWriter, Row, Status, final_rows, run_key

_PLACED = {Status.STARTED, Status.DONE, Status.ERROR}
_DUPLICATE_REMOVED = {Status.STARTED_REMOVE_DUPLICATE, Status.DUPLICATE_REMOVED}
_FOLDER_REMOVED = {Status.STARTED_REMOVE_FOLDER, Status.FOLDER_REMOVED}


def undo_report_path(report: Path) -> Path:
    return report.with_name(f"{report.stem}.undo.csv")


def _holds(path: Path, sha256: str) -> bool:
    """`path` is a regular file with exactly these bytes."""
    return os.path.isfile(path) and not os.path.islink(path) and bool(sha256) and sha256_file(path) == sha256


def _remove_empty_folders(target: Path, label: str) -> None:
    """Remove the folders the run made for `target`, up to its label folder, if now empty."""
    folder = target.parent
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder.name == label or folder.parent == folder:
            return
        folder = folder.parent


def _undo_move(source: Path, target: Path, sha256: str) -> tuple[str, str]:
    if os.path.lexists(target) and os.path.lexists(source):
        if os.path.samefile(source, target) or (_holds(target, sha256) and _holds(source, sha256)):
            remove(target)  # killed after copying or linking, before removing the source
            return Status.UNDONE, "removed the copy; the source was still in place"
        return Status.ERROR, "both the source and the destination exist and differ; left both alone"
    if os.path.lexists(target):
        if not _holds(target, sha256):
            return Status.ERROR, "the destination no longer holds the moved bytes; left in place"
        source.parent.mkdir(parents=True, exist_ok=True)
        move_new(target, source, sha256)
        return Status.UNDONE, "moved back"
    if os.path.lexists(source):
        return Status.SKIPPED, "already in place"
    return Status.ERROR, "neither the source nor the destination exists any more"


def _undo_copy(target: Path, sha256: str) -> tuple[str, str]:
    if not os.path.lexists(target):
        return Status.SKIPPED, "no copy to remove"
    if not _holds(target, sha256):
        return Status.ERROR, "the copy no longer holds the copied bytes; left in place"
    remove(target)
    return Status.UNDONE, "removed the copy"


def _undo_link(source: Path, target: Path) -> tuple[str, str]:
    if not os.path.lexists(target):
        return Status.SKIPPED, "no link to remove"
    if os.path.islink(target):
        ours = os.readlink(target) == os.path.abspath(source)
    else:
        ours = os.path.lexists(source) and os.path.samefile(source, target)
    if not ours:
        return Status.ERROR, "the destination is no longer a link to the source; left in place"
    remove(target)
    return Status.UNDONE, "removed the link"


def _undo_duplicate_removal(source: Path, target: Path, sha256: str) -> tuple[str, str]:
    if os.path.lexists(source):
        return Status.SKIPPED, "already in place"
    if not _holds(target, sha256):
        return Status.ERROR, "the identical copy it was removed for is gone or changed; cannot restore"
    source.parent.mkdir(parents=True, exist_ok=True)
    copy_verified(target, source, sha256)
    return Status.UNDONE, "restored from its identical copy, which stays"


def _undo_tag(row: Row, run: str) -> tuple[str, str]:
    """`tag` keeps its own undo records (see actions/tag.py): hand over to it."""
    outcome = untag(Path(row.path), Path(row.destination), run)
    status = Status.UNDONE if outcome.status == Status.DONE else outcome.status
    return status, outcome.error or ("removed the tag" if status == Status.UNDONE else "")


def _action(row: Row) -> Action | None:
    """The action the row records; None for a report-only run ("none")."""
    try:
        return Action(row.action)
    except ValueError:
        return None


def undo_row(row: Row, run: str) -> tuple[str, str]:
    """(status, reason) after undoing what `row` of the run `run` (see run_key) records, if anything."""
    action = _action(row)
    if row.status in _FOLDER_REMOVED:
        os.makedirs(row.path, exist_ok=True)
        return Status.UNDONE, "recreated the folder the move emptied"
    if action is Action.TAG and row.destination and row.status in (Status.STARTED, Status.DONE):
        return _undo_tag(row, run)
    if action is None or not action.places_files or not row.destination:
        return Status.SKIPPED, "nothing was done"
    source, target = Path(row.path), Path(row.destination)
    if row.status in _DUPLICATE_REMOVED and action is Action.MOVE:
        return _undo_duplicate_removal(source, target, row.sha256)
    if row.status not in _PLACED:
        return Status.SKIPPED, "nothing was done"
    partial = partial_name(target)
    if os.path.lexists(partial):
        remove(partial)  # a copy killed before it was verified
    if action is Action.MOVE:
        result = _undo_move(source, target, row.sha256)
    elif action is Action.COPY:
        result = _undo_copy(target, row.sha256)
    else:
        result = _undo_link(source, target)
    if result[0] == Status.UNDONE:
        _remove_empty_folders(target, row.label)
    return result


def undo(report: Path, writer: ReportWriter) -> Iterator[Row]:
    """Undo the run recorded in `report`, last action first, writing and yielding a row per file."""
    for row in reversed(final_rows(report)):
        try:
            status, reason = undo_row(row, run_key(report))
        except OSError as error:
            status = Status.ERROR
            reason = f"undo failed: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")
        result = replace(row, action=f"undo-{row.action}", status=status, error=reason)
        writer.write([result], durable=True)
        yield result
