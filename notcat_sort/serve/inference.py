"""Classify uploaded images with the CLI's decode, model and decision, batching requests under load.

One onnxruntime session (`notcat_sort.model.Classifier`) is shared by a few worker threads.
Each worker takes every image waiting in the queue (up to `batch_size`) into one model call, so
a lone request is never held back waiting for company, while concurrent requests share calls.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from notcat_sort.decide import Label, Policy
from notcat_sort.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from notcat_sort.model import Classifier, ModelCard
from notcat_sort.scan import looks_like_image


class NotAnImage(ValueError):
    """The upload's first bytes are no image format the CLI reads."""


@dataclass(frozen=True)
class Verdict:
    label: Label
    p_cat: float
    sha256: str


@dataclass
class BatchStats:
    calls: int = 0
    images: int = 0


_Job = tuple[np.ndarray, "Future[float]"]


class BatchedClassifier:
    def __init__(self, card: ModelCard, policy: Policy, workers: int, batch_size: int = 16,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.card, self.policy, self.max_pixels = card, policy, max_pixels
        self.stats = BatchStats()
        self._model = Classifier(card)
        self._batch_size = batch_size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"notcat-serve-model-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def classify(self, upload: bytes) -> Verdict:
        """Decode and classify one upload, blocking until its batch has run.

        Raises NotAnImage for bytes of no image format, DecodeError for a damaged image."""
        if not looks_like_image(upload[:16]):
            raise NotAnImage("not an image: JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC/HEIF/AVIF expected")
        image = decode(upload, self.card.input_size, self.max_pixels)
        done: Future[float] = Future()
        self._jobs.put((image, done))
        p_cat = done.result()
        return Verdict(self.policy.decide(p_cat), p_cat, hashlib.sha256(upload).hexdigest())

    def close(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()

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
            probabilities = self._model.p_cat(np.stack([image for image, _ in batch]))
        except Exception as error:  # noqa: BLE001 - each waiting request gets the failure, the worker lives on
            for _, done in batch:
                done.set_exception(error)
            return
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.images += len(batch)
        for (_, done), p_cat in zip(batch, probabilities, strict=True):
            done.set_result(float(p_cat))


__all__ = ["BatchedClassifier", "DecodeError", "NotAnImage", "Verdict"]
