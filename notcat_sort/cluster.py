"""Classification on a Dask cluster, through joblib's Dask backend, for libraries too big for one machine.

Only the classify stage moves: each batch (read, hash, decode, infer) runs on a worker, and its
predictions come back here, where scan, cache, decide, plan, journal, act and report run as in
a local run. A worker reads the files by path (shared storage mounted at the same path) or, with
`send_bytes`, gets each file's bytes from here; it never changes a file.

The model's bytes are scattered to every worker once (joblib's `scatter`), and each worker
process keeps one onnxruntime session, shared by its task threads, each call with one intra-op
thread, as the local threads share theirs: a worker runs as many batches at once as it has
threads, which Dask sets to its cores. Batches go out a few to a Dask task (each task costs
this machine's CPU), in windows of a few tasks per worker thread
(`Parallel(pre_dispatch="all", return_as="generator_unordered")`), two windows at most in
flight, alternating between two joblib backends on one Client, so the cluster never waits for
the slowest task of a window while memory here stays bounded however many files there are.

Faults: Dask re-runs the task of a worker that dies on another worker, and a task's result
arrives here once, so it is acted on once. A cluster that goes away (or a batch that keeps
killing workers) raises `ClusterError` between batches: the run stops as on Ctrl-C, with every
file acted on so far in the report and the rest untouched, and a rerun completes it.

joblib and dask.distributed come from the optional `cluster` extra and are imported only here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import threading
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from notcat_sort import __version__
from notcat_sort.cache import FileKey
from notcat_sort.classify import (
    IN_FLIGHT_PER_JOB,
    Batch,
    ClassifySettings,
    Prediction,
    Work,
    classify_batch,
    default_jobs,
    read_problem,
)
from notcat_sort.scan import Candidate

EXTRA_HINT = "pip install 'notcat-sort[cluster]'"
CONNECT_TIMEOUT = 30.0  # seconds to reach the scheduler and to see a first worker
# With --cluster-send-bytes a window is closed early once it holds this many bytes of files.
SEND_BYTES_WINDOW = 256 * 1024 * 1024
_WINDOWS = 2  # windows in flight: one finishing while the next runs
# Batches of files by path per Dask task: a task costs this machine about 15 CPU ms (joblib,
# the Client and, for local:N, the scheduler), 1 ms per photo in batches of 16 on 2 cores.
_TASK_BATCHES = 4
_WATCH_SECONDS = 0.5  # how often a running classify looks whether its Client has given up on the scheduler
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+:\d+$")
_LOCAL = re.compile(r"^local:(\d+)$")
# What the scheduler, nannies and workers of a `local:N` cluster run with (a remote cluster's are
# its own). Dask's default MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap threshold, so
# every decoded photo's pixels come from fresh pages (460 page faults, 1.5-1.8 CPU ms per 1 MP
# photo, 9% of a worker's time). The sampling profiler and the system monitor feed a dashboard
# that local:N has not, and the event loops' 20 ms tick only times them: with the memory monitor
# at 1 s instead of 0.1 s, an idle local:2 costs 18 CPU ms per second instead of 98, which on a
# small machine come straight out of the workers' share.
_LOCAL_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


class MissingExtra(ImportError):
    """joblib or dask.distributed is not installed."""


class ClusterError(RuntimeError):
    """The cluster cannot be used; or, raised between batches, it went away or could not run a
    batch, and the run stops there as on Ctrl-C."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where to classify: an existing scheduler (`tcp://HOST:PORT`) or `local:N` worker processes
    started here; and whether the files' bytes are sent to the workers."""

    address: str | None
    local_workers: int = 0
    send_bytes: bool = False

    @classmethod
    def parse(cls, text: str, send_bytes: bool = False) -> ClusterSpec:
        """Raises ValueError with what was expected."""
        if _ADDRESS.match(text):
            return cls(text, send_bytes=send_bytes)
        local = _LOCAL.match(text)
        if local and int(local.group(1)) >= 1:
            return cls(None, int(local.group(1)), send_bytes)
        raise ValueError(f"expected tcp://HOST:PORT (a Dask scheduler) or local:N (N >= 1 worker processes here), "
                         f"not {text!r}")

    @property
    def name(self) -> str:
        return self.address or f"local:{self.local_workers}"


