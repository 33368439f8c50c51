"""Stage 2: read, decode and classify files in parallel threads.

The main thread answers what the cache already knows (an unchanged, moved or renamed file is
recognised by its stat key without being read) and hands only the rest to `jobs` threads, a
batch at a time. A thread reads each file once (hashing and decoding the same bytes; a JPEG
that its EXIF thumbnail decides is hashed as it streams by, never held), checks the cache by
content, and runs one batched onnxruntime call. Threads are enough because the
heavy parts release the GIL: reading, sha256, Pillow's decoding and resizing, and inference
(one onnxruntime session, shared, one intra-op thread per call). Against worker processes this
saves starting an interpreter per core and importing numpy, Pillow and onnxruntime into each
(about 0.4 s a run); `benchmarks/throughput.py` measured 12-18% more images per second and half
the peak memory. Only a bounded number of batches is in flight, so the file list is streamed
and memory stays flat however large the library is.

With a cluster (`ClassifySettings.cluster`, see notcat_sort.cluster) the same batches go to the
workers of a Dask cluster instead of to the threads, and run the same `classify_batch` there;
the cache stays here, on this machine.

Wherever `classify_batch` runs, it decodes through that process's decoder guard (see
notcat_sort.decoder_guard): a native decoder that crashes the process on a file ends that run,
but the next one decodes the files that were in flight in a child process, and quarantines the
one that kills it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from notcat_sort.cache import FileKey, Known, PredictionCache, open_cache
from notcat_sort.content import sha256_rest
from notcat_sort.decode import DEFAULT_MAX_PIXELS, DecodeError, OverPixelCap, decode
from notcat_sort.decoder_guard import Crash, DecoderGuard, decoder_guard
from notcat_sort.embedded import NoPreview, Source, exif_thumbnail, raw_preview
from notcat_sort.model import Classifier, ModelCard, Trait
from notcat_sort.scan import Candidate
from notcat_sort.sidecars import RAW_SUFFIXES

if TYPE_CHECKING:
    from notcat_sort.cluster import Cluster

T = TypeVar("T")

# Above this size a file is hashed and decoded from disk separately instead of held in memory.
_READ_WHOLE_LIMIT = 64 * 1024 * 1024
# What is read first of a JPEG that its EXIF thumbnail may decide: all of its headers (each
# segment is at most 64 KiB; the camera samples' end before 44 KiB). A JPEG whose EXIF does not
# fit is decoded in full.
_HEAD = 256 * 1024
# Files looked up in the cache at a time; cache hits are yielded in groups of up to this many.
_LOOKUP_CHUNK = 256
# Batches submitted but not yet yielded, per thread: enough to keep every thread busy while
# the main thread acts on finished files, few enough that memory stays flat.
IN_FLIGHT_PER_JOB = 4


@dataclass(frozen=True)
class Prediction:
    candidate: Candidate
    p_cat: float | None = None
    sha256: str | None = None
    error: str | None = None
    cached: bool = False
    file_key: FileKey | None = None
    embedding: np.ndarray | None = None  # the model's embedding output, where it has one
    source: Source | None = None  # which input decided: the EXIF thumbnail, a RAW preview or the image
    # The model's attribute outputs (breed, mood probabilities over the card's labels), where it has them:
    # from the same inference as p_cat, so from the thumbnail where the thumbnail decided.
    attributes: Mapping[Trait, np.ndarray] = field(default_factory=dict)

    @classmethod
    def known(cls, candidate: Candidate, digest: str, known: Known, key: FileKey | None) -> Prediction:
        """A prediction the cache had."""
        return cls(candidate, known.p_cat, digest, cached=True, file_key=key, embedding=known.embedding,
                   source=_source(known.source), attributes=known.attributes)


@dataclass(frozen=True)
class ClassifySettings:
    card: ModelCard
    jobs: int = 1
    batch_size: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_path: Path | None = None  # None: no cache
    full_decode: bool = False  # never decide from a JPEG's EXIF thumbnail
    cluster: Cluster | None = None  # None: classify on `jobs` threads here

    @property
    def thumbnail_band(self) -> tuple[float, float] | None:
        """Where a thumbnail's p_cat is checked against the image's; None: the fast path is off."""
        return None if self.full_decode else self.card.thumbnail_band

    @property
    def cache_model(self) -> str:
        """What cached predictions are keyed on: the model, and the band and size when thumbnails
        may decide (a thumbnail's p_cat is not the image's, so --full-decode never reuses one)."""
        band = self.thumbnail_band
        return (self.card.sha256 if band is None
                else f"{self.card.sha256}+thumbnail:{band[0]:g}:{band[1]:g}@{self.card.thumbnail_size}")


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_problem(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file disappeared before it could be read"
    if isinstance(error, PermissionError):
        return "cannot read file: permission denied"
    return f"cannot read file: {error.strerror or error}"


# One onnxruntime session per model, loaded on first use and kept for the life of the process,
# so that watch mode's later batches (and a cluster worker's later tasks) find it warm.
_classifiers: dict[tuple[Path, str], Classifier] = {}
_loading = threading.Lock()


def _classifier(card: ModelCard, model: bytes | None = None) -> Classifier:
    """`model`: the model file's bytes, for a cluster worker that has no copy of the file."""
    with _loading:
        key = (card.path, card.sha256)
        if key not in _classifiers:
            _classifiers[key] = Classifier(card, model=model)
        return _classifiers[key]


