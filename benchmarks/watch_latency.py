"""How quickly `notcat-sort --watch` sorts a file once it is complete, and what it costs while idle.

For inotify and for --polling it starts the real command on a temporary folder, waits until a
first file is sorted (model loaded), then:
  * latency: drops N files one at a time, at random moments, (written elsewhere, renamed in, so the moment of
    completion is exact) and times until each has been moved out; prints median and max, and
    how much of it is the settle time, which is deliberate waiting;
  * idle CPU: utime+stime from /proc/PID/stat of the watcher (all its threads; it starts no
    other process) over an idle stretch, as a % of one core.

    python benchmarks/watch_latency.py [--files 8] [--settle 1.0] [--idle 10]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CLI = Path(sys.executable).parent / "notcat-sort"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


def wait_gone(path: Path, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not sorted within {timeout} s")
        time.sleep(0.005)
    return time.monotonic()


def measure(mode: str, images: list[Path], settle: float, idle: float, work: Path) -> None:
    inbox, staging = work / mode / "inbox", work / mode / "staging"
    inbox.mkdir(parents=True)
    staging.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(work / mode / "cache")}
    command = [str(CLI), "--watch", str(inbox), "--move", "--settle", str(settle), "-j", "2", "--no-cache"]
    watcher = subprocess.Popen(command + (["--polling"] if mode == "polling" else []),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        shutil.copy(images[0], inbox / "warm-up.jpg")
        wait_gone(inbox / "warm-up.jpg")
        latencies = []
        for number, image in enumerate(images[1:]):
            staged = staging / f"photo-{number}.jpg"
            shutil.copy(image, staged)
            time.sleep(random.uniform(0, 1))  # drop at no fixed phase of the polling interval
            os.rename(staged, inbox / staged.name)
            completed = time.monotonic()
            latencies.append(wait_gone(inbox / staged.name) - completed)
        time.sleep(1.0)  # let the last batch's report writes and events die down
        before = cpu_seconds(watcher.pid)
        time.sleep(idle)
        busy = (cpu_seconds(watcher.pid) - before) / idle * 100
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=60)
    median = statistics.median(latencies)
    print(f"{mode:8} latency over {len(latencies)} files: median {median:.2f} s, max {max(latencies):.2f} s; "
          f"settle {settle:.2f} s is {settle / median:.0%} of the median, the rest is detection + sorting "
          f"({median - settle:.2f} s)")
    print(f"{mode:8} idle CPU over {idle:.0f} s: watcher {busy:.2f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    images = sorted((SHARED / "datasets" / "catnotcat" / "cat").glob("*.jpg"))[: args.files + 1]
    if len(images) < args.files + 1:
        sys.exit(f"needs {args.files + 1} images in {SHARED}/datasets/catnotcat/cat")
    with tempfile.TemporaryDirectory(prefix="notcat-watch-bench-") as work:
        for mode in ("inotify", "polling"):
            measure(mode, images, args.settle, args.idle, Path(work))


if __name__ == "__main__":
    main()
