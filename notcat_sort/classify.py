"""Stage 2: read, decode and classify files in parallel worker processes.

Each worker handles a batch at a time: it checks the cache, reads each file once (hashing and
decoding the same bytes), and runs one batched onnxruntime call. Batches are dispatched lazily
with a bounded look-ahead, so the file list is streamed and memory stays flat.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from notcat_sort.cache import FileKey, PredictionCache
from notcat_sort.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from notcat_sort.model import Classifier, ModelCard
from notcat_sort.scan import Candidate

# Above this size a file is hashed and decoded from disk separately instead of held in memory.
_READ_WHOLE_LIMIT = 64 * 1024 * 1024


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


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Per worker process: one onnxruntime session and one read-only cache connection, kept across batches.
_classifiers: dict[Path, Classifier] = {}
_caches: dict[tuple[Path, str], PredictionCache | None] = {}


def _worker_cache(settings: ClassifySettings) -> PredictionCache | None:
    if settings.cache_path is None:
        return None
    key = (settings.cache_path, settings.card.sha256)
    if key not in _caches:
        try:
            _caches[key] = PredictionCache(settings.cache_path, settings.card.sha256, readonly=True)
        except Exception:  # noqa: BLE001 - an unreadable cache only costs speed
            _caches[key] = None
    return _caches[key]


def _classifier(card: ModelCard) -> Classifier:
    if card.path not in _classifiers:
        _classifiers[card.path] = Classifier(card)
    return _classifiers[card.path]


def _prepare(candidate: Candidate, settings: ClassifySettings, cache: PredictionCache | None):
    """Either a finished Prediction (error or cache hit) or (key, digest, image) to classify."""
    if candidate.problem:
        return Prediction(candidate, error=candidate.problem)
    path = candidate.path
    try:
        key = FileKey.of(os.stat(path))
        known = cache.lookup_file(key) if cache else None
        if known:
            return Prediction(candidate, known[1], known[0], cached=True, file_key=key)
        if key.size > _READ_WHOLE_LIMIT:
            digest, source = _sha256_of_file(path), path
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
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
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


def _batched(items: Iterable[Candidate], size: int) -> Iterator[list[Candidate]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def classify(candidates: Iterable[Candidate], settings: ClassifySettings) -> Iterator[list[Prediction]]:
    """Yield predictions batch by batch, in scan order, storing new ones in the cache."""
    cache = (
        PredictionCache(settings.cache_path, settings.card.sha256) if settings.cache_path else None
    )
    try:
        with Parallel(n_jobs=settings.jobs, return_as="generator", pre_dispatch="2*n_jobs") as run:
            tasks = (
                delayed(classify_batch)(batch, settings)
                for batch in _batched(candidates, settings.batch_size)
            )
            for predictions in run(tasks):
                if cache:
                    cache.store(
                        (p.file_key, p.sha256, p.p_cat)
                        for p in predictions
                        if p.p_cat is not None and not p.cached and p.file_key and p.sha256
                    )
                yield predictions
    finally:
        if cache:
            cache.close()
