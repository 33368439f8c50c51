"""Throughput and latency of `notcat-sort serve`'s /api/classify on loopback, at 1 and 8 clients.

It starts the installed `notcat-sort serve --port 0` as a subprocess, sends photos from
`../shared/datasets/catnotcat` as raw request bodies over keep-alive connections (one per client
thread), and prints for each concurrency: requests/s, p50 and p95 latency, and the mean number of
images per model call (the server batches what is queued). The baseline, measured in the same
run, is the same decode and model called in process, one image at a time, with no HTTP: the
ratio says what serving costs or gains.

    python benchmarks/serve.py [--requests 200] [--clients 1 8] [-j N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CLI = Path(sys.executable).parent / "notcat-sort"


def photos(count: int) -> list[bytes]:
    pool = SHARED / "datasets" / "catnotcat"
    files = sorted((pool / "cat").iterdir())[: count // 2] + sorted((pool / "not-cat").iterdir())[: count - count // 2]
    return [path.read_bytes() for path in files]


def start(jobs: int | None) -> tuple[subprocess.Popen[str], str, int]:
    command = [str(CLI), "serve", "--port", "0"] + (["-j", str(jobs)] if jobs else [])
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    found = re.match(r"http://([\d.]+):(\d+)/", server.stdout.readline())
    if not found:
        server.kill()
        raise SystemExit("notcat-sort serve did not print its address")
    host, port = found.group(1), int(found.group(2))
    for _ in range(600):
        try:
            health(host, port)
            return server, host, port
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--photos", type=int, default=64, help="distinct photos sent in turn")
    parser.add_argument("-j", "--jobs", type=int, help="the server's model threads (default: its own, all cores)")
    options = parser.parse_args()
    if not (SHARED / "datasets" / "catnotcat").is_dir():
        raise SystemExit(f"{SHARED}/datasets/catnotcat is needed")
    bodies = photos(options.photos)
    size = sum(map(len, bodies)) / len(bodies) / 1024
    baseline = in_process_rate(bodies, max(50, options.requests // 2))
    print(f"{len(bodies)} photos, {size:.0f} KB on average; in process, no HTTP, one at a time: {baseline:.1f} images/s")
    server, host, port = start(options.jobs)
    try:
        for clients in options.clients:
            result = measure(host, port, bodies, clients, options.requests)
            print(f"{clients:2d} client{'s' if clients > 1 else ' '}: {result['rps']:6.1f} requests/s "
                  f"({result['rps'] / baseline:.2f}x in process)   p50 {result['p50']:6.1f} ms   "
                  f"p95 {result['p95']:6.1f} ms   {result['batch']:.1f} images per model call")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
