"""`notcat-sort serve` on loopback: /api/classify at 1 and 8 clients, and the review of a library.

It starts the installed `notcat-sort serve --port 0` as a subprocess, sends photos from
`../shared/datasets/catnotcat` as raw request bodies over keep-alive connections (one per client
thread), and prints for each concurrency: requests/s, p50 and p95 latency, and the mean number of
images per model call (the server batches what is queued). The baseline, measured in the same
run, is the same decode and model called in process, one image at a time, with no HTTP: the
ratio says what serving costs or gains.

Then the review of a 30,000-photo library (`--library N`; a `--move` run's report over hard links to
`--distinct` photos of the pool, as tests/serve_support.large_library makes it): the server's
start-up (reading the report), the time to the first page (the page, its script and the first
page of the list: what the browser needs before it draws), against fetching the whole list as
the page did before it was paged; the latency of a page of 200 (p50 / p95) at random places in a
view, and of a new filter over the whole library, against the same calls in process; the
latency of a thumbnail drawn (its photo's first request) and of one read back from the disk
cache, against drawing it in process; and with headless chromium (selenium), from navigating to
the review to the first screen's thumbnails drawn.

    python benchmarks/serve.py [--requests 200] [--clients 1 8] [-j N] [--library 30000] [--skip-classify]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLI = Path(sys.executable).parent / "notcat-sort"


def photos(count: int) -> list[bytes]:
    pool = SHARED / "datasets" / "catnotcat"
    files = sorted((pool / "cat").iterdir())[: count // 2] + sorted((pool / "not-cat").iterdir())[: count - count // 2]
    return [path.read_bytes() for path in files]


def start(jobs: int | None, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, int, str]:
    """The server, its host and port, and its token."""
    command = [str(CLI), "serve", "--port", "0", *options] + (["-j", str(jobs)] if jobs else [])
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert server.stdout is not None
    found = re.match(r"http://([\d.]+):(\d+)/\?token=(\S+)", server.stdout.readline())
    if not found:
        server.kill()
        raise SystemExit("notcat-sort serve did not print its address")
    host, port, token = found.group(1), int(found.group(2)), found.group(3)
    for _ in range(600):
        try:
            health(host, port)
            return server, host, port, token
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("notcat-sort serve did not answer")


def health(host: str, port: int) -> dict:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/api/health")
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def client(host: str, port: int, bodies: list[bytes], count: int, start_at: int, latencies: list[float]) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=120)
    for number in range(count):
        body = bodies[(start_at + number) % len(bodies)]
        began = time.perf_counter()
        connection.request("POST", "/api/classify", body=body, headers={"content-type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - began)
        if response.status != 200:
            raise RuntimeError(f"/api/classify answered {response.status}")
    connection.close()


def measure(host: str, port: int, bodies: list[bytes], clients: int, requests: int) -> dict[str, float]:
    client(host, port, bodies, min(8, requests), 0, [])  # warm-up: first calls, connection set-up
    before = health(host, port)
    latencies: list[float] = []
    per_client = max(1, requests // clients)
    threads = [threading.Thread(target=client, args=(host, port, bodies, per_client, i * per_client, latencies))
               for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    after = health(host, port)
    latencies.sort()
    calls = after["model_calls"] - before["model_calls"]
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": latencies[max(0, round(0.95 * len(latencies)) - 1)] * 1000,
        "batch": (after["images_classified"] - before["images_classified"]) / max(1, calls),
    }


def in_process_rate(bodies: list[bytes], requests: int) -> float:
    """The same decode and model, in this process, one image per call, no HTTP."""
    from notcat_sort.decode import decode
    from notcat_sort.model import Classifier, default_model_path, load_card

    card = load_card(default_model_path())
    model = Classifier(card)
    model.p_cat(decode(bodies[0], card.input_size)[None])
    began = time.perf_counter()
    for number in range(requests):
        model.p_cat(decode(bodies[number % len(bodies)], card.input_size)[None])
    return requests / (time.perf_counter() - began)


class Client:
    """Keep-alive GETs with the token, each timed."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=120)
        self.token = token

    def get(self, path: str, query: dict | None = None) -> tuple[float, bytes]:
        return _get(self.connection, f"{path}?{urlencode({**(query or {}), 'token': self.token}, doseq=True)}")


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    """(seconds, body) of one GET."""
    began = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {body[:200]!r}")
    return time.perf_counter() - began, body


