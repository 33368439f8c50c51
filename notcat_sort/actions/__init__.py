"""Stage 5: act on each decision. All file changes go through here, under one set of rules:
never overwrite, never remove a source before its copy is verified, and re-runs are idempotent.
Every action takes `dry_run`, in which it works out what it would do and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from notcat_sort.actions.common import Outcome
from notcat_sort.actions.conflict import OnConflict
from notcat_sort.actions.copy import copy
from notcat_sort.actions.link import link
from notcat_sort.actions.move import move
from notcat_sort.actions.tag import tag

ACTIONS = {"move": move, "copy": copy, "link": link, "tag": tag}


def perform(
    action: str, source: Path, destination: Path, sha256: str | None,
    on_conflict: OnConflict, dry_run: bool = False, **details: object,
) -> Outcome:
    """`details` are what one action needs beyond the file names, e.g. tag's label and p_cat."""
    return ACTIONS[action](source, destination, sha256, on_conflict, dry_run, **details)


__all__ = ["ACTIONS", "OnConflict", "Outcome", "perform"]
