"""Thumbnails for the review page: made on first request, upright, and kept on disk.

A library's review asks for tens of thousands of them, each costing a decode of the photo (tens
of milliseconds for a 12 MP JPEG, even at 1/8 scale), so they are kept in a SQLite file in the
user cache folder, keyed by the file's stat (device, inode, size, modification time: a file
changed since is drawn again, one moved by a correction is not) and size. The least recently
used go first once the file holds more than `capacity` bytes.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from pathlib import Path

from PIL import Image
from platformdirs import user_cache_dir

from notcat_sort.cache import FileKey
from notcat_sort.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    exif_orientation,
    upright,
)

_SCHEMA = """CREATE TABLE IF NOT EXISTS thumbnails (
    device INTEGER NOT NULL, inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    side INTEGER NOT NULL, jpeg BLOB NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (device, inode, size, mtime_ns, side)) WITHOUT ROWID"""
_KEY = "device = ? AND inode = ? AND size = ? AND mtime_ns = ? AND side = ?"


def default_thumbnail_cache() -> Path:
    return Path(user_cache_dir("notcat-sort")) / "thumbnails.sqlite3"


class Thumbnails:
    """JPEG thumbnails of at most `size` pixels a side; with `path`, kept there (else drawn each time)."""

    def __init__(self, path: Path | None, size: int = 320, capacity: int = 1024 * 1024 * 1024) -> None:
        self.size, self.capacity = size, capacity
        self._path = path
        self._local = threading.local()  # a connection per thread
        self._stored = -1  # bytes in the file, counted at the first store
        self._lock = threading.Lock()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with sqlite3.connect(path, timeout=30) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute(_SCHEMA)
                db.close()
            except (OSError, sqlite3.Error):  # a read-only or broken cache folder only costs speed
                self._path = None

    def get(self, path: Path) -> bytes:
        """Raises FileNotFoundError or PermissionError when the file cannot be read, DecodeError when
        it cannot be drawn."""
        stat = FileKey.of(os.stat(path))
        key = (stat.device, stat.inode, stat.size, stat.mtime_ns, self.size)
        db = self._db()
        if db is not None:
            try:
                found = db.execute(f"SELECT jpeg, used FROM thumbnails WHERE {_KEY}", key).fetchone()
                if found is not None:
                    today = int(time.time()) // 86400
                    if found[1] != today:  # marked used at most once a day: a look-up seldom writes
                        with db:
                            db.execute(f"UPDATE thumbnails SET used = ? WHERE {_KEY}", (today, *key))
                    return bytes(found[0])
            except sqlite3.Error:
                pass
        thumbnail = self._draw(path)
        if db is not None:
            self._store(db, key, thumbnail)
        return thumbnail

    def _db(self) -> sqlite3.Connection | None:
        if self._path is None:
            return None
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self._path, timeout=30)
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _store(self, db: sqlite3.Connection, key: tuple, thumbnail: bytes) -> None:
        try:
            with self._lock:
                if self._stored < 0:
                    self._stored = int(db.execute("SELECT coalesce(sum(length(jpeg)), 0) FROM thumbnails").fetchone()[0])
                with db:
                    db.execute("INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (*key, thumbnail, int(time.time()) // 86400))
                self._stored += len(thumbnail)
                if self._stored > self.capacity:
                    self._prune(db)
        except sqlite3.Error:  # a full disk or a locked file only costs the next request a decode
            pass

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop the least recently used until a tenth of the capacity is free."""
        goal = self.capacity * 9 // 10
        rows = db.execute("SELECT device, inode, size, mtime_ns, side, length(jpeg) FROM thumbnails ORDER BY used").fetchall()
        dropped = []
        for row in rows:
            if self._stored <= goal:
                break
            dropped.append(row[:5])
            self._stored -= row[5]
        with db:
            db.executemany(f"DELETE FROM thumbnails WHERE {_KEY}", dropped)

    def _draw(self, path: Path) -> bytes:
        return draw(path, self.size)


def draw(source: bytes | Path, size: int, orientation: int | None = None) -> bytes:
    """A JPEG of `source` at most `size` px a side, upright: by `orientation` where given (a RAW
    preview's), else as decode() turns the image. Raises FileNotFoundError or PermissionError when
    a file cannot be read, DecodeError when it cannot be drawn."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > DEFAULT_MAX_PIXELS:
                raise DecodeError(f"image is {image.width}x{image.height}, too large to draw")
            if orientation is None:
                orientation = 1 if image.format == "HEIF" else exif_orientation(image)  # as decode() does
            if image.format == "JPEG":
                image.draft("RGB", (size, size))
            image.thumbnail((size, size))
            small = upright(image.convert("RGB"), orientation)
    except (DecodeError, FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file can make Pillow raise almost anything
        raise DecodeError(f"cannot draw a thumbnail: {error or type(error).__name__}") from None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()
