"""What going through a Dask cluster costs: the local thread pipeline against `--cluster local:2`.

    python benchmarks/cluster.py [--quick] [--files N] [--repeats N] [--copy] [--send-bytes]

Both run the installed `notcat-sort` as a subprocess over the same 1 MP JPEGs (the corpus of
benchmarks/throughput.py, in tmp/benchmarks), with --no-cache, report only (or `--copy --out`),
interleaved `--repeats` times; medians are printed, and the overhead is the median of the
repeats' ratios, since within a repeat the runs are seconds apart. On this 2-core machine a LocalCluster of two
one-thread workers cannot add cores, so its images/s against the threads' is the overhead of the
cluster path itself: a scheduler, pickling batches and predictions, and processes instead of
threads (target: under 15% at 1 MP).

The rate is the one each run prints in its summary, which counts from the moment the cluster is
up (starting a LocalCluster is a fixed cost, printed apart, as is each run's wall time). The CPU
of the coordinator (the `notcat-sort` process itself, with the in-process scheduler of a
LocalCluster) and of the workers is read from /proc when the run logs that the cluster is up and
again at its summary, so it is the steady-state cost per image, without start-up.

From those per-image costs, a paper estimate of where the coordinator becomes the bottleneck:
each worker core classifies 1000 / worker_ms images/s, and the coordinator, whose per-file work
(cache look-ups, deciding, planning, journalling, acting, reporting, unpickling results) runs
mostly on one thread, keeps up with at most 1000 / coordinator_ms images/s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CLI, descendants, photo_corpus  # the same corpus as the throughput benchmark

TARGET_OVERHEAD = 0.15  # at most this much fewer images/s through a local:2 cluster on 2 cores
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SUMMARY = re.compile(r"^(\d+) files? in ([\d.]+) s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Run:
    files: int
    wall: float  # start to exit
    sorting: float  # as the run's summary says: from the cluster being up to the last file
    coordinator_cpu: float  # seconds, while sorting (the CLI process; with local:N its scheduler too)
    worker_cpu: float  # seconds, while sorting, all the CLI's child processes

    @property
    def rate(self) -> float:
        return self.files / self.sorting

    def per_image_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.files


def run(arguments: list[str], files: int, cache_home: Path) -> Run:
    """One `notcat-sort` run; its CPU read when it starts sorting and when it prints its summary."""
    started = time.perf_counter()
    process = subprocess.Popen([str(CLI), *arguments], env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    marks: list[tuple[float, float]] = []  # (coordinator, workers) CPU seconds
    sorting, lines = None, []

    def mark() -> None:
        marks.append((_cpu_seconds(process.pid), sum(map(_cpu_seconds, descendants(process.pid)))))

    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if line.startswith("cluster ") and "threads" in line and not marks:
            mark()
        elif summary := SUMMARY.match(line):
            sorting = float(summary.group(2))
            if not marks:  # a local run: its threads live in the process, it has no start line
                marks.append((0.0, 0.0))
            mark()
    process.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0 or sorting is None or len(marks) != 2:
        sys.exit(f"notcat-sort {' '.join(arguments)} failed ({process.returncode}):\n{''.join(lines)[-3000:]}")
    (coordinator0, workers0), (coordinator1, workers1) = marks
    return Run(files, wall, sorting, coordinator1 - coordinator0, workers1 - workers0)


def median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda item: item.rate)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 160 files, one repeat")
    parser.add_argument("--files", type=int, default=600, help="1 MP JPEGs to sort")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median printed)")
    parser.add_argument("--workers", type=int, default=2, help="--cluster local:N")
    parser.add_argument("--copy", action="store_true", help="--copy --out instead of report only")
    parser.add_argument("--send-bytes", action="store_true", help="--cluster-send-bytes")
    args = parser.parse_args()
    if args.quick:
        args.files, args.repeats = min(args.files, 160), 1
    if not CLI.exists():
        sys.exit(f"notcat-sort is not installed beside {sys.executable}")
    print("building/reusing the corpus in tmp/benchmarks ...", flush=True)
    corpus = photo_corpus("web-1mp", (1200, 900), 48, args.files)
    files = sorted(corpus.glob("*.jpg"))[: args.files]
    cores = len(os.sched_getaffinity(0))
    cluster = ["--cluster", f"local:{args.workers}", *(["--cluster-send-bytes"] if args.send_bytes else [])]
    print(f"{len(files)} JPEGs 1200x900, {cores} cores, {'--copy --out' if args.copy else 'report only'}, "
          f"--no-cache; local: -j {cores}; cluster: {' '.join(cluster)}; median of {args.repeats}")

    local_runs: list[Run] = []
    cluster_runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="notcat-cluster-bench-") as temporary:
        work = Path(temporary)
        view = work / "photos"  # exactly these files, as hard links
        view.mkdir()
        for path in files:
            os.link(path, view / path.name)
        for repeat in range(args.repeats):
            for runs, extra in ((local_runs, ["-j", str(cores)]), (cluster_runs, cluster)):
                out = work / "sorted"
                shutil.rmtree(out, ignore_errors=True)
                action = ["--copy", "--out", str(out)] if args.copy else []
                runs.append(run([str(view), "--no-cache", *action, *extra, "--report", str(work / "r.csv")],
                                len(files), work / "cache"))
                print(f"  run {repeat + 1}: {'cluster' if runs is cluster_runs else 'local  '} "
                      f"{runs[-1].rate:6.1f} images/s", flush=True)

    local, remote = median(local_runs), median(cluster_runs)
    # Within a repeat the two runs are seconds apart; across repeats this VM's speed drifts a lot.
    overhead = statistics.median(1 - there.rate / here.rate for here, there in zip(local_runs, cluster_runs, strict=True))
    print(f"\n  {'local threads':24s} {local.rate:7.1f} images/s   ({local.sorting:.1f} s sorting, "
          f"{local.wall:.1f} s wall; {local.per_image_ms(local.coordinator_cpu):.1f} CPU ms/image, whole run)")
    print(f"  {'--cluster local:' + str(args.workers):24s} {remote.rate:7.1f} images/s   ({remote.sorting:.1f} s sorting, "
          f"{remote.wall:.1f} s wall: {remote.wall - remote.sorting:.1f} s starting and stopping the cluster)")
    print(f"  overhead of the cluster    {100 * overhead:5.1f} %   target < {100 * TARGET_OVERHEAD:.0f} %: "
          f"{'PASS' if overhead < TARGET_OVERHEAD else 'FAIL'}   (median of the repeats': "
          + ", ".join(f"{100 * (1 - there.rate / here.rate):.0f}%" for here, there in zip(local_runs, cluster_runs, strict=True)) + ")")

    coordinator_ms = remote.per_image_ms(remote.coordinator_cpu)
    worker_ms = remote.per_image_ms(remote.worker_cpu)
    print(f"\n  per image, while sorting:  coordinator {coordinator_ms:.2f} CPU ms (with the scheduler), "
          f"workers {worker_ms:.2f} CPU ms (read, hash, decode, infer)")
    coordinator_max = 1000 / coordinator_ms
    per_core = 1000 / worker_ms
    print("\npaper estimate (one coordinator core; workers' cores at this machine's speed):")
    print(f"  the coordinator keeps up with at most {coordinator_max:.0f} images/s; "
          f"each worker core gives {per_core:.0f} images/s,")
    print(f"  so the coordinator is the bottleneck beyond about {worker_ms / coordinator_ms:.0f} worker cores.")
    for worker_cores in (2, 8, 32, 128):
        rate = min(worker_cores * per_core, coordinator_max)
        print(f"    {worker_cores:4d} worker cores: {rate:7.0f} images/s"
              f"{'  (coordinator-bound)' if worker_cores * per_core > coordinator_max else ''}")
    print("  Beyond that: a faster coordinator core, bigger --batch-size (fewer tasks), or one run per"
          "\n  top-level folder, each its own coordinator, on the same cluster. Moves across filesystems"
          "\n  and copies are also bound by the coordinator's disk and network, which this does not measure.")


if __name__ == "__main__":
    main()
