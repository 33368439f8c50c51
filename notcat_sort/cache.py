"""A small SQLite cache of predictions, keyed by file content and model.

Re-running over a library classifies nothing twice. A file is known by the sha256 of its bytes.
With a prediction the model's embedding (float16) and its attributes (breed and mood probabilities,
float32) are kept, so `--group-cats` and the report's breed and mood need no inference either; the cats
it found (their centroids and names) are kept here too, per model.
A second table remembers which content sits at which (device, inode, size, mtime), so an
unchanged file, or one that was only moved or renamed on the same filesystem, is recognised
without reading it at all.

A broken cache only costs speed: the file's `user_version` names its schema and the decoding it
was made with, and a cache of another version is emptied when opened for writing (and not used
when opened read-only); any error in a look-up counts as a miss.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

from notcat_sort.decode import PREPROCESSING_VERSION
from notcat_sort.model import Trait

# Bump when the tables change (2: embeddings, cats; 3: which input decided, `source`; 4: the attributes,
# `breeds` and `mood`: a cache from before them is emptied, so no photo is left without its breed).
SCHEMA_VERSION = 4
# Stored as SQLite's `PRAGMA user_version`.
VERSION = SCHEMA_VERSION * 1000 + PREPROCESSING_VERSION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL, digest TEXT NOT NULL, p_cat REAL NOT NULL, embedding BLOB, source TEXT NOT NULL,
    breeds BLOB, mood BLOB, PRIMARY KEY (model, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cats (
    model TEXT NOT NULL, cat INTEGER NOT NULL, name TEXT, photos INTEGER NOT NULL, centroid BLOB NOT NULL,
    PRIMARY KEY (model, cat)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cat_photos (
    model TEXT NOT NULL, digest TEXT NOT NULL, cat INTEGER NOT NULL,
    PRIMARY KEY (model, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    device INTEGER NOT NULL, inode INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (device, inode)) WITHOUT ROWID;
"""


def default_cache_path() -> Path:
    return Path(user_cache_dir("notcat-sort")) / "predictions.sqlite3"


def open_cache(path: Path | None, model_sha256: str, readonly: bool = False) -> PredictionCache | None:
    """The cache, or None when off or unusable: a broken cache or a read-only home only costs speed."""
    if path is None:
        return None
    try:
        return PredictionCache(path, model_sha256, readonly=readonly)
    except (OSError, sqlite3.Error):
        return None


