"""Classify uploaded images with the CLI's decode, model and decision, batching requests under load.

An upload is decoded as the CLI decodes a file: a RAW file (known by its name, or by its content
when it comes without one) from its embedded preview, anything else as the image itself; the
answer carries a JPEG thumbnail of what was classified, which any browser can show (a HEIC or a
RAW file it could not).

Uploads are decoded in a child process (`Decoder`): a file that crashes a native decoder (a bug in
a codec, a crafted file) kills that child, not the server; its request gets an error and the next
ones a new child. One onnxruntime session (`notcat_sort.model.Classifier`) is shared by a few
worker threads.
Each worker takes every image waiting in the queue (up to `batch_size`) into one model call, so
a lone request is never held back waiting for company, while concurrent requests share calls.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notcat_sort.classify import Picture, picture, preview_picture
from notcat_sort.decide import Label, Policy
from notcat_sort.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from notcat_sort.embedded import Source
from notcat_sort.model import DOMESTIC, Classifier, Guess, ModelCard, Trait
from notcat_sort.scan import looks_like_image
from notcat_sort.serve.thumbnails import draw
from notcat_sort.sidecars import RAW_SUFFIXES

THUMBNAIL_SIZE = 320  # px, the longer side of the thumbnail an answer carries
TOP_BREEDS = 5  # the breeds an answer lists, the most likely first (`domestic` is no breed: not listed)


class NotAnImage(ValueError):
    """The upload's first bytes are no image format the CLI reads."""


@dataclass(frozen=True)
class Verdict:
    label: Label
    p_cat: float
    sha256: str
    source: Source  # what decided: the image, or a RAW file's preview
    thumbnail: bytes  # JPEG, upright, of what was classified
    # From a model with the heads (else empty and None): the most likely breeds, the one the card's rule
    # names ("" where none is confident) and the mood, all from the same inference as p_cat.
    breeds: list[Guess] = field(default_factory=list)
    breed: Guess | None = None
    mood: Guess | None = None


@dataclass(frozen=True)
class _Scored:
    """One image's share of a model call."""

    p_cat: float
    attributes: Mapping[Trait, np.ndarray]


@dataclass
class BatchStats:
    calls: int = 0
    images: int = 0


_Job = tuple[np.ndarray, "Future[_Scored]"]


@dataclass(frozen=True)
class _Prepared:
    """What the child sends back for an upload: the model input, a thumbnail of it, and what decided."""

    image: np.ndarray
    thumbnail: bytes
    source: Source


def _prepare(upload: bytes, name: str, size: int, max_pixels: int) -> _Prepared:
    """Decode an upload as the CLI decodes a file, and draw its thumbnail (in the child)."""
    shown = _picture(upload, name)
    image = decode(shown.data, size, max_pixels, shown.orientation)
    return _Prepared(image, draw(shown.data, THUMBNAIL_SIZE, shown.orientation), shown.source)


class Decoder:
    """Decodes uploads in child processes, so that one that crashes the decoder cannot end the server.

    When a child dies, every upload it had in hand fails with BrokenProcessPool; each is decoded
    again alone in a child of its own, which tells the file that crashed it (DecodeError) from the
    innocent ones (decoded), and later uploads go to a new pool."""

    def __init__(self, size: int, max_pixels: int, workers: int) -> None:
        self._size, self._max_pixels, self._workers = size, max_pixels, workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def prepare(self, upload: bytes, name: str) -> _Prepared:
        pool = self._current()
        try:
            return pool.submit(_prepare, upload, name, self._size, self._max_pixels).result()
        except BrokenProcessPool:
            self._replace(pool)
        with ProcessPoolExecutor(1, mp_context=_CONTEXT) as alone:
            try:
                return alone.submit(_prepare, upload, name, self._size, self._max_pixels).result()
            except BrokenProcessPool:
                raise DecodeError(CRASHED) from None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self._workers, mp_context=_CONTEXT)
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


# A fresh interpreter per child: forking a server that runs threads could copy a held lock.
_CONTEXT = multiprocessing.get_context("spawn")
CRASHED = "the image decoder crashed on this file (its child process died); the server goes on"


class BatchedClassifier:
    def __init__(self, card: ModelCard, policy: Policy, workers: int, batch_size: int = 16,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.card, self.policy, self.max_pixels = card, policy, max_pixels
        self.stats = BatchStats()
        self._model = Classifier(card)
        self._decoder = Decoder(card.input_size, max_pixels, workers)
        self._batch_size = batch_size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"notcat-serve-model-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def classify(self, upload: bytes, name: str = "") -> Verdict:
        """Decode and classify one upload (`name`: its file name, where the client gave one), blocking
        until its batch has run.

        Raises NotAnImage for bytes of no image format, DecodeError for a damaged image."""
        prepared = self._decoder.prepare(upload, name)
        done: Future[_Scored] = Future()
        self._jobs.put((prepared.image, done))
        scored = done.result()
        breeds, mood = (self.card.attributes.get(trait) for trait in (Trait.BREED, Trait.MOOD))
        found_breeds, found_mood = (scored.attributes.get(trait) for trait in (Trait.BREED, Trait.MOOD))
        return Verdict(self.policy.decide(scored.p_cat), scored.p_cat, hashlib.sha256(upload).hexdigest(), prepared.source,
                       prepared.thumbnail,
                       breeds.ranked(found_breeds, TOP_BREEDS, leave_out=(DOMESTIC,)) if breeds and found_breeds is not None else [],
                       breeds.guess(found_breeds) if breeds and found_breeds is not None else None,
                       mood.guess(found_mood) if mood and found_mood is not None else None)

    def close(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._decoder.close()

    def _work(self) -> None:
        while (first := self._jobs.get()) is not None:
            batch, stopping = [first], False
            while len(batch) < self._batch_size:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._run(batch)
            if stopping:
                return

    def _run(self, batch: list[_Job]) -> None:
        try:
            scores = self._model.scores(np.stack([image for image, _ in batch]), embedding=False)
        except Exception as error:  # noqa: BLE001 - each waiting request gets the failure, the worker lives on
            for _, done in batch:
                done.set_exception(error)
            return
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.images += len(batch)
        for n, (_, done) in enumerate(batch):
            done.set_result(_Scored(float(scores.p_cat[n]), scores.of(n)))


def _picture(upload: bytes, name: str) -> Picture:
    """As the CLI reads a file of this name. A body in no image format, without a RAW file's name, may
    still be a RAW file sent without its name (RAF, CR3, ORF, RW2...): then its preview, if it has one."""
    if looks_like_image(upload[:16]) or Path(name).suffix.lower() in RAW_SUFFIXES:
        return picture(Path(name), upload)
    try:
        return preview_picture(upload)
    except DecodeError:
        raise NotAnImage("not an image: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF/AVIF or a camera RAW file "
                         "with a preview expected") from None


__all__ = ["BatchedClassifier", "DecodeError", "NotAnImage", "Verdict"]
