"""Stage 5: act on each decision. All file changes go through here, under one set of rules:
never overwrite, never remove a source before its copy is verified, and re-runs are idempotent.

Acting is split in two so the pipeline can journal in between: `plan()` looks at the
destination and settles the final name (or that there is nothing to do); `execute()` does it.
Tagging is a kind of plan too: its target is the sidecar. A dry run only plans, and `preview()`
says what it would do.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from notcat_sort.actions.common import Outcome
from notcat_sort.actions.conflict import OnConflict, resolve
from notcat_sort.actions.copy import copy_verified
from notcat_sort.actions.link import link_new
from notcat_sort.actions.move import move_new, remove_duplicate
from notcat_sort.actions.tag import Tagging, tag
from notcat_sort.content import DigestOf, sha256_file
from notcat_sort.report import Status


class Action(str, Enum):
    """What a run does with each image; a run without one only reports."""

    MOVE = "move"
    COPY = "copy"
    LINK = "link"
    TAG = "tag"  # leaves the image in place and edits its XMP sidecar

    def __str__(self) -> str:
        return self.value

    @property
    def places_files(self) -> bool:
        """Puts the image somewhere in cat/, not-cat/ or unsure/ (through plan() and execute())."""
        return self is not Action.TAG


PLACING_ACTIONS = tuple(action for action in Action if action.places_files)


class Kind(str, Enum):
    """What a plan will do."""

    PLACE = "place"  # put the file at `target`, a free name
    REMOVE_DUPLICATE = "remove-duplicate"  # a move whose identical copy is already at `target`
    TAG = "tag"  # write `tagging` into the sidecar at `target`, leaving the image in place
    SKIP = "skip"  # nothing to do; `reason` says why

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Plan:
    action: Action
    source: Path
    target: Path | None
    sha256: str | None
    kind: Kind
    reason: str = ""
    tagging: Tagging | None = None  # for Kind.TAG

    @property
    def changes_files(self) -> bool:
        return self.kind is not Kind.SKIP


def plan(
    action: Action, source: Path, destination: Path, sha256: str | None, on_conflict: OnConflict,
    reserved: Collection[Path] = (), digest_of: DigestOf = sha256_file, tagging: Tagging | None = None,
) -> Plan:
    """Settle what `action` will do with `source` (for a tag, with `tagging`, whose sidecar is
    `destination`); raises OSError when the destination cannot be examined."""
    action = Action(action)  # the word ("move") will do too
    if action is Action.TAG:
        if tagging is None:
            raise ValueError("a tag plan needs what to write (tagging)")
        return Plan(action, source, destination, sha256, Kind.TAG, tagging=tagging)
    if os.path.abspath(source) == os.path.abspath(destination):
        return Plan(action, source, destination, sha256, Kind.SKIP, "already in place")
    state, target = resolve(source, destination, sha256, on_conflict, action is not Action.MOVE, reserved, digest_of)
    if state == "taken":
        return Plan(action, source, target, sha256, Kind.SKIP,
                    "destination exists with different content (--on-conflict skip)")
    if state == "identical":
        if action is Action.MOVE:
            return Plan(action, source, target, sha256, Kind.REMOVE_DUPLICATE)
        return Plan(action, source, target, sha256, Kind.SKIP, "already sorted: an identical copy is there")
    return Plan(action, source, target, sha256, Kind.PLACE)


def execute(planned: Plan) -> Outcome:
    """Carry out a plan. Raises OSError on failure, having left the source as it was."""
    source, target = planned.source, planned.target
    if planned.kind is Kind.SKIP:
        return Outcome(Status.SKIPPED, target, planned.reason)
    assert target is not None
    if planned.kind is Kind.TAG:
        assert planned.tagging is not None
        return tag(target, planned.tagging, dry_run=False)
    if planned.kind is Kind.REMOVE_DUPLICATE:
        remove_duplicate(source, target)
        return Outcome(Status.DUPLICATE_REMOVED, target, "already sorted: an identical copy is there")
    target.parent.mkdir(parents=True, exist_ok=True)
    if planned.action is Action.MOVE:
        move_new(source, target, planned.sha256)
    elif planned.action is Action.COPY:
        copy_verified(source, target, planned.sha256)
    else:
        link_new(source, target)
    return Outcome(Status.DONE, target)


def preview(planned: Plan) -> Outcome:
    """What a dry run reports for a plan, changing nothing (a tag reads the sidecar to tell)."""
    if planned.kind is Kind.TAG:
        assert planned.target is not None and planned.tagging is not None
        return tag(planned.target, planned.tagging, dry_run=True)
    return Outcome(Status.PLANNED if planned.changes_files else Status.SKIPPED, planned.target, planned.reason)


def perform(
    action: Action, source: Path, destination: Path, sha256: str | None,
    on_conflict: OnConflict, dry_run: bool = False,
) -> Outcome:
    """Plan and execute (or preview) in one step, for a file placed with no journal entry of its own
    (a companion, which travels under its image's)."""
    planned = plan(action, source, destination, sha256, on_conflict)
    return preview(planned) if dry_run else execute(planned)


__all__ = ["PLACING_ACTIONS", "Action", "Kind", "OnConflict", "Outcome", "Plan", "Tagging", "execute", "perform",
           "plan", "preview"]