# Cache lookup by content digest: what the cache knows, or None when unknown.
LookupDigest = Callable[[str], Known | None]


def _source(name: str) -> Source | None:
    """A cached source name as a Source (None for one this version does not know)."""
    try:
        return Source(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Input:
    """A file's model input and where it came from."""

    key: FileKey | None  # None: read elsewhere (a cluster worker was sent the bytes)
    digest: str
    image: np.ndarray
    source: Source


def _thumbnail(head: bytes, size: int, max_pixels: int) -> np.ndarray | None:
    """The model input from a JPEG's EXIF thumbnail, upright as the photo, found in the file's
    first bytes; None when the photo is no JPEG or its thumbnail is unusable (see
    notcat_sort.embedded). Never raises: anything wrong here only means the photo itself is decoded."""
    if not head.startswith(b"\xff\xd8\xff"):
        return None
    try:
        with Image.open(io.BytesIO(head)) as image:
            if image.format != "JPEG" or image.width * image.height > max_pixels:
                return None
            thumbnail = exif_thumbnail(image.info.get("exif", b""), image.size)
        return None if thumbnail is None else decode(thumbnail.jpeg, size, max_pixels, thumbnail.orientation)
    except Exception:  # noqa: BLE001 - a malformed thumbnail must never fail a photo
        return None


@dataclass(frozen=True)
class _Read:
    """A file read once: its stat key and digest, and what to decode: its bytes, or its path when
    it is too big to hold; or the model input from its EXIF thumbnail, when that was usable."""

    key: FileKey | None  # None: read elsewhere (a cluster worker was sent the bytes)
    digest: str
    photo: bytes | Path
    thumbnail: np.ndarray | None = None


@dataclass(frozen=True)
class _Sent:
    """A file's bytes, read elsewhere (a cluster worker was sent them), and their digest, computed once."""

    data: bytes
    digest: str

    @classmethod
    def of(cls, data: bytes) -> _Sent:
        return cls(data, hashlib.sha256(data).hexdigest())


def _read(path: Path, settings: ClassifySettings, thumbnail: bool, payload: _Sent | None = None) -> _Read:
    """Read `path` once, hashing every byte. With `thumbnail`, a JPEG's headers are read first: if
    they hold a usable EXIF thumbnail, the rest is only hashed as it streams by (holding a
    camera JPEG's 3-8 MB costs more in page faults than hashing it). `payload`: the file's
    bytes, read elsewhere (then there is no stat key here); its headers are looked at the same way."""
    if payload is not None:
        found = (_thumbnail(payload.data[:_HEAD], settings.card.thumbnail_size, settings.max_pixels)
                 if thumbnail and len(payload.data) <= _READ_WHOLE_LIMIT else None)
        return _Read(None, payload.digest, payload.data, found)
    with open(path, "rb") as handle:
        key = FileKey.of(os.fstat(handle.fileno()))
        if key.size > _READ_WHOLE_LIMIT:
            return _Read(key, sha256_rest(handle), path)
        if thumbnail:
            head = handle.read(_HEAD)
            found = _thumbnail(head, settings.card.thumbnail_size, settings.max_pixels)
            if found is not None:
                return _Read(key, sha256_rest(handle, hashlib.sha256(head)), path, found)
            handle.seek(0)
        data = handle.read()
    return _Read(key, hashlib.sha256(data).hexdigest(), data)


@dataclass(frozen=True)
class Picture:
    """What is decoded for a photo: a RAW file's embedded preview (with the orientation to show it
    in), or the photo itself (orientation None: its own EXIF, or HEIF's transforms)."""

    data: bytes | Path
    orientation: int | None
    source: Source


def picture(name: Path, photo: bytes | Path) -> Picture:
    """The preview of a RAW file (by its name's suffix, as the scan finds them), else the photo;
    DecodeError for a RAW file without a readable preview."""
    return preview_picture(photo) if name.suffix.lower() in RAW_SUFFIXES else Picture(photo, None, Source.IMAGE)


def preview_picture(raw: bytes | Path) -> Picture:
    """A RAW file's embedded preview; DecodeError if it has none that can be read."""
    try:
        preview = raw_preview(raw)
    except NoPreview as error:
        raise DecodeError(str(error)) from None
    return Picture(preview.jpeg, preview.orientation, Source.PREVIEW)


def _model_input(candidate: Candidate, photo: bytes | Path, settings: ClassifySettings) -> tuple[np.ndarray, Source]:
    """The pixels of a RAW file's preview, or of the image itself."""
    shown = picture(candidate.path, photo)
    return decode(shown.data, settings.card.input_size, settings.max_pixels, shown.orientation), shown.source


def _prepare(candidate: Candidate, settings: ClassifySettings, lookup: LookupDigest | None,
             thumbnail: bool = True, payload: _Sent | None = None) -> Prediction | _Input:
    """Either a finished Prediction (error or cache hit by content) or the input to classify: a
    usable EXIF thumbnail where `thumbnail` and the settings allow one (fast path), else a RAW
    file's preview or the image. `payload`: the file's bytes, read elsewhere."""
    thumbnail = thumbnail and settings.thumbnail_band is not None and candidate.path.suffix.lower() not in RAW_SUFFIXES
    try:
        read = _read(candidate.path, settings, thumbnail, payload)
    except OSError as error:
        return Prediction(candidate, error=read_problem(error))
    key, digest = read.key, read.digest
    known = lookup(digest) if lookup else None
    if known is not None:
        return Prediction.known(candidate, digest, known, key)
    if read.thumbnail is not None:
        return _Input(key, digest, read.thumbnail, Source.THUMBNAIL)
    try:
        image, source = _model_input(candidate, read.photo, settings)
    except OverPixelCap as error:  # the command line's own way to allow more
        return Prediction(candidate, sha256=digest, error=f"{error}; raise it with --max-pixels", file_key=key)
    except DecodeError as error:
        return Prediction(candidate, sha256=digest, error=str(error), file_key=key)
    except OSError as error:
        return Prediction(candidate, sha256=digest, error=read_problem(error), file_key=key)
    return _Input(key, digest, image, source)


# What preparing a file gives: a finished Prediction, or the input to classify.
Prepared = Prediction | _Input


def _decode_apart(candidate: Candidate, settings: ClassifySettings, payload: _Sent | None,
                  thumbnail: bool) -> tuple[Prepared, Prepared | None]:
    """Run in a child process for a suspect (see notcat_sort.decoder_guard): what `_prepare`
    gives, and when that is an EXIF thumbnail, also the image decoded in full, in case the
    thumbnail's p_cat falls in the band: the suspect is then never decoded in the parent."""
    first = _prepare(candidate, settings, None, thumbnail, payload)
    full = (_prepare(candidate, settings, None, False, payload)
            if isinstance(first, _Input) and first.source is Source.THUMBNAIL else None)
    return first, full


def _guard_key(candidate: Candidate, payload: _Sent | None) -> str | None:
    """What the decoder guard knows a file by: its stat key, or the digest of bytes sent here."""
    if payload is not None:
        return f"sha256-{payload.digest}"
    try:
        key = FileKey.of(os.stat(candidate.path))
    except OSError:
        return None
    return f"{key.device}-{key.inode}-{key.size}-{key.mtime_ns}"


def _prepare_guarded(guard: DecoderGuard, candidate: Candidate, settings: ClassifySettings,
                     lookup: LookupDigest | None, payload: _Sent | None,
                     thumbnail: bool = True) -> tuple[Prepared, Prepared | None]:
    """`_prepare` such that a decoder crash cannot end this process twice on one file: the
    Prepared, and for a suspect decoded in a child the full image's too (or None).

    A file that crashed the decoder before is its error; a suspect (in flight when a process
    died) is decoded in a child; any other file here, noted as in flight while it is."""
    key = _guard_key(candidate, payload)
    if key is None:  # cannot be read: _prepare says why
        return _prepare(candidate, settings, lookup, thumbnail, payload), None
    crash = guard.crashed(key)
    if crash is not None:
        return Prediction(candidate, sha256=crash.sha256 or None, error=crash.message), None
    if guard.suspect(key):
        alone = replace(settings, cluster=None, cache_path=None)
        found = guard.isolate(key, str(candidate.path), _decode_apart, candidate, alone, payload, thumbnail)
        if isinstance(found, Crash):
            return Prediction(candidate, sha256=found.sha256 or None, error=found.message), None
        first, full = found
        known = lookup(first.digest) if lookup and isinstance(first, _Input) else None
        if known is not None:
            return Prediction.known(candidate, first.digest, known, first.key), None
        return first, full
    with guard.in_flight(key, str(candidate.path)):
        return _prepare(candidate, settings, lookup, thumbnail, payload), None


def _infer(candidates: list[Candidate], inputs: dict[int, _Input], card: ModelCard,
           model: bytes | None) -> dict[int, Prediction]:
    """One model call per input size among `inputs` (by batch index): thumbnails are smaller than images."""
    by_size: dict[tuple[int, ...], dict[int, _Input]] = {}
    for i, item in inputs.items():
        by_size.setdefault(item.image.shape, {})[i] = item
    return {i: prediction for same in by_size.values() for i, prediction in _infer_one_size(candidates, same, card, model).items()}


def _infer_one_size(candidates: list[Candidate], inputs: dict[int, _Input], card: ModelCard,
                    model: bytes | None) -> dict[int, Prediction]:
    """One model call for `inputs`, all of one size; a failed call becomes each file's error."""
    try:
        scores = _classifier(card, model).scores(np.stack([item.image for item in inputs.values()]))
    except Exception as error:  # noqa: BLE001 - report the batch's files, never end the run
        return {i: Prediction(candidates[i], sha256=item.digest, error=f"model failed on this batch: {error}",
                              file_key=item.key) for i, item in inputs.items()}
    return {i: Prediction(candidates[i], float(scores.p_cat[n]), item.digest, file_key=item.key, source=item.source,
                          embedding=None if scores.embedding is None else scores.embedding[n], attributes=scores.of(n))
            for n, (i, item) in enumerate(inputs.items())}


def classify_batch(candidates: list[Candidate], settings: ClassifySettings, lookup: LookupDigest | None,
                   payloads: list[bytes] | None = None, model: bytes | None = None) -> list[Prediction]:
    """Runs on a pool thread or a cluster worker (which passes the model's bytes, and the files'
    bytes when it cannot read them). Never raises for a bad file: failures become Predictions
    with an error.

    Files whose EXIF thumbnail gave a p_cat inside the card's band are read again, decoded in full
    and classified again, in a second model call: the image itself decides them. Decoding goes
    through this process's decoder guard (see notcat_sort.decoder_guard)."""
    sources: list[_Sent | None] = ([_Sent.of(data) for data in payloads] if payloads is not None
                                   else [None] * len(candidates))
    guard = decoder_guard()
    guard.refresh()
    both = [_prepare_guarded(guard, candidate, settings, lookup, payload)
            for candidate, payload in zip(candidates, sources, strict=True)]
    prepared = [item for item, _ in both]
    decoded_apart = {i: full for i, (_, full) in enumerate(both) if full is not None}
    first = {i: item for i, item in enumerate(prepared) if isinstance(item, _Input)}
    decided = {i: item for i, item in enumerate(prepared) if isinstance(item, Prediction)}
    decided.update(_infer(candidates, first, settings.card, model))
    band = settings.thumbnail_band
    if band is not None:
        again = {i: decoded_apart[i] if i in decoded_apart
                 else _prepare_guarded(guard, candidates[i], settings, None, sources[i], thumbnail=False)[0]
                 for i, item in first.items() if item.source is Source.THUMBNAIL
                 and decided[i].p_cat is not None and band[0] <= decided[i].p_cat <= band[1]}  # type: ignore[operator]
        decided.update({i: item for i, item in again.items() if isinstance(item, Prediction)})
        decided.update(_infer(candidates, {i: item for i, item in again.items() if isinstance(item, _Input)},
                              settings.card, model))
    return [decided[i] for i in range(len(candidates))]


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _last_batches(files: list[T], settings: ClassifySettings) -> Iterator[list[T]]:
    """The last files of a run in a multiple of `jobs` batches of at most `batch_size`, of sizes
    within one of each other, so that no thread waits idle while another classifies the last
    batch (240 files on 2 threads: 16 batches of 15, not 15 of 16 with one thread idle for the last)."""
    count = -(-max(1, -(-len(files) // settings.batch_size)) // settings.jobs) * settings.jobs
    for index in range(count):
        if batch := files[index * len(files) // count:(index + 1) * len(files) // count]:
            yield batch


@dataclass(frozen=True)
class Batch:
    """Files to classify, with the stat keys this machine saw for them (None where not looked up)."""

    candidates: list[Candidate]
    keys: list[FileKey | None]
    last: bool = False  # one of the run's last batches, sized to keep every thread busy to the end


# What a classifier is handed: predictions already known, or a batch to classify.
Work = list[Prediction] | Batch


def _known(candidate: Candidate, cache: PredictionCache | None) -> tuple[Prediction | None, FileKey | None]:
    """The prediction for `candidate` without reading it (a scan problem or an unchanged file),
    and its stat key when the cache was asked."""
    if candidate.problem:
        return Prediction(candidate, error=candidate.problem), None
    if cache is None:
        return None, None
    try:
        key = FileKey.of(os.stat(candidate.path))
    except OSError:
        return None, None  # the classify thread reports why it cannot be read
    found = cache.lookup_file(key)
    if found is None:
        return None, key
    digest, known = found
    return Prediction.known(candidate, digest, known, key), key


def _work(candidates: Iterable[Candidate], cache: PredictionCache | None, settings: ClassifySettings) -> Iterator[Work]:
    """Per group of up to 256 files: those the cache knows by their stat key, then the rest in batches."""
    for chunk in _batched(candidates, _LOOKUP_CHUNK):
        known = [_known(candidate, cache) for candidate in chunk]
        hits = [prediction for prediction, _ in known if prediction is not None]
        if hits:
            yield hits
        unknown = [(candidate, key) for candidate, (prediction, key) in zip(chunk, known, strict=True)
                   if prediction is None]
        last = settings.jobs > 1 and len(chunk) < _LOOKUP_CHUNK  # threads to keep busy; the scan has ended
        for batch in _last_batches(unknown, settings) if last else _batched(unknown, settings.batch_size):
            yield Batch([candidate for candidate, _ in batch], [key for _, key in batch], last)


class _Pool:
    """The classify threads and the read-only cache connection they take turns on (an SQLite
    connection is not to be used by two threads at once), started when first needed."""

    def __init__(self, settings: ClassifySettings) -> None:
        self._settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._cache: PredictionCache | None = None
        self._cache_turn = threading.Lock()

    def _lookup(self, digest: str) -> Known | None:
        with self._cache_turn:
            return self._cache.lookup_digest(digest) if self._cache else None

    def submit(self, batch: list[Candidate]) -> Future:
        if self._executor is None:
            self._cache = open_cache(self._settings.cache_path, self._settings.cache_model, readonly=True)
            self._executor = ThreadPoolExecutor(self._settings.jobs, thread_name_prefix="notcat-classify")
        return self._executor.submit(classify_batch, batch, self._settings, self._lookup)

    def close(self) -> None:
        """Drop batches not yet started and wait for those running (at most one per thread)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._cache is not None:
            self._cache.close()


def _classify_here(work: Iterable[Work], settings: ClassifySettings,
                   cache: PredictionCache | None) -> Generator[tuple[list[Prediction], bool], None, None]:
    """Classify on `settings.jobs` threads (on this one with one job), a bounded number of batches
    in flight. Yields each group of predictions with whether it is new to the cache."""
    pool = _Pool(settings)
    in_flight: deque[tuple[Future | list[Prediction], bool]] = deque()
    limit = IN_FLIGHT_PER_JOB * settings.jobs

    def submit(batch: list[Candidate]) -> Future | list[Prediction]:
        if settings.jobs == 1:
            return classify_batch(batch, settings, cache.lookup_digest if cache else None)
        return pool.submit(batch)

    def ready() -> bool:
        entry = in_flight[0][0]
        return isinstance(entry, list) or entry.done()

    def finished() -> tuple[list[Prediction], bool]:
        entry, new = in_flight.popleft()
        return (entry if isinstance(entry, list) else entry.result()), new

    try:
        for item in work:
            if isinstance(item, Batch):
                in_flight.append((submit(item.candidates), True))
                while len(in_flight) > limit:
                    yield finished()
            else:
                in_flight.append((item, False))
            while in_flight and ready():
                yield finished()
        while in_flight:
            yield finished()
    finally:
        pool.close()


def classify(candidates: Iterable[Candidate], settings: ClassifySettings) -> Iterator[list[Prediction]]:
    """Yield predictions a group at a time, roughly in scan order, storing new ones in the cache.

    Files the cache knows by their stat key come first in each group of up to 256 and never
    reach a thread or the cluster; the threads and the model are started only if something
    needs classifying. With one job, everything runs on the calling thread."""
    cache = open_cache(settings.cache_path, settings.cache_model)
    work = _work(candidates, cache, settings)
    groups = settings.cluster.classify(work, settings) if settings.cluster else _classify_here(work, settings, cache)
    try:
        for predictions, new in groups:
            if cache and new:
                try:
                    cache.store(
                        (p.file_key, p.sha256, Known(p.p_cat, p.embedding, p.source.value, p.attributes))
                        for p in predictions
                        if p.p_cat is not None and p.file_key and p.sha256 and p.source
                    )
                except sqlite3.Error:  # e.g. disk full or locked for too long: only costs the next run
                    pass
            yield predictions
    finally:
        groups.close()
        if cache:
            cache.close()