def require_extra() -> None:
    """Raise MissingExtra, naming the extra, when joblib or dask.distributed cannot be imported."""
    try:
        import distributed  # noqa: F401
        import joblib  # noqa: F401
    except ImportError as error:
        raise MissingExtra(f"--cluster needs the cluster extra ({error.name or error} is missing): "
                           f"{EXTRA_HINT}") from error


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start local worker processes with SIGINT ignored (they inherit it): Ctrl-C at a terminal
    signals the whole process group, and must stop this run as usual, not kill its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_version() -> str:
    return __version__


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # joblib ran the batch here: the cluster had a single thread
        return "this machine"


@dataclass(frozen=True, eq=False)
class _Model:
    """The model file's bytes, as scattered to the workers: Dask names scattered data by a hash of
    it, and hashing 4 MB cost this machine 0.1 CPU s per window; the sha256 is known already."""

    data: bytes
    sha256: str

    def __dask_tokenize__(self) -> str:
        return self.sha256


def _classify_on_worker(task: int, batches: list[list[Candidate]], payloads: list[list[bytes]] | None,
                        settings: ClassifySettings, model: _Model) -> tuple[int, str, list[Prediction]]:
    """One task's batches, on a worker, one model call each as on the local threads: the task's
    number, the worker's address and the predictions, in order."""
    sent: list[list[bytes] | None] = list(payloads) if payloads is not None else [None] * len(batches)
    return task, _worker_name(), [prediction for candidates, files in zip(batches, sent, strict=True)
                                  for prediction in classify_batch(candidates, settings, None, files, model.data)]


def _as_seen_here(prediction: Prediction, key: FileKey | None, worker: str) -> Prediction:
    """A worker's prediction with this machine's stat key; a file the worker could not read but
    this machine can is said to be the worker's problem, with what to do about it."""
    prediction = replace(prediction, file_key=key)
    if prediction.error and prediction.sha256 is None and os.path.exists(prediction.candidate.path):
        return replace(prediction, error=f"worker {worker} cannot read it ({prediction.error}): mount the "
                                         "storage at the same path there, or use --cluster-send-bytes")
    return prediction


@dataclass
class _Task:
    """What one Dask task classifies: a few batches (one with the files' bytes)."""

    batches: list[list[Candidate]]
    keys: list[FileKey | None]  # of its files in order, as this machine saw them (the cache's stat keys)
    payloads: list[list[bytes]] | None = None
    joins: bool = True  # whether it may take more batches: not a run's last (see Batch.last)

    @property
    def size(self) -> int:
        return sum(len(payload) for batch in self.payloads or () for payload in batch)

    def takes(self, other: _Task, most: int) -> bool:
        """Whether `other`'s batch joins this task: files by path only (a task with the files'
        bytes is big enough), not a run's last batches (each its own task, so that every worker
        thread has one), and at most `most` files."""
        return (self.joins and other.joins and self.payloads is None and other.payloads is None
                and len(self.keys) + len(other.keys) <= most)

    def extend(self, other: _Task) -> None:
        self.batches.extend(other.batches)
        self.keys.extend(other.keys)


def _read(batch: Batch) -> tuple[_Task, list[Prediction]]:
    """For send_bytes: the batch's files read here (with their stat keys), and those that could not be."""
    candidates, payloads, failed = [], [], []
    keys: list[FileKey | None] = []
    for candidate in batch.candidates:
        try:
            with open(candidate.path, "rb") as handle:
                key = FileKey.of(os.fstat(handle.fileno()))
                payload = handle.read()
        except OSError as error:
            failed.append(Prediction(candidate, error=read_problem(error)))
            continue
        candidates.append(candidate)
        keys.append(key)
        payloads.append(payload)
    return _Task([candidates] if candidates else [], keys, [payloads]), failed


