"""Stage 2: read, decode and classify files in parallel worker processes.

The main process answers what the cache already knows (an unchanged, moved or renamed file is
recognised by its stat key without being read) and sends only the rest to the workers, a batch
at a time. A worker reads each file once (hashing and decoding the same bytes), checks the cache
by content, and runs one batched onnxruntime call. Only a bounded number of batches is in flight,
so the file list is streamed and memory stays flat however large the library is.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib.externals.loky import get_reusable_executor

from notcat_sort.cache import FileKey, PredictionCache, open_cache
from notcat_sort.content import sha256_file
from notcat_sort.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from notcat_sort.model import Classifier, ModelCard
from notcat_sort.scan import Candidate

# Above this size a file is hashed and decoded from disk separately instead of held in memory.
_READ_WHOLE_LIMIT = 64 * 1024 * 1024
# Files looked up in the cache at a time; cache hits are yielded in groups of up to this many.
_LOOKUP_CHUNK = 256
# Worker batches submitted but not yet yielded, per worker: enough to keep every worker busy
# while the main process acts on finished files, few enough that memory stays flat.
_IN_FLIGHT_PER_JOB = 4
# Idle worker processes exit after this long (as joblib's own default).
_IDLE_SECONDS = 300


@dataclass(frozen=True)
class Prediction:
    candidate: Candidate
    p_cat: float | None = None
    sha256: str | None = None
    error: str | None = None
    cached: bool = False
    file_key: FileKey | None = None


@dataclass(frozen=True)
class ClassifySettings:
    card: ModelCard
    jobs: int = 1
    batch_size: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_path: Path | None = None  # None: no cache


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _read_problem(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file disappeared before it could be read"
    if isinstance(error, PermissionError):
        return "cannot read file: permission denied"
    return f"cannot read file: {error.strerror or error}"


# Per worker process: one onnxruntime session and one read-only cache connection, kept across batches.
_classifiers: dict[Path, Classifier] = {}
_caches: dict[tuple[Path | None, str], PredictionCache | None] = {}


def _worker_cache(settings: ClassifySettings) -> PredictionCache | None:
    """A worker's read-only connection, opened once and kept across batches."""
    key = (settings.cache_path, settings.card.sha256)
    if key not in _caches:
        _caches[key] = open_cache(settings.cache_path, settings.card.sha256, readonly=True)
    return _caches[key]


def _classifier(card: ModelCard) -> Classifier:
    if card.path not in _classifiers:
        _classifiers[card.path] = Classifier(card)
    return _classifiers[card.path]


def _prepare(candidate: Candidate, settings: ClassifySettings, cache: PredictionCache | None):
    """Either a finished Prediction (error or cache hit by content) or (key, digest, image) to classify."""
    path = candidate.path
    try:
        key = FileKey.of(os.stat(path))
        if key.size > _READ_WHOLE_LIMIT:
            digest, source = sha256_file(path), path
        else:
            source = path.read_bytes()
            digest = hashlib.sha256(source).hexdigest()
    except OSError as error:
        return Prediction(candidate, error=_read_problem(error))
    p_cat = cache.lookup_digest(digest) if cache else None
    if p_cat is not None:
        return Prediction(candidate, p_cat, digest, cached=True, file_key=key)
    try:
        image = decode(source, settings.card.input_size, settings.max_pixels)
    except DecodeError as error:
        return Prediction(candidate, sha256=digest, error=str(error), file_key=key)
    except OSError as error:
        return Prediction(candidate, sha256=digest, error=_read_problem(error), file_key=key)
    return key, digest, image


def classify_batch(candidates: list[Candidate], settings: ClassifySettings) -> list[Prediction]:
    """Worker entry point. Never raises for a bad file: failures become Predictions with an error."""
    cache = _worker_cache(settings)
    prepared = [_prepare(candidate, settings, cache) for candidate in candidates]
    pending = [(i, item) for i, item in enumerate(prepared) if not isinstance(item, Prediction)]
    if pending:
        batch = np.stack([image for _, (_, _, image) in pending])
        try:
            probabilities = _classifier(settings.card).p_cat(batch)
        except Exception as error:  # noqa: BLE001 - report, never kill the worker
            probabilities = [None] * len(pending)
            failure = f"model failed on this batch: {error}"
        else:
            failure = None
        for (i, (key, digest, _)), p_cat in zip(pending, probabilities):
            prepared[i] = Prediction(
                candidates[i], None if p_cat is None else float(p_cat), digest, failure, file_key=key
            )
    return prepared


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is the main process's to handle (it finishes the file in hand)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batched(items: Iterable[Candidate], size: int) -> Iterator[list[Candidate]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _known(candidate: Candidate, cache: PredictionCache | None) -> Prediction | None:
    """The prediction for `candidate` without reading it: a scan problem or an unchanged file."""
    if candidate.problem:
        return Prediction(candidate, error=candidate.problem)
    if cache is None:
        return None
    try:
        key = FileKey.of(os.stat(candidate.path))
    except OSError:
        return None  # the worker reports why it cannot be read
    known = cache.lookup_file(key)
    return Prediction(candidate, known[1], known[0], cached=True, file_key=key) if known else None


def _submit(batch: list[Candidate], settings: ClassifySettings) -> Future | list[Prediction]:
    """Classify inline for one job, else in loky's reusable process pool, started on first use.

    The pool outlives this call, so repeated calls (watch mode) keep warm workers and their
    model sessions; idle workers exit on their own after `_IDLE_SECONDS`."""
    if settings.jobs == 1:
        return classify_batch(batch, settings)
    pool = get_reusable_executor(settings.jobs, timeout=_IDLE_SECONDS, initializer=_ignore_interrupts)
    return pool.submit(classify_batch, batch, settings)


def classify(candidates: Iterable[Candidate], settings: ClassifySettings) -> Iterator[list[Prediction]]:
    """Yield predictions a group at a time, roughly in scan order, storing new ones in the cache.

    Files the cache knows by their stat key come first in each group of up to 256 and never
    reach a worker; worker processes are started only if something needs classifying."""
    cache = open_cache(settings.cache_path, settings.card.sha256)
    # Each entry: cache hits (already final), or a worker batch whose results are new to the cache.
    in_flight: deque[tuple[Future | list[Prediction], bool]] = deque()
    limit = _IN_FLIGHT_PER_JOB * settings.jobs

    def ready() -> bool:
        entry = in_flight[0][0]
        return isinstance(entry, list) or entry.done()

    def finished() -> list[Prediction]:
        entry, new = in_flight.popleft()
        predictions = entry if isinstance(entry, list) else entry.result()
        if cache and new:
            try:
                cache.store(
                    (p.file_key, p.sha256, p.p_cat)
                    for p in predictions
                    if p.p_cat is not None and p.file_key and p.sha256
                )
            except sqlite3.Error:  # e.g. disk full or locked for too long: only costs the next run
                pass
        return predictions

    try:
        for chunk in _batched(candidates, _LOOKUP_CHUNK):
            known = [_known(candidate, cache) for candidate in chunk]
            hits = [prediction for prediction in known if prediction is not None]
            if hits:
                in_flight.append((hits, False))
            unknown = [candidate for candidate, prediction in zip(chunk, known) if prediction is None]
            for batch in _batched(unknown, settings.batch_size):
                in_flight.append((_submit(batch, settings), True))
                while len(in_flight) > limit:
                    yield finished()
            while in_flight and ready():
                yield finished()
        while in_flight:
            yield finished()
    finally:
        for entry, _ in in_flight:  # stopped early: drop batches not yet started
            if isinstance(entry, Future):
                entry.cancel()
        if cache:
            cache.close()
