"""`notcat-sort serve`: the API against the real app, in process (Starlette's TestClient) and under
a real uvicorn on a loopback port, with real runs of the CLI to compare with and to review."""

from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import io
import json
import os
import socket
from pathlib import Path

import pytest
from PIL import Image
from prerequisites import need_module, need_that
from serve_support import environment, library, read_rows, run_cli, start_server, tree
from shared_data import need

need_module("starlette", "the serve extra: pip install '.[serve]'")

import warnings  # noqa: E402 - the rest needs the serve extra

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2; httpx is the client its docs still show
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from notcat_sort.decide import Label, Policy  # noqa: E402
from notcat_sort.model import card_path, default_model_path, load_card  # noqa: E402
from notcat_sort.serve.app import ServeConfig, create_app  # noqa: E402
from notcat_sort.serve.corrections import CorrectionsFolder  # noqa: E402
from notcat_sort.serve.known import KnownCatsFolder  # noqa: E402
from notcat_sort.serve.review import Review, other_label_path  # noqa: E402
from training.data import layout, load_items  # noqa: E402 - what `python -m training fit --data` reads; needs no torch

TOKEN = "test-token-0123456789"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return environment(tmp_path)


@pytest.fixture
def make_client(tmp_path: Path):
    """`make_client(report=None, max_upload=...)`: a TestClient on the real app (lifespan run)."""
    clients = []

    def make(report: Path | None = None, max_upload: int = 50 * 1024 * 1024) -> TestClient:
        card = load_card(default_model_path())
        review = Review(report, CorrectionsFolder(tmp_path / "corrections"), KnownCatsFolder(tmp_path / "known")) \
            if report else None
        config = ServeConfig(card, Policy(card.threshold), TOKEN, review, max_upload=max_upload, workers=2,
                             thumbnail_cache=tmp_path / "thumbnails.sqlite3")
        client = TestClient(create_app(config), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _moved_run(folder: Path, shared: Path):
    photos, out, report = folder / "photos", folder / "sorted", folder / "run.csv"
    library(shared, photos)
    before = tree(photos)
    run_cli(photos, "--move", "--out", out, "--report", report, "-j", "1", "--no-cache", env=environment(folder))
    return photos, out, report, before


@pytest.fixture
def moved_run(tmp_path: Path, shared: Path):
    """A real `--move --out` run over a small library; (photos, out, report, the library before the run)."""
    return _moved_run(tmp_path, shared)


@pytest.fixture(scope="module")
def untouched_run(tmp_path_factory: pytest.TempPathFactory, shared: Path):
    """The same, shared by the tests that prove a request changes nothing."""
    return _moved_run(tmp_path_factory.mktemp("untouched"), shared)


def _entry_for(client: TestClient, label: str | None = None) -> dict:
    entries = client.get("/api/review", params={"token": TOKEN}).json()["entries"]
    return next(entry for entry in entries if label is None or entry["label"] == label)


# --- classify ------------------------------------------------------------------------------------

def test_classify_gives_the_clis_label_and_probability(make_client, tmp_path, shared, env):
    photos = tmp_path / "photos"
    library(shared, photos)
    # EXIF rotation, HEIC, RAW files (from their previews; a RAF sent alone is known by its content)
    for extra in ("orientation/Landscape_6.jpg", "heic/IMG_5195.HEIC", "heic/iphone_13_pro_max.HEIC",
                  "raw/FujiFilm.raf", "raw/Panasonic.rw2"):
        (photos / Path(extra).name).write_bytes(need(shared / "samples" / extra).read_bytes())
    rows = {Path(row["path"]): row for row in
            read_rows_from(run_cli(photos, "--report", "-", "-j", "1", "--no-cache", "--full-decode", env=env).stdout)}
    client = make_client()
    for number, (path, row) in enumerate(sorted(rows.items())):
        body = path.read_bytes()
        if path.suffix == ".rw2" or (number % 2 and path.suffix != ".raf"):  # multipart (a form, curl -F): with its name
            response = client.post("/api/classify", files={"file": (path.name, body, "image/jpeg")})
        else:  # the raw body
            response = client.post("/api/classify", content=body, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["label"] == row["label"], path
        assert f"{answer['p_cat']:.4f}" == row["p_cat"], path
        assert answer["sha256"] == row["sha256"] == hashlib.sha256(body).hexdigest()
        assert answer["threshold"] == load_card(default_model_path()).threshold
        assert answer["source"] == row["source"] == ("preview" if path.suffix in (".raf", ".rw2") else "image"), path
        # A JPEG any browser shows, of what was classified, upright: as wide as tall as the model's input says.
        prefix = "data:image/jpeg;base64,"
        with Image.open(io.BytesIO(base64.b64decode(answer["thumbnail"].removeprefix(prefix)))) as thumbnail:
            assert answer["thumbnail"].startswith(prefix) and thumbnail.format == "JPEG" and max(thumbnail.size) <= 320
            if path.name == "iphone_13_pro_max.HEIC":  # stored sideways, shown portrait (irot)
                assert thumbnail.width < thumbnail.height
    assert len(rows) >= 11 and not any(row["label"] == "error" for row in rows.values())


def read_rows_from(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_health_and_the_model_card(make_client):
    client = make_client()
    health = client.get("/api/health").json()
    card = load_card(default_model_path())
    assert health["status"] == "ok" and health["model"] == f"{card.name} {card.version}" and health["review"] is False
    assert client.get("/api/model").json() == json.loads(card_path(default_model_path()).read_text())


def test_concurrent_uploads_share_model_calls(make_client, shared):
    """Requests that arrive together are classified in fewer model calls than there are images."""
    from concurrent.futures import ThreadPoolExecutor

    client = make_client()
    body = min((shared / "datasets" / "catnotcat" / "cat").iterdir()).read_bytes()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: client.post("/api/classify", content=body).json(), range(48)))
    assert len({answer["p_cat"] for answer in answers}) == 1
    health = client.get("/api/health").json()
    assert health["images_classified"] == 48 and health["model_calls"] < 48


def _jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("send, status, says", [
    (dict(content=b""), 400, "empty upload"),
    (dict(content=b"hello, this is text and no image at all"), 415, "not an image"),
    (dict(content=_jpeg()[:200]), 422, "cannot read this image"),
    (dict(files={"other": ("a.jpg", _jpeg(), "image/jpeg")}), 400, '"file" part'),
    (dict(content=b"--xyz\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=xyz"}), 400, "multipart"),
    (dict(content=_jpeg((600, 600)) * 4), 413, "limit"),
    (dict(files={"file": ("big.jpg", _jpeg((600, 600)) * 4, "image/jpeg")}), 413, "limit"),
    (dict(content=iter([_jpeg((600, 600))] * 4)), 413, "limit"),  # chunked: no Content-Length
])
def test_bad_uploads_get_a_4xx_with_a_reason(make_client, send, status, says):
    client = make_client(max_upload=20_000)
    response = client.post("/api/classify", **send)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_unknown_routes_and_methods_answer_json(make_client):
    client = make_client()
    assert client.get("/api/classify").status_code == 405
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    review = client.get("/api/review", params={"token": TOKEN})
    assert review.status_code == 404 and "--report" in review.json()["error"]