def _spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (f"p50 {1000 * statistics.median(ordered):7.1f} ms   "
            f"p95 {1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)]:7.1f} ms")


def review_library(photos: int, distinct: int, samples: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from serve_support import large_library

    from notcat_sort.serve.corrections import CorrectionsFolder
    from notcat_sort.serve.listing import Listing
    from notcat_sort.serve.review import Review
    from notcat_sort.serve.thumbnails import Thumbnails

    with tempfile.TemporaryDirectory(prefix="notcat-serve-bench-") as scratch:
        folder = Path(scratch)
        _, report = large_library(SHARED, folder, photos, distinct)
        env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "XDG_DATA_HOME": str(folder / "data")}
        began = time.perf_counter()
        server, host, port, token = start(None, "--report", str(report), env=env)
        started = time.perf_counter() - began
        try:
            client = Client(host, port, token)
            get = client.get
            # warm-up: the page's files, one list call
            for path in ("/review", "/static/review.js", "/static/review.css", "/static/style.css", "/api/review"):
                get(path)
            first_page = []
            for _ in range(samples // 10):
                seconds = sum(get(path)[0] for path in ("/review", "/static/review.js", "/static/review.css", "/static/style.css"))
                first_page.append(seconds + get("/api/review", {"limit": 200})[0])
            whole = []
            for _ in range(3):
                seconds, body = get("/api/review", {"limit": 500})
                view, total = json.loads(body)["view"], json.loads(body)["total"]
                seconds += sum(get("/api/review", {"view": view, "offset": offset, "limit": 500})[0]
                               for offset in range(500, total, 500))
                whole.append(seconds)
            rng = random.Random(0)
            pages = [get("/api/review", {"view": view, "offset": rng.randrange(0, total - 200), "limit": 200})[0]
                     for _ in range(samples)]
            filters: list[dict[str, object]] = [{"label": "cat"}, {"label": ["unsure", "not-cat"]}, {"p_cat_min": 0.2, "p_cat_max": 0.8},
                       {"folder": "2017/0"}, {"order": "path"}, {"run_label": "unsure", "order": "p_cat"}]
            filtered = [get("/api/review", filters[number % len(filters)] | {"limit": 200})[0]
                        for number in range(samples // 4)]
            by_photo: dict[int, dict] = {}  # one entry per distinct photo (its hard links share a stat key)
            for entry in json.loads(get("/api/review", {"order": "path", "limit": 500})[1])["entries"]:
                by_photo.setdefault(os.stat(entry["path"]).st_ino, entry)
            distinct_entries = list(by_photo.values())
            cold = [get(f"/api/review/{entry['id']}/thumbnail")[0] for entry in distinct_entries]
            warm = [get(f"/api/review/{rng.choice(distinct_entries)['id']}/thumbnail")[0] for _ in range(samples)]
            client.connection.close()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        # the same in process, no HTTP
        review = Review(report, CorrectionsFolder(folder / "fixes"))
        listing = Listing(review)
        in_view = listing.view({})
        process_pages = []
        for _ in range(samples):
            began = time.perf_counter()
            json.dumps([entry.as_json() for entry in listing.page(in_view, rng.randrange(0, total - 200), 200)])
            process_pages.append(time.perf_counter() - began)
        process_filters = []
        for number in range(samples // 4):
            query = {key: [str(item) for item in (value if isinstance(value, list) else [value])]
                     for key, value in filters[number % len(filters)].items()}
            began = time.perf_counter()
            listing.view(query)
            process_filters.append(time.perf_counter() - began)
        drawer = Thumbnails(None)
        draws = []
        for entry in distinct_entries:
            began = time.perf_counter()
            drawer.get(Path(entry["path"]))
            draws.append(time.perf_counter() - began)
        print(f"\nreview of a library of {total:,} photos (hard links to {len(by_photo)} distinct photos of the pool)")
        print(f"  server start-up, reading the report:   {started:6.2f} s")
        print(f"  first page (page, script, styles, 200 photos): {_spread(first_page)}   "
              f"whole list at once (as before): {1000 * statistics.median(whole):7.1f} ms "
              f"({statistics.median(whole) / statistics.median(first_page):.0f}x the first page)")
        print(f"  a page of 200 in a view:             {_spread(pages)}   in process {_spread(process_pages)}")
        print(f"  a new filter or order (whole list):  {_spread(filtered)}   in process {_spread(process_filters)}")
        print(f"  a thumbnail, drawn:                  {_spread(cold)}   in process {_spread(draws)}")
        print(f"  a thumbnail, from the disk cache:    {_spread(warm)}   "
              f"({statistics.median(cold) / statistics.median(warm):.0f}x faster than drawn)")
        browser_first_screen(report, env)


def browser_first_screen(report: Path, env: dict[str, str]) -> None:
    """Headless chromium: from navigating to the review to the first screen's thumbnails drawn (cold, then warm)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        print("  (no selenium: the browser's time to the first screen is not measured)")
        return
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        print("  (no /usr/bin/chromium and chromedriver: the browser's time to the first screen is not measured)")
        return
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        for cache in ("cold", "warm"):
            server, host, port, token = start(None, "--report", str(report), env=env)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                began = time.perf_counter()
                driver.get(f"http://{host}:{port}/review?token={token}")
                WebDriverWait(driver, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "body[data-ready]"))
                ready = time.perf_counter() - began
                WebDriverWait(driver, 120).until(lambda d: d.execute_script(
                    "const images = [...document.querySelectorAll('#grid img')];"
                    "return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0)"))
                drawn = time.perf_counter() - began
                cards = len(driver.find_elements(By.CSS_SELECTOR, "[data-entry]"))
            finally:
                driver.quit()
                server.send_signal(signal.SIGINT)
                server.wait(timeout=30)
            print(f"  headless chromium, thumbnails {cache}: grid drawn {ready:5.2f} s, first screen's thumbnails "
                  f"{drawn:5.2f} s, {cards} cards in the page (target: within 15 s, at most 1,000 cards)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--photos", type=int, default=64, help="distinct photos sent in turn")
    parser.add_argument("-j", "--jobs", type=int, help="the server's model threads (default: its own, all cores)")
    parser.add_argument("--library", type=int, default=30_000, help="photos in the reviewed library (0: skip)")
    parser.add_argument("--distinct", type=int, default=200, help="distinct photos the library links to")
    parser.add_argument("--samples", type=int, default=200, help="requests per latency measured")
    parser.add_argument("--skip-classify", action="store_true", help="only the review of a library")
    options = parser.parse_args()
    if not (SHARED / "datasets" / "catnotcat").is_dir():
        raise SystemExit(f"{SHARED}/datasets/catnotcat is needed")
    if options.skip_classify:
        review_library(options.library, options.distinct, options.samples)
        return
    bodies = photos(options.photos)
    size = sum(map(len, bodies)) / len(bodies) / 1024
    baseline = in_process_rate(bodies, max(50, options.requests // 2))
    print(f"{len(bodies)} photos, {size:.0f} KB on average; in process, no HTTP, one at a time: {baseline:.1f} images/s")
    server, host, port, _ = start(options.jobs)
    try:
        for clients in options.clients:
            result = measure(host, port, bodies, clients, options.requests)
            print(f"{clients:2d} client{'s' if clients > 1 else ' '}: {result['rps']:6.1f} requests/s "
                  f"({result['rps'] / baseline:.2f}x in process)   p50 {result['p50']:6.1f} ms   "
                  f"p95 {result['p95']:6.1f} ms   {result['batch']:.1f} images per model call")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    if options.library:
        review_library(options.library, options.distinct, options.samples)


if __name__ == "__main__":
    main()
