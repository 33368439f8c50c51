"""The cats named on the review page, kept as `--known-cats` reads them: a folder per cat, named
as the cat, holding verified copies of its photos named by content (`<sha256 prefix>-<name>`),
so that naming a photo twice keeps one copy. One such folder per library, in the user data
folder unless `serve --known-cats DIR` says where; it is also easy to edit by hand.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

from platformdirs import user_data_dir

from notcat_sort.actions import Action, OnConflict, perform
from notcat_sort.actions.common import remove
from notcat_sort.content import sha256_file
from notcat_sort.known_cats import read_examples


def default_known_cats(folders: list[str]) -> Path:
    """The folder for the library whose photos were in these folders: named after their common
    folder, and told apart from another of the same name by a hash of its path."""
    library = Path(os.path.commonpath(folders)) if folders else Path.cwd()
    tag = hashlib.sha256(os.fsencode(library)).hexdigest()[:8]
    return Path(user_data_dir("notcat-sort")) / "known-cats" / f"{library.name or 'library'}-{tag}"


class KnownCatsFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: dict[str, str] = {}  # sha256 -> the cat it is an example of
        if root.is_dir():
            for example in read_examples(root):
                self.names[sha256_file(example.candidate.path)] = example.name

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.names.values()).items()))

    def add(self, photo: Path, sha256: str, name: str) -> None:
        """Keep a verified copy of `photo` as an example of `name`, and of no other cat."""
        self.remove(photo.name, sha256)
        perform(Action.COPY, photo, self.root / name / f"{sha256[:16]}-{photo.name}", sha256, OnConflict.SKIP)
        self.names[sha256] = name

    def remove(self, file_name: str, sha256: str) -> None:
        """Drop the photo's example copy (named by content, or by hand under any name) from its cat's folder."""
        name = self.names.pop(sha256, None)
        if name is None:
            return
        folder = self.root / name
        copies = [folder / f"{sha256[:16]}-{file_name}"] + sorted(folder.iterdir() if folder.is_dir() else [])
        for copy in dict.fromkeys(copies):
            if copy.is_file() and sha256_file(copy) == sha256:
                remove(copy)
                return
