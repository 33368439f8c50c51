"""What the serve tests share: a small photo library, a real `notcat-sort` run over it, and a real
`notcat-sort serve` subprocess on a loopback port."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CLI = Path(sys.executable).parent / "notcat-sort"


def library(shared: Path, folder: Path, cats: int = 3, not_cats: int = 3) -> list[Path]:
    """Copies (writable) of the first few labelled photos of each kind, in a nested tree."""
    pool = shared / "datasets" / "catnotcat"
    chosen = sorted((pool / "cat").iterdir())[:cats] + sorted((pool / "not-cat").iterdir())[:not_cats]
    copies = []
    for number, source in enumerate(chosen):
        target = folder / f"roll{number % 2}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def run_cli(*args: object, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(CLI), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"notcat-sort {args} exited {done.returncode}:\n{done.stderr}")
    return done


def read_rows(report: Path) -> list[dict[str, str]]:
    with open(report, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: a snapshot to prove nothing changed."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str
    token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_server(*args: object, env: dict[str, str]) -> Server:
    """`notcat-sort serve --port 0 ARGS`, once it answers /api/health; its address read from stdout."""
    process = subprocess.Popen([str(CLI), "serve", "--port", "0", *map(str, args)], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.match(r"(http://\S+?)/\?token=(\S+)$", line.strip())
    if not found:
        process.kill()
        raise AssertionError(f"serve printed {line!r}; stderr: {process.stderr.read() if process.stderr else ''}")
    server = Server(process, found.group(1), found.group(2))
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{server.base}/api/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError("serve did not come up")
        time.sleep(0.1)


def environment(tmp: Path) -> dict[str, str]:
    """Caches, dry-run reports and the default corrections folder in tmp."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg-cache"), "XDG_DATA_HOME": str(tmp / "xdg-data")}


def large_library(shared: Path, folder: Path, photos: int, distinct: int = 48) -> tuple[Path, Path]:
    """A library of `photos` photos as a `--move --out OUT` run leaves it: (OUT, the report).

    `distinct` photos of the pool are classified by a real dry run (`--uncertain 0.1:0.9`); the
    library's photos are hard links to them (so that tens of thousands cost no disk), one folder
    per month, each placed under OUT/<label>/ as a move would, and the report is written by the
    CLI's own report writer, a `done` move row each, with the label, p_cat and sha256 that the run
    gave the photo it links to."""
    from notcat_sort.report import ReportWriter, Row

    pool = folder / "pool"
    library(shared, pool, cats=distinct // 2, not_cats=distinct - distinct // 2)
    env = environment(folder)
    dry = run_cli(pool, "--uncertain", "0.1:0.9", "--report", "-", "-j", "1", env=env).stdout
    classified = [row for row in csv.DictReader(dry.splitlines()) if row["label"] != "error"]
    out, source = folder / "sorted", folder / "photos"
    writer = ReportWriter(folder / "library.csv")
    rows = []
    for number in range(photos):
        original = classified[number % len(classified)]
        sub = Path(f"{2015 + number // 6000}") / f"{number // 500 % 12 + 1:02d}" / f"IMG_{number:05d}.jpg"
        placed = out / original["label"] / sub
        placed.parent.mkdir(parents=True, exist_ok=True)
        os.link(original["path"], placed)
        rows.append(Row(str(source / sub), original["label"], original["p_cat"], "move", str(placed), "done", "",
                        original["sha256"], source=original["source"]))
    writer.write(rows, durable=True)
    writer.close()
    return out, folder / "library.csv"