def test_pages_and_safety_headers(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/review.js").status_code == 200


def test_a_foreign_host_header_is_refused(make_client):
    """A page on another site that rebinds its name to 127.0.0.1 still sends its own Host."""
    client = make_client()
    assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400


# --- review and corrections ----------------------------------------------------------------------

def test_review_lists_the_runs_photos_with_thumbnails(make_client, moved_run):
    _, _, report, _ = moved_run
    client = make_client(report)
    listing = client.get("/api/review", params={"token": TOKEN}).json()
    rows = read_rows(report)
    assert {entry["path"] for entry in listing["entries"]} == {row["destination"] for row in rows}
    assert {(entry["label"], f"{entry['p_cat']:.4f}") for entry in listing["entries"]} == \
        {(row["label"], row["p_cat"]) for row in rows}
    thumbnail = client.get(f"/api/review/{listing['entries'][0]['id']}/thumbnail", params={"token": TOKEN})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 320


def test_a_correction_moves_the_file_journals_it_and_undo_puts_everything_back(make_client, moved_run, env, tmp_path):
    photos, out, report, before = moved_run
    client = make_client(report)
    entry = _entry_for(client)
    old = Path(entry["path"])
    new_label = "not-cat" if entry["label"] == "cat" else "cat"
    sidecar = old.with_name(old.name + ".xmp")
    sidecar.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")  # a sidecar beside it travels with it
    content = old.read_bytes()

    response = client.post(f"/api/review/{entry['id']}/label", json={"label": new_label},
                           headers={"x-notcat-token": TOKEN})
    assert response.status_code == 200, response.text
    moved = Path(response.json()["path"])
    assert moved == out / new_label / old.relative_to(out / entry["label"])
    assert moved.read_bytes() == content and not old.exists()
    assert moved.with_name(moved.name + ".xmp").exists() and not sidecar.exists()
    journal = read_rows(report)[-2:]
    assert [(row["path"], row["destination"], row["status"], row["label"]) for row in journal] == [
        (str(old), str(moved), "done", new_label),
        (str(sidecar), str(moved.with_name(moved.name + ".xmp")), "done", new_label)]
    # kept for training, in the folder layout `python -m training fit --data` reads
    corrections = tmp_path / "corrections"
    kept = list((corrections / new_label).iterdir())
    assert [path.read_bytes() for path in kept] == [content] and list((corrections / entry["label"]).iterdir()) == []
    assert layout(corrections) == "folders"
    assert [(item.label, item.path) for item in load_items(corrections)] == [(new_label, kept[0])]
    logged = read_rows(corrections / "corrections.csv")
    assert [(row["label"], row["previous_label"], row["source"]) for row in logged] == \
        [(new_label, entry["label"], str(next(Path(row["path"]) for row in read_rows(report)
                                             if row["destination"] == str(old))))]
    # the same correction again changes nothing
    journal = report.read_bytes()
    again = client.post(f"/api/review/{entry['id']}/label", json={"label": new_label}, headers={"x-notcat-token": TOKEN})
    assert again.status_code == 200 and report.read_bytes() == journal

    run_cli("--undo", report, env=env)
    assert tree(photos) == before
    assert sidecar.exists()  # made after the run, in OUT/cat: put back there, where the correction found it
    assert not [path for path in out.rglob("*") if path.is_file() and path.suffix == ".jpg"]


def test_correcting_back_keeps_one_training_copy(make_client, moved_run, tmp_path):
    _, _, report, _ = moved_run
    client = make_client(report)
    entry = _entry_for(client)
    first, back = ("not-cat", "cat") if entry["label"] == "cat" else ("cat", "not-cat")
    for label in (first, back):
        assert client.post(f"/api/review/{entry['id']}/label", json={"label": label},
                           headers={"x-notcat-token": TOKEN}).status_code == 200
    corrections = tmp_path / "corrections"
    assert len(list((corrections / back).iterdir())) == 1 and list((corrections / first).iterdir()) == []
    assert len(read_rows(corrections / "corrections.csv")) == 2


def test_a_restarted_review_sees_the_corrections(make_client, moved_run, tmp_path):
    _, _, report, _ = moved_run
    client = make_client(report)
    entry = _entry_for(client)
    new_label = "not-cat" if entry["label"] == "cat" else "cat"
    moved = client.post(f"/api/review/{entry['id']}/label", json={"label": new_label},
                        headers={"x-notcat-token": TOKEN}).json()
    again = Review(report, CorrectionsFolder(tmp_path / "corrections")).entry(entry["id"])
    assert (again.label.value, str(again.location)) == (new_label, moved["path"])
    assert again.run_label.value == entry["label"]


def test_a_dry_run_correction_changes_only_the_report(make_client, tmp_path, shared, env):
    photos, report = tmp_path / "photos", tmp_path / "dry.csv"
    library(shared, photos)
    run_cli(photos, "--report", report, "-j", "1", "--no-cache", env=env)
    before = tree(photos)
    client = make_client(report)
    entry = _entry_for(client)
    new_label = "not-cat" if entry["label"] == "cat" else "cat"
    response = client.post(f"/api/review/{entry['id']}/label", json={"label": new_label},
                           headers={"x-notcat-token": TOKEN})
    assert response.status_code == 200 and response.json()["label"] == new_label
    assert tree(photos) == before
    last = read_rows(report)[-1]
    assert (last["path"], last["label"], last["status"]) == (entry["path"], new_label, "planned")
    # Where the dry run would now put it: the other label's folder, same sub-path (photos/cat/roll0/a.jpg).
    assert Path(last["destination"]) == photos / new_label / Path(entry["path"]).relative_to(photos)
    assert len(list((tmp_path / "corrections" / new_label).iterdir())) == 1


@pytest.mark.parametrize("headers, body, status", [
    ({}, {"label": "cat"}, 401),
    ({"x-notcat-token": "wrong"}, {"label": "cat"}, 403),
    ({"x-notcat-token": TOKEN, "content-type": "application/json"}, b"{not json", 400),
    ({"x-notcat-token": TOKEN}, {"label": "dog"}, 400),
    ({"x-notcat-token": TOKEN}, {"label": "error"}, 400),
    ({"x-notcat-token": TOKEN}, {"path": "/etc/passwd"}, 400),
    ({"x-notcat-token": TOKEN, "content-type": "text/plain"}, b'{"label": "cat"}', 415),
])
def test_a_refused_correction_changes_nothing(make_client, untouched_run, headers, body, status):
    _, out, report, before = untouched_run
    client = make_client(report)
    before, journal = tree(out), report.read_bytes()
    for entry in client.get("/api/review", params={"token": TOKEN}).json()["entries"]:
        send = dict(json=body) if isinstance(body, dict) else dict(content=body)
        response = client.post(f"/api/review/{entry['id']}/label", headers=headers, **send)
        assert response.status_code == status, response.text
        assert response.json()["error"]
    assert tree(out) == before and report.read_bytes() == journal


def test_the_token_in_the_query_is_not_enough_to_correct(make_client, untouched_run):
    _, out, report, before = untouched_run
    client = make_client(report)
    before = tree(out)
    entry = _entry_for(client)
    response = client.post(f"/api/review/{entry['id']}/label", params={"token": TOKEN}, json={"label": "cat"})
    assert response.status_code == 401 and tree(out) == before


def test_reading_the_review_needs_the_token(make_client, untouched_run):
    _, _, report, _ = untouched_run
    client = make_client(report)
    assert client.get("/api/review").status_code == 401
    assert client.get("/api/review/0/thumbnail").status_code == 401
    assert client.get("/api/review/0/thumbnail", params={"token": "nope"}).status_code == 403


@pytest.fixture(scope="module")
def raw_server(untouched_run, tmp_path_factory: pytest.TempPathFactory):
    """A real server (uvicorn) reviewing a run, for requests whose path no HTTP client library would send as given."""
    _, _, report, _ = untouched_run
    folder = tmp_path_factory.mktemp("raw-server")
    server = start_server("--report", report, "--corrections", folder / "corrections", "-j", "1", env=environment(folder))
    yield server
    server.stop()


def _raw_get(server, path: str) -> tuple[int, bytes]:
    """GET `path` byte for byte as written: http.client sends it without normalising `..` or `//`
    (httpx, like a browser, resolves `/static/../../etc/passwd` to `/etc/passwd` before sending)."""
    host, port = server.base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.putheader("X-Notcat-Token", server.token)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


TRAVERSALS = [
    "/api/review/../../../../etc/passwd/thumbnail",
    "/api/review/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
    "/api/review/-1/thumbnail",
    "/api/review/99999/thumbnail",
    "/api/review/0x1/thumbnail",
    "/static/../../../../etc/passwd",
    "/static/../../../pyproject.toml",
    "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    "/static/..%2f..%2f..%2fpyproject.toml",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(raw_server, path):
    status, body = _raw_get(raw_server, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"[project]" not in body
    assert "error" in json.loads(body)  # answered by the app, not by something in front of it


def test_the_raw_requests_reach_the_app_as_written(raw_server):
    """The refusals above are the app's, for the path as sent: a `..` reaches the router (a client that
    resolved it would have asked for /static/app.js, which is served), and sane requests are served."""
    assert _raw_get(raw_server, "/api/../static/app.js")[0] == 404
    assert _raw_get(raw_server, "/static/app.js")[0] == 200
    status, body = _raw_get(raw_server, "/api/review/0/thumbnail")
    assert status == 200 and body[:2] == b"\xff\xd8"


def test_a_vanished_file_is_a_clear_error_and_nothing_changes(make_client, moved_run):
    _, out, report, before = moved_run
    client = make_client(report)
    entry = _entry_for(client)
    Path(entry["path"]).unlink()
    before, journal = tree(out), report.read_bytes()
    thumbnail = client.get(f"/api/review/{entry['id']}/thumbnail", params={"token": TOKEN})
    assert thumbnail.status_code == 410 and "not there any more" in thumbnail.json()["error"]
    response = client.post(f"/api/review/{entry['id']}/label", json={"label": "cat" if entry["label"] != "cat" else "not-cat"},
                           headers={"x-notcat-token": TOKEN})
    assert response.status_code == 409 and "Nothing was changed" in response.json()["error"]
    assert tree(out) == before and report.read_bytes() == journal


def test_a_file_changed_since_the_run_is_not_moved(make_client, moved_run):
    _, out, report, before = moved_run
    client = make_client(report)
    entry = _entry_for(client)
    Path(entry["path"]).write_bytes(_jpeg())
    before, journal = tree(out), report.read_bytes()
    response = client.post(f"/api/review/{entry['id']}/label", json={"label": "cat" if entry["label"] != "cat" else "not-cat"},
                           headers={"x-notcat-token": TOKEN})
    assert response.status_code == 409 and "changed since the run" in response.json()["error"]
    assert tree(out) == before and report.read_bytes() == journal


@pytest.mark.parametrize("first_line, says", [
    ("path,label,p_cat,action,destination,status,error\n", "another version"),
    ("name,size\n", "not a notcat-sort report"),
])
def test_a_report_it_cannot_read_is_a_usage_error(tmp_path, env, first_line, says):
    report = tmp_path / "old.csv"
    report.write_text(first_line + "/x.jpg,cat,0.9,move,/o/cat/x.jpg,done,\n")
    done = run_cli("serve", "--report", report, "--port", "0", env=env, check=False)
    assert done.returncode == 2 and says in done.stderr


@pytest.mark.parametrize("source, placed, old, new, expected", [
    ("/p/2020/a.jpg", "/p/cat/2020/a.jpg", "cat", "not-cat", "/p/not-cat/2020/a.jpg"),  # in place
    ("/p/a.jpg", "/o/cat/a (1).jpg", "cat", "not-cat", "/o/not-cat/a (1).jpg"),  # --out, renamed
    ("/p/cat/a.jpg", "/o/cat/cat/a.jpg", "cat", "not-cat", "/o/not-cat/cat/a.jpg"),  # --out, a sub-folder named cat
    ("/home/cat/a.jpg", "/home/cat/cat/a.jpg", "cat", "not-cat", "/home/cat/not-cat/a.jpg"),  # sorting a folder named cat
    ("/p/x/a.jpg", "/p/unsure/x/a.jpg", "unsure", "cat", "/p/cat/x/a.jpg"),
    ("/p/a.jpg", "/p/elsewhere/a.jpg", "cat", "not-cat", None),
    ("/p/2020/a.jpg", "/o/cat/cat-3/2020/a.jpg", "cat:cat-3", "not-cat", "/o/not-cat/2020/a.jpg"),  # --group-cats
    ("/p/cat-3/a.jpg", "/o/cat/cat-3/cat-3/a.jpg", "cat:cat-3", "not-cat", "/o/not-cat/cat-3/a.jpg"),
    ("/p/cat-3/a.jpg", "/o/cat/cat-3/a.jpg", "cat:Tom", "not-cat", "/o/not-cat/cat-3/a.jpg"),  # Tom's folder missing
    ("/p/2020/a.jpg", "/o/not-cat/2020/a.jpg", "not-cat", "cat:unknown", "/o/cat/unknown/2020/a.jpg"),
])
def test_the_other_label_folder(source, placed, old, new, expected):
    (old, _, old_cat), (new, _, new_cat) = old.partition(":"), new.partition(":")
    found = other_label_path(Path(source), Path(placed), Label(old), Label(new), old_cat, new_cat)
    assert found == (Path(expected) if expected else None)


# --- a library's review: the list on the server, many photos at once, undo -------------------------

def _listing(client: TestClient, **query) -> dict:
    response = client.get("/api/review", params={"token": TOKEN, **query})
    assert response.status_code == 200, response.text
    return response.json()


def _post(client: TestClient, path: str, body: dict):
    return client.post(path, json=body, headers={"x-notcat-token": TOKEN})


@pytest.fixture
def wide_run(tmp_path: Path, shared: Path):
    """A real `--move --out --uncertain` run over 8 cats and 8 not-cats in two folders."""
    photos, out, report = tmp_path / "photos", tmp_path / "sorted", tmp_path / "run.csv"
    library(shared, photos, cats=8, not_cats=8)
    before = tree(photos)
    run_cli(photos, "--move", "--out", out, "--uncertain", "0.2:0.95", "--report", report, "-j", "1", "--no-cache",
            env=environment(tmp_path))
    return photos, out, report, before


def test_the_list_is_filtered_ordered_and_paged_on_the_server(make_client, wide_run):
    _, _, report, _ = wide_run
    rows = {row["destination"]: row for row in read_rows(report)}
    client = make_client(report)
    everything = _listing(client, limit=500)
    assert everything["total"] == len(rows) == 16 and everything["counts"]["all"] == 16
    # the default order: unsure first, then cat and not-cat, each from the least sure
    order = [(entry["label"], entry["p_cat"]) for entry in everything["entries"]]
    groups = [label for label, _ in order]
    assert groups == sorted(groups, key=["unsure", "cat", "not-cat"].index)
    for label, direction in (("unsure", 1), ("cat", 1), ("not-cat", -1)):
        ps = [p for group, p in order if group == label]
        assert ps == sorted(ps, key=lambda p: direction * p)
    # pages of one view join up to the whole, in the same order
    first = _listing(client, limit=5)
    pages = [first] + [_listing(client, view=first["view"], offset=offset, limit=5) for offset in (5, 10, 15)]
    assert [entry["id"] for page in pages for entry in page["entries"]] == [entry["id"] for entry in everything["entries"]]
    assert pages[-1]["entries"] and len(pages[-1]["entries"]) == 1
    # filters: label (any of several), p_cat range, a part of the folder, and the counts by label
    for labels in (["cat"], ["unsure", "not-cat"]):
        found = _listing(client, label=labels)
        assert found["total"] == sum(row["label"] in labels for row in rows.values()) == \
            sum(everything["counts"][label] for label in labels)
        assert {entry["label"] for entry in found["entries"]} <= set(labels)
    middle = _listing(client, p_cat_min=0.3, p_cat_max=0.9)
    assert {entry["id"] for entry in middle["entries"]} == \
        {entry["id"] for entry in everything["entries"] if 0.3 <= entry["p_cat"] <= 0.9}
    roll1 = _listing(client, folder="ROLL1")
    assert roll1["total"] == sum(Path(row["path"]).parent.name == "roll1" for row in rows.values()) > 0
    by_path = _listing(client, order="path")
    assert [entry["folder"] + "/" + Path(entry["path"]).name for entry in by_path["entries"]] == \
        sorted(row["path"] for row in rows.values())
    assert {item["name"]: item["kind"] for item in everything["filters"]} == \
        {"label": "choice", "run_label": "choice", "p_cat": "range", "folder": "text", "cat": "choice", "breed": "choice",
         "mood": "choice"}
    ids = client.get("/api/review/ids", params={"token": TOKEN, "label": "cat"}).json()["ids"]
    assert ids == [entry["id"] for entry in _listing(client, label="cat")["entries"]]
    for bad in ({"p_cat_min": "lots"}, {"order": "random"}, {"offset": "-1"}, {"limit": "ten"}):
        response = client.get("/api/review", params={"token": TOKEN, **bad})
        assert response.status_code == 400 and response.json()["error"]


def test_counts_follow_corrections_and_a_view_keeps_its_photos(make_client, wide_run):
    _, _, report, _ = wide_run
    client = make_client(report)
    cats = _listing(client, label="cat")
    before = cats["counts"]
    chosen = [entry["id"] for entry in cats["entries"][:2]]
    answer = _post(client, "/api/review/label", {"ids": chosen, "label": "not-cat"}).json()
    assert answer["refused"] == [] and {entry["id"] for entry in answer["entries"]} == set(chosen)
    counts = answer["counts"]
    assert (counts["cat"], counts["not-cat"], counts["corrected"]) == (before["cat"] - 2, before["not-cat"] + 2, 2)
    # the same view still holds them, as not-cats now; asked again, the filter leaves them out
    again = _listing(client, view=cats["view"], label="cat")
    assert [entry["id"] for entry in again["entries"]] == [entry["id"] for entry in cats["entries"]]
    assert {entry["label"] for entry in again["entries"] if entry["id"] in chosen} == {"not-cat"}
    fresh = _listing(client, label="cat")
    assert fresh["total"] == cats["total"] - 2 and not {entry["id"] for entry in fresh["entries"]} & set(chosen)
    assert fresh["counts"] == counts


def test_many_photos_corrected_at_once_and_undone(make_client, wide_run, env, tmp_path):
    """A selection goes to another label in one request; undo puts the files, the report's story and
    the corrections folder back as they were, and the CLI's --undo still puts back the whole run."""
    photos, out, report, before = wide_run
    client = make_client(report)
    listing = _listing(client)
    chosen = [entry for entry in listing["entries"] if entry["label"] != "not-cat"][:4]
    vanished = next(entry for entry in listing["entries"] if entry not in chosen and entry["label"] != "not-cat")
    Path(vanished["path"]).rename(tmp_path / "elsewhere.jpg")  # one of the selection is gone: refused, the rest go on
    sorted_before = tree(out)
    ids = [entry["id"] for entry in chosen] + [vanished["id"]]
    answer = _post(client, "/api/review/label", {"ids": ids, "label": "not-cat"}).json()
    assert [item["id"] for item in answer["refused"]] == [vanished["id"]]
    assert "not there any more" in answer["refused"][0]["error"]
    for entry, now in zip(chosen, answer["entries"], strict=True):
        assert Path(now["path"]) == out / "not-cat" / Path(entry["path"]).relative_to(out / entry["label"])
        assert Path(now["path"]).exists() and not Path(entry["path"]).exists() and now["undo"] == 1
    corrections = tmp_path / "corrections"
    assert len(list((corrections / "not-cat").iterdir())) == 4 and len(read_rows(corrections / "corrections.csv")) == 4

    undone = _post(client, "/api/review/undo", {"ids": [entry["id"] for entry in chosen]}).json()
    assert undone["refused"] == []
    assert [(entry["label"], entry["path"], entry["undo"]) for entry in undone["entries"]] == \
        [(entry["label"], entry["path"], 0) for entry in chosen]
    assert tree(out) == sorted_before
    assert list((corrections / "not-cat").iterdir()) == [] and list((corrections / "cat").iterdir()) == []
    assert read_rows(corrections / "corrections.csv") == []
    assert undone["counts"] == listing["counts"]
    nothing = _post(client, "/api/review/undo", {"ids": [chosen[0]["id"]]}).json()
    assert nothing["entries"] == [] and "no correction" in nothing["refused"][0]["error"]

    (tmp_path / "elsewhere.jpg").rename(vanished["path"])
    run_cli("--undo", report, env=env)
    assert tree(photos) == before


def test_undo_gives_back_the_training_copy_an_earlier_correction_made(make_client, moved_run, tmp_path):
    _, _, report, _ = moved_run
    client = make_client(report)
    entry = _entry_for(client, "cat")
    corrections = tmp_path / "corrections"
    assert _post(client, "/api/review/label", {"ids": [entry["id"]], "label": "not-cat"}).json()["refused"] == []
    assert _post(client, "/api/review/label", {"ids": [entry["id"]], "label": "cat"}).json()["refused"] == []
    assert len(list((corrections / "cat").iterdir())) == 1 and list((corrections / "not-cat").iterdir()) == []
    _post(client, "/api/review/undo", {"ids": [entry["id"]]})
    kept = list((corrections / "not-cat").iterdir())
    assert len(kept) == 1 and list((corrections / "cat").iterdir()) == []
    assert [row["label"] for row in read_rows(corrections / "corrections.csv")] == ["not-cat"]
    assert Path(_entry_for(client, "not-cat")["path"]).read_bytes() == kept[0].read_bytes()


def test_a_photo_goes_back_to_unsure_and_out_of_the_training_copies(make_client, tmp_path, shared, env):
    photos, out, report = tmp_path / "photos", tmp_path / "sorted", tmp_path / "run.csv"
    library(shared, photos, cats=1, not_cats=1)
    run_cli(photos, "--move", "--out", out, "--uncertain", "0:1", "--report", report, "-j", "1", "--no-cache", env=env)
    client = make_client(report)
    entry = _entry_for(client, "unsure")
    assert _post(client, f"/api/review/{entry['id']}/label", {"label": "cat"}).status_code == 200
    assert len(list((tmp_path / "corrections" / "cat").iterdir())) == 1
    back = _post(client, f"/api/review/{entry['id']}/label", {"label": "unsure"})
    assert back.status_code == 200 and back.json()["label"] == "unsure" and back.json()["path"] == entry["path"]
    assert list((tmp_path / "corrections" / "cat").iterdir()) == []
    assert [row["label"] for row in read_rows(tmp_path / "corrections" / "corrections.csv")] == ["cat", "unsure"]


def test_photos_the_run_could_not_read_are_listed_and_not_corrected(make_client, tmp_path, shared, env):
    photos, out, report = tmp_path / "photos", tmp_path / "sorted", tmp_path / "run.csv"
    library(shared, photos, cats=1, not_cats=1)
    (photos / "broken.jpg").write_bytes(_jpeg()[:300])
    run_cli(photos, "--move", "--out", out, "--report", report, "-j", "1", "--no-cache", env=env, check=False)
    client = make_client(report)
    errors = _listing(client, label="error")
    assert errors["total"] == 1 and errors["counts"]["error"] == 1
    broken = errors["entries"][0]
    assert broken["name"] == "broken.jpg" and broken["error"]
    answer = _post(client, "/api/review/label", {"ids": [broken["id"]], "label": "cat"}).json()
    assert "could not read" in answer["refused"][0]["error"] and (photos / "broken.jpg").exists()


@pytest.mark.parametrize("body, status", [
    ({"ids": [], "label": "cat"}, 400),
    ({"ids": "all", "label": "cat"}, 400),
    ({"ids": [0, True], "label": "cat"}, 400),
    ({"ids": [0], "label": "dog"}, 400),
    ({"label": "cat"}, 400),
])
def test_a_malformed_selection_changes_nothing(make_client, untouched_run, body, status):
    _, out, report, _ = untouched_run
    client = make_client(report)
    before, journal = tree(out), report.read_bytes()
    response = _post(client, "/api/review/label", body)
    assert response.status_code == status and response.json()["error"]
    assert client.post("/api/review/label", json={"ids": [0], "label": "cat"}, params={"token": TOKEN}).status_code == 401
    assert tree(out) == before and report.read_bytes() == journal


def test_naming_keeps_examples_of_the_cat_and_undo_takes_them_back(make_client, wide_run, tmp_path):
    _, _, report, _ = wide_run
    client = make_client(report)
    cats = _listing(client, label="cat")["entries"][:3]
    known = tmp_path / "known"
    answer = _post(client, "/api/review/name", {"ids": [entry["id"] for entry in cats], "name": "Tom"}).json()
    assert answer["refused"] == [] and {entry["known"] for entry in answer["entries"]} == {"Tom"}
    assert answer["known_cats"]["cats"] == {"Tom": 3} and answer["known_cats"]["folder"] == str(known)
    assert "--group-cats --known-cats" in answer["known_cats"]["command"]
    kept = sorted(path.read_bytes() for path in (known / "Tom").iterdir())
    assert kept == sorted(Path(entry["path"]).read_bytes() for entry in cats)
    assert {entry["id"] for entry in _listing(client, cat="Tom")["entries"]} == {entry["id"] for entry in cats}
    # a later server finds the names in the folder
    assert {entry["known"] for entry in _listing(make_client(report), cat="Tom")["entries"]} == {"Tom"}
    # renamed: one copy, under the new name; corrected to not-cat: no longer an example; undo: as before
    _post(client, "/api/review/name", {"ids": [cats[0]["id"]], "name": "Mia"})
    assert len(list((known / "Tom").iterdir())) == 2 and len(list((known / "Mia").iterdir())) == 1
    _post(client, "/api/review/label", {"ids": [cats[1]["id"]], "label": "not-cat"})
    assert len(list((known / "Tom").iterdir())) == 1
    not_cat = _post(client, "/api/review/name", {"ids": [cats[1]["id"]], "name": "Tom"}).json()
    assert "only a cat photo" in not_cat["refused"][0]["error"]
    for entry in (cats[1], cats[0]):
        assert _post(client, "/api/review/undo", {"ids": [entry["id"]]}).json()["refused"] == []
    assert len(list((known / "Tom").iterdir())) == 3 and list((known / "Mia").iterdir()) == []
    _post(client, "/api/review/undo", {"ids": [entry["id"] for entry in cats]})
    assert list((known / "Tom").iterdir()) == [] and _listing(client)["known_cats"]["cats"] == {}
    for bad in ("unknown", "cat-3", "../x", " Tom", 7):
        response = _post(client, "/api/review/name", {"ids": [cats[0]["id"]], "name": bad})
        assert response.status_code == 400 and response.json()["error"]


def test_a_thumbnail_is_drawn_once_and_kept_on_disk(make_client, moved_run):
    """A second server answers from the thumbnail cache: the photo's bytes, overwritten with the same
    size and modification time, are not read again (and a changed stat draws it anew)."""
    _, _, report, _ = moved_run
    entry = _entry_for(make_client(report))
    first = make_client(report).get(f"/api/review/{entry['id']}/thumbnail", params={"token": TOKEN})
    assert first.status_code == 200
    photo = Path(entry["path"])
    stat = photo.stat()
    photo.write_bytes(b"\0" * stat.st_size)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = make_client(report).get(f"/api/review/{entry['id']}/thumbnail", params={"token": TOKEN})
    assert again.status_code == 200 and again.content == first.content
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert make_client(report).get(f"/api/review/{entry['id']}/thumbnail", params={"token": TOKEN}).status_code == 422


# --- a real server ---------------------------------------------------------------------------------

def test_a_real_uvicorn_server_classifies_and_corrects(moved_run, env, tmp_path):
    _, _, report, _ = moved_run
    server = start_server("--report", report, "--corrections", tmp_path / "fixes", "-j", "2", env=env)
    try:
        assert server.base.startswith("http://127.0.0.1:")
        with server.client() as client:
            rows = read_rows(report)
            photo = Path(rows[0]["destination"])
            answer = client.post("/api/classify", files={"file": (photo.name, photo.read_bytes())}).json()
            assert (answer["label"], f"{answer['p_cat']:.4f}") == (rows[0]["label"], rows[0]["p_cat"])
            assert client.post("/api/classify", content=b"not an image").status_code == 415
            entry = client.get("/api/review", params={"token": server.token}).json()["entries"][0]
            new_label = "not-cat" if entry["label"] == "cat" else "cat"
            assert client.post(f"/api/review/{entry['id']}/label", json={"label": new_label}).status_code == 401
            response = client.post(f"/api/review/{entry['id']}/label", json={"label": new_label},
                                   headers={"x-notcat-token": server.token})
            assert response.status_code == 200, response.text
            assert Path(response.json()["path"]).parent.parent.name == new_label
            assert Path(response.json()["path"]).exists() and not Path(entry["path"]).exists()
            assert len(list((tmp_path / "fixes" / new_label).iterdir())) == 1
    finally:
        assert server.stop() == 0


def _outward_address() -> str | None:
    """This machine's address on its first non-loopback interface (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_by_default_it_listens_on_loopback_only(env):
    outward = _outward_address()
    need_that(outward is not None, "this machine has no non-loopback address to try")
    server = start_server(env=env)
    try:
        port = int(server.base.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=5).close()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        server.stop()


def test_an_unsure_photo_goes_to_the_label_it_is_given(make_client, tmp_path, shared, env):
    photos, out, report = tmp_path / "photos", tmp_path / "sorted", tmp_path / "run.csv"
    library(shared, photos, cats=1, not_cats=1)
    before = tree(photos)
    run_cli(photos, "--move", "--out", out, "--uncertain", "0:1", "--report", report, "-j", "1", "--no-cache", env=env)
    client = make_client(report)
    entry = _entry_for(client, "unsure")
    response = client.post(f"/api/review/{entry['id']}/label", json={"label": "cat"}, headers={"x-notcat-token": TOKEN})
    assert response.status_code == 200
    assert Path(response.json()["path"]) == out / "cat" / Path(entry["path"]).relative_to(out / "unsure")
    run_cli("--undo", report, env=env)
    assert tree(photos) == before and not any(path.is_file() for path in out.rglob("*"))


def test_a_tag_run_is_not_corrected_here(make_client, tmp_path, shared, env):
    photos, report = tmp_path / "photos", tmp_path / "tag.csv"
    library(shared, photos, cats=1, not_cats=1)
    run_cli(photos, "--tag", "--report", report, "-j", "1", "--no-cache", env=env)
    before, journal = tree(photos), report.read_bytes()
    client = make_client(report)
    entry = _entry_for(client)
    response = client.post(f"/api/review/{entry['id']}/label", json={"label": "cat" if entry["label"] != "cat" else "not-cat"},
                           headers={"x-notcat-token": TOKEN})
    assert response.status_code == 409 and "--tag" in response.json()["error"]
    assert tree(photos) == before and report.read_bytes() == journal


def test_serve_is_a_subcommand_of_the_installed_command(env):
    help_text = run_cli("serve", "--help", env=env).stdout
    assert "--report" in help_text and "--host" in help_text and "notcat-sort serve" in help_text
    assert "notcat-sort serve" in run_cli("--help", env=env).stdout