@dataclass(eq=False)
class Cluster:
    """A Client on a Dask cluster, open for the life of a run (a `with` block); `classify` is the
    classify stage's way to run batches there."""

    spec: ClusterSpec
    threads: int = 0  # worker threads when connected
    workers: int = 0
    workers_used: set[str] = field(default_factory=set)
    _client: Any = None
    _local: Any = None
    _windows: list[Any] = field(default_factory=list)
    _model: _Model | None = None

    def __enter__(self) -> Cluster:
        require_extra()
        import dask
        from distributed import Client, LocalCluster

        # Our log says what matters. Stopping part-way (Ctrl-C, a lost cluster) abandons futures whose
        # callbacks on the Client's event loop then log tracebacks through tornado and asyncio.
        logging.getLogger("distributed").setLevel(logging.ERROR)
        for noisy in ("tornado.application", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        try:
            if self.spec.address is None:
                per_worker = max(1, default_jobs() // self.spec.local_workers)
                with _workers_ignore_ctrl_c(), dask.config.set(_LOCAL_CONFIG):
                    self._local = LocalCluster(n_workers=self.spec.local_workers, threads_per_worker=per_worker,
                                               processes=True, dashboard_address=None, silence_logs=logging.ERROR)
                self._client = Client(self._local, set_as_default=False)
            else:
                self._client = Client(self.spec.address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            self._client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            versions = self._client.run(_worker_version)
        except (OSError, TimeoutError) as error:
            self.__exit__(None, None, None)
            raise ClusterError(f"cannot use the cluster at {self.spec.name}: {error}") from error
        except Exception as error:  # e.g. a worker without notcat-sort cannot unpickle the probe
            self.__exit__(None, None, None)
            raise ClusterError(f"the workers of {self.spec.name} cannot run notcat-sort ({error!r}): "
                              f"install it there with {EXTRA_HINT}") from error
        others = {worker: version for worker, version in versions.items() if version != __version__}
        if others:
            self.__exit__(None, None, None)
            raise ClusterError(f"workers run another notcat-sort than {__version__}: {others}")
        nthreads = self._client.nthreads()
        self.workers, self.threads = len(nthreads), sum(nthreads.values())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close_windows()
        for part in (self._client, self._local):  # the Client first: it releases the scattered model
            if part is not None:
                try:
                    part.close(timeout=5)
                except Exception:  # noqa: BLE001 - a cluster that is gone cannot be closed any further
                    pass
        self._client = self._local = None

    def describe(self) -> str:
        reading = ("the files' bytes are sent from here" if self.spec.send_bytes
                   else "workers read the files by path (shared storage)")
        alone = "; with one worker thread, joblib classifies on this machine" if self.threads == 1 else ""
        return f"cluster {self.spec.name}: {self.workers} workers, {self.threads} threads; {reading}{alone}"

    def summary(self) -> str:
        used = len(self.workers_used)
        return f"cluster {self.spec.name}: {used} {'worker' if used == 1 else 'workers'} took part"

    def _free_windows(self, settings: ClassifySettings) -> deque[Any]:
        """The joblib Parallel of each window, made with the first call for a model: each has its
        own Dask backend on the one Client (a backend runs one call at a time), and the model's
        bytes are scattered to every worker, once (the same bytes scatter to the same key)."""
        from joblib import Parallel, parallel_config

        if self._model is None or self._model.sha256 != settings.card.sha256:
            self._close_windows()
            model = settings.card.path.read_bytes()
            if hashlib.sha256(model).hexdigest() != settings.card.sha256:
                raise ClusterError(f"{settings.card.path} changed since it was loaded: not sending it to the workers")
            self._model = _Model(model, settings.card.sha256)
            for _ in range(_WINDOWS):
                with parallel_config(backend="dask", client=self._client, scatter=[self._model]):
                    parallel = Parallel(n_jobs=-1, return_as="generator_unordered", pre_dispatch="all", batch_size=1)
                parallel.__enter__()
                self._windows.append(parallel)
        return deque(self._windows)

    def _close_windows(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib warns of aborted calls; the run says why it stopped
            for parallel in self._windows:
                parallel.__exit__(None, None, None)
        self._windows.clear()
        self._model = None

    @contextmanager
    def _stop_when_client_closes(self) -> Iterator[None]:
        """While in the block, a Client that closes (Dask gives up reconnecting to a lost scheduler after
        its timeout) aborts the windows' joblib calls: joblib's Dask backend would otherwise wait forever
        for the futures of a closed Client. An aborted call stops short of its tasks (see `classify`)."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(_WATCH_SECONDS):
                if str(self._client.status) in ("closing", "closed", "failed"):
                    for parallel in self._windows:
                        parallel._aborting = True  # what joblib's own abort sets: its retrieval loop then stops
                    return

        watcher = threading.Thread(target=watch, name="cluster-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()

    def _lost(self, error: BaseException) -> ClusterError:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return ClusterError(f"cluster {self.spec.name} failed ({reason})")

    def classify(self, work: Iterable[Work], settings: ClassifySettings) -> Generator[tuple[list[Prediction], bool], None, None]:
        """The classify stage's batches, run on the cluster: each group of predictions with whether
        it is new to the cache. Known predictions pass straight through."""
        import asyncio  # here, not at the top: the CLI imports this module on every run, cluster or not

        from joblib import delayed

        remote = replace(settings, cluster=None, cache_path=None)  # what a worker needs, and can unpickle
        free = self._free_windows(settings)
        running: deque[tuple[Any, Generator[tuple[int, str, list[Prediction]], None, None], list[_Task]]] = deque()
        per_window = max(1, IN_FLIGHT_PER_JOB * self.threads // _WINDOWS)
        window: list[_Task] = []

        def send() -> Iterator[tuple[list[Prediction], bool]]:
            """Send the window out, on a free backend: if none is, first finish the oldest window out."""
            if not free:
                yield from finish()
            parallel, tasks = free.popleft(), list(window)
            calls = (delayed(_classify_on_worker)(number, task.batches, task.payloads, remote, self._model)
                     for number, task in enumerate(tasks))
            try:
                running.append((parallel, parallel(calls), tasks))
            except (Exception, asyncio.CancelledError) as error:  # whatever the cluster raised, stop cleanly
                raise self._lost(error) from error
            window.clear()

        def finish() -> Iterator[tuple[list[Prediction], bool]]:
            parallel, results, tasks = running[0]
            returned = 0
            while True:
                try:
                    number, worker, predictions = next(results)
                except StopIteration:
                    break
                except (Exception, asyncio.CancelledError) as error:  # as in send()
                    raise self._lost(error) from error
                returned += 1
                self.workers_used.add(worker)
                keys = tasks[number].keys
                yield [_as_seen_here(prediction, key, worker) for prediction, key in zip(predictions, keys, strict=True)], True
            if returned < len(tasks):  # the call was aborted: the Client closed
                raise self._lost(ConnectionError(f"the client closed with {len(tasks) - returned} tasks still out"))
            running.popleft()
            free.append(parallel)

        try:
            with self._stop_when_client_closes():
                for item in work:
                    if not isinstance(item, Batch):
                        yield item, False
                        continue
                    if self.spec.send_bytes:
                        task, failed = _read(item)
                        if failed:
                            yield failed, False
                    else:
                        task = _Task([item.candidates], list(item.keys), joins=not item.last)
                    if not task.keys:
                        continue
                    if window and window[-1].takes(task, _TASK_BATCHES * settings.batch_size):
                        window[-1].extend(task)
                        continue
                    if len(window) >= per_window:  # full: the batch in hand starts the next window
                        yield from send()
                    window.append(task)
                    if sum(task.size for task in window) >= SEND_BYTES_WINDOW:
                        yield from send()
                if window:
                    yield from send()
                while running:
                    yield from finish()
        finally:
            if running:  # stopped early: drop what is still out, so the next call starts clean
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _, results, _ in running:
                        results.close()