@dataclass(frozen=True)
class FileKey:
    """What identifies an unchanged file without reading it."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileKey:
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class PredictionCache:
    def __init__(self, path: Path, model_sha256: str, readonly: bool = False) -> None:
        self.model = model_sha256
        if readonly:  # may be handed to other threads, which then take turns on it
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            if self._version() != VERSION:  # fail here, not on every lookup
                self._db.close()
                raise sqlite3.DatabaseError(f"prediction cache {path} is of another version")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self._version() != VERSION:
                self._recreate()

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _recreate(self) -> None:
        """Empty a cache of another version (or a new file) and give it this version's tables."""
        with self._db:
            for table in ("predictions", "files", "cats", "cat_photos"):
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {VERSION}")

    def _one(self, query: str, parameters: tuple) -> tuple | None:
        """The first row of a look-up; None when there is none, or the cache cannot answer."""
        try:
            return self._db.execute(query, parameters).fetchone()
        except sqlite3.Error:
            return None

    def lookup_file(self, key: FileKey) -> tuple[str, Known] | None:
        """(digest, what is known of it) for an unchanged file this model has seen."""
        row = self._one(
            f"SELECT f.digest, {_KNOWN_COLUMNS} FROM files f JOIN predictions p"
            " ON p.digest = f.digest AND p.model = ?"
            " WHERE f.device = ? AND f.inode = ? AND f.size = ? AND f.mtime_ns = ?",
            (self.model, key.device, key.inode, key.size, key.mtime_ns),
        )
        return None if row is None else (row[0], _known(row[1:]))

    def digest_at(self, key: FileKey) -> str | None:
        """The content digest known to sit at an unchanged file, whatever model classified it."""
        row = self._one(
            "SELECT digest FROM files WHERE device = ? AND inode = ? AND size = ? AND mtime_ns = ?",
            (key.device, key.inode, key.size, key.mtime_ns),
        )
        return None if row is None else row[0]

    def lookup_digest(self, digest: str) -> Known | None:
        row = self._one(f"SELECT {_KNOWN_COLUMNS} FROM predictions WHERE model = ? AND digest = ?",
                        (self.model, digest))
        return None if row is None else _known(row)

    def store(self, entries: Iterable[tuple[FileKey, str, Known]]) -> None:
        entries = list(entries)
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(self.model, digest, known.p_cat, _blob(known.embedding), known.source,
                  *(_exact_blob(known.attributes.get(trait)) for trait in Trait))
                 for _, digest, known in entries])
            self._remember((key, digest) for key, digest, _ in entries)

    def remember(self, entries: Iterable[tuple[FileKey, str]]) -> None:
        """Record where known content sits, e.g. the verified copies a run placed, so that a
        re-run recognises them without reading them."""
        with self._db:
            self._remember(entries)

    def _remember(self, entries: Iterable[tuple[FileKey, str]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                             [(k.device, k.inode, k.size, k.mtime_ns, digest) for k, digest in entries])

    # --- the cats --group-cats found, per model (see notcat_sort.cats) ---

    def cats(self, space: str) -> list[tuple[int, str | None, int, np.ndarray]]:
        """(cat, name, photos, centroid) of each cat known for this model, by number. `space` names
        the vectors the centroids are in (the raw embedding, or an identity head's)."""
        rows = self._db.execute("SELECT cat, name, photos, centroid FROM cats WHERE model = ? ORDER BY cat",
                                (self._space(space),)).fetchall()
        return [(cat, name, photos, np.frombuffer(centroid, np.float32)) for cat, name, photos, centroid in rows]

    def _space(self, space: str) -> str:
        return f"{self.model} {space}"

    def cat_of(self, space: str, digests: list[str]) -> dict[str, int]:
        """The cat each of these photos was put with by an earlier run (0: unknown)."""
        found: dict[str, int] = {}
        for start in range(0, len(digests), 500):
            chunk = digests[start:start + 500]
            found.update(self._db.execute(
                f"SELECT digest, cat FROM cat_photos WHERE model = ? AND digest IN ({','.join('?' * len(chunk))})",
                (self._space(space), *chunk)).fetchall())
        return found

    def store_cats(self, space: str, cats: Iterable[tuple[int, str | None, int, np.ndarray]],
                   photos: Iterable[tuple[str, int]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO cats VALUES (?, ?, ?, ?, ?)",
                                 [(self._space(space), cat, name, count, centroid.astype(np.float32).tobytes())
                                  for cat, name, count, centroid in cats])
            self._db.executemany("INSERT OR REPLACE INTO cat_photos VALUES (?, ?, ?)",
                                 [(self._space(space), digest, cat) for digest, cat in photos])

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class Known:
    """What the cache holds for a content digest under one model."""

    p_cat: float
    embedding: np.ndarray | None = None  # float32 (D,), None for a model without an embedding output
    source: str = "image"  # which input decided (notcat_sort.embedded.Source)
    attributes: Mapping[Trait, np.ndarray] = field(default_factory=dict)  # float32 (labels,) per attribute the model has


# The columns a Known is read from, in its order (the attributes in Trait's order, as stored).
_KNOWN_COLUMNS = "p_cat, embedding, source, " + ", ".join(trait.value for trait in Trait)


def _known(row: tuple) -> Known:
    attributes = {trait: np.frombuffer(blob, np.float32) for trait, blob in zip(Trait, row[3:], strict=True) if blob is not None}
    return Known(row[0], _vector(row[1]), row[2], attributes)


def _blob(embedding: np.ndarray | None) -> bytes | None:
    return None if embedding is None else embedding.astype(np.float16).tobytes()


def _exact_blob(probabilities: np.ndarray | None) -> bytes | None:
    """The attributes as float32: a few numbers, which the report prints to 4 places whether cached or not."""
    return None if probabilities is None else probabilities.astype(np.float32).tobytes()


def _vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, np.float16).astype(np.float32)
