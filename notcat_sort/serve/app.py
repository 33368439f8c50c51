"""The ASGI app: the classify API and page, and with a report the review API and page.

Every error is JSON, `{"error": "..."}`, with a 4xx status that says what kind it is. The review
(reading thumbnails and the report's paths, and above all corrections, which change files) needs
the token printed at start: in the `X-Notcat-Token` header, or for reads in the `token` query
parameter (the page's own URL and its <img> links). A correction takes the header only, which a
page from another site cannot send without the CORS permission this app never gives. The Host
header is checked too, so that a page from elsewhere cannot reach the app through DNS rebinding.
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notcat_sort.cats import is_cat_name
from notcat_sort.decide import Label, Policy
from notcat_sort.model import ModelCard, card_path
from notcat_sort.serve.inference import BatchedClassifier, DecodeError, NotAnImage
from notcat_sort.serve.listing import DEFAULT_PAGE, MAX_PAGE, Listing, View
from notcat_sort.serve.review import REVIEW_LABELS, Changes, NotFound, Refused, Review
from notcat_sort.serve.thumbnails import Thumbnails

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_HEADER = "x-notcat-token"
_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the image in a multipart body


@dataclass(frozen=True)
class ServeConfig:
    card: ModelCard
    policy: Policy
    token: str
    review: Review | None = None
    max_upload: int = 50 * 1024 * 1024  # bytes
    workers: int = 1  # threads calling the shared model session
    batch_size: int = 16
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS  # ("*",) when bound beyond this machine
    thumbnail_cache: Path | None = None  # where thumbnails are kept; None: drawn for each request


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _SafetyHeaders:
    """No referrer (the page's URL holds the token), no content sniffing, nothing from elsewhere."""

    HEADERS = (
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The image in the body, raw or as the multipart field `file`, and its file name (multipart only;
    it tells a RAW file); 413 past `limit` bytes, read no further."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = limit + (_MULTIPART_SLACK if multipart else 0)
    too_large = ApiError(413, f"upload is over the {limit:,} byte limit")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    body, name = b"".join(chunks), ""
    if multipart:
        async def whole() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, whole(), max_files=1, max_fields=8).parse()
        except MultiPartException as error:
            raise ApiError(400, f"malformed multipart body: {error.message}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, 'multipart body without a "file" part holding the image')
        body, name = await upload.read(), upload.filename or ""
        await form.close()
        if len(body) > limit:
            raise too_large
    if not body:
        raise ApiError(400, 'empty upload: send the image as the body, or as the multipart field "file"')
    return body, name


_LABELS_WORDS = " or ".join(f'"{label.value}"' for label in REVIEW_LABELS)


async def _json_body(request: Request, example: str) -> dict:
    """The request's JSON object; 415 when it is not sent as JSON, 400 when it is not an object."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, f"send JSON: {example}")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, f"expected JSON {example}")
    return body


def _label_of(body: dict) -> Label:
    try:
        label = Label(body["label"])
    except (ValueError, KeyError, TypeError):
        label = Label.ERROR
    if label not in REVIEW_LABELS:
        raise ApiError(400, f'expected {{"label": ...}} with the label {_LABELS_WORDS}')
    return label


def _ids_of(body: dict) -> list[int]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ApiError(400, 'expected "ids": a list of photo numbers')
    return ids


def _int_parameter(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name, "")
    if not text:
        return default
    if not text.isdigit():
        raise ApiError(400, f"{name} must be a whole number, not {text!r}")
    return int(text)


def create_app(config: ServeConfig) -> Starlette:
    classifier = BatchedClassifier(config.card, config.policy, config.workers, config.batch_size)
    thumbnails = Thumbnails(config.thumbnail_cache)
    listing = Listing(config.review) if config.review is not None else None
    model_name = f"{config.card.name} {config.card.version}"

    def need_token(request: Request, header_only: bool = False) -> None:
        given = request.headers.get(TOKEN_HEADER) or ("" if header_only else request.query_params.get("token", ""))
        if not given:
            where = "the X-Notcat-Token header" if header_only else "the X-Notcat-Token header or ?token="
            raise ApiError(401, f"this needs the token printed when the server started, in {where}")
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            raise ApiError(403, "wrong token: use the one printed when this server started")

    def the_review() -> Review:
        if config.review is None:
            raise ApiError(404, "no run to review: start the server with `notcat-sort serve --report REPORT.csv`")
        return config.review

    def entry_id(request: Request) -> int:
        return int(request.path_params["entry"])

    async def health(request: Request) -> Response:
        stats = classifier.stats
        return JSONResponse({"status": "ok", "model": model_name, "review": config.review is not None,
                             "model_calls": stats.calls, "images_classified": stats.images})

    async def model(request: Request) -> Response:
        return JSONResponse(json.loads(card_path(config.card.path).read_text(encoding="utf-8")))

    async def classify(request: Request) -> Response:
        upload, name = await _read_upload(request, config.max_upload)
        try:
            verdict = await run_in_threadpool(classifier.classify, upload, name)
        except NotAnImage as error:
            raise ApiError(415, str(error)) from None
        except DecodeError as error:
            raise ApiError(422, f"cannot read this image: {error}") from None
        return JSONResponse({"label": verdict.label.value, "p_cat": verdict.p_cat,
                             "threshold": config.policy.threshold, "model": model_name, "sha256": verdict.sha256,
                             "source": verdict.source.value,
                             "breeds": [{"name": guess.name, "p": guess.p} for guess in verdict.breeds],
                             "breed": None if verdict.breed is None else verdict.breed.name,
                             "mood": None if verdict.mood is None else {"name": verdict.mood.name, "p": verdict.mood.p},
                             "thumbnail": "data:image/jpeg;base64," + base64.b64encode(verdict.thumbnail).decode()})

    def the_listing() -> Listing:
        the_review()
        assert listing is not None
        return listing

    def view_of(request: Request) -> tuple[Listing, View]:
        need_token(request)
        found = the_listing()
        try:
            return found, found.view({key: request.query_params.getlist(key) for key in request.query_params})
        except ValueError as error:
            raise ApiError(400, str(error)) from None

    async def review_list(request: Request) -> Response:
        """A page of the photos the filters let through, with the counts as they are now."""
        found, view = view_of(request)
        offset, limit = _int_parameter(request, "offset", 0), _int_parameter(request, "limit", DEFAULT_PAGE)
        review = found.review
        return JSONResponse({"report": str(review.report), "corrections": str(review.corrections.root),
                             "view": view.id, "total": len(view.ids), "offset": offset, "page_limit": MAX_PAGE,
                             "entries": [entry.as_json() for entry in found.page(view, offset, limit)],
                             "counts": review.counts(), "filters": found.describe(), "known_cats": known_cats(review)})

    async def review_ids(request: Request) -> Response:
        """Every photo number of a view, in order (to select all that a filter lets through)."""
        _, view = view_of(request)
        return JSONResponse({"view": view.id, "ids": view.ids})

    def known_cats(review: Review) -> dict[str, object] | None:
        """The cats named so far, where they are kept, and the command that sorts by them."""
        if review.known is None:
            return None
        return {"folder": str(review.known.root), "cats": review.known.counts(),
                "command": f"notcat-sort PATH --group-cats --known-cats {shlex.quote(str(review.known.root))}"}

    def changes(done: Changes, review: Review) -> Response:
        return JSONResponse({"entries": [entry.as_json() for entry in done.changed],
                             "refused": [{"id": entry_id, "error": error} for entry_id, error in done.refused],
                             "counts": review.counts(), "known_cats": known_cats(review)})

    async def correct_many(request: Request) -> Response:
        need_token(request, header_only=True)
        review = the_review()
        body = await _json_body(request, '{"ids": [3, 4], "label": "cat"}')
        label, ids = _label_of(body), _ids_of(body)
        return changes(await run_in_threadpool(review.correct_many, ids, label), review)

    async def name_many(request: Request) -> Response:
        need_token(request, header_only=True)
        review = the_review()
        body = await _json_body(request, '{"ids": [3, 4], "name": "Tom"}')
        ids, name = _ids_of(body), body.get("name")
        if not isinstance(name, str) or (name and not is_cat_name(name)):
            raise ApiError(400, f'"name" must be a name that can be a folder under cat/ (not "unknown" nor cat-N), '
                                f'or "" for none; not {name!r}')
        return changes(await run_in_threadpool(review.name_many, ids, name), review)

    async def undo_many(request: Request) -> Response:
        need_token(request, header_only=True)
        review = the_review()
        ids = _ids_of(await _json_body(request, '{"ids": [3, 4]}'))
        return changes(await run_in_threadpool(review.undo_many, ids), review)

    async def thumbnail(request: Request) -> Response:
        need_token(request)
        review = the_review()
        try:
            entry = review.entry(entry_id(request))
        except NotFound as error:
            raise ApiError(404, str(error)) from None
        try:
            image = await run_in_threadpool(thumbnails.get, entry.location)
        except FileNotFoundError:
            raise ApiError(410, f"{entry.location} is not there any more (moved or deleted since the run)") from None
        except (DecodeError, PermissionError) as error:
            raise ApiError(422, f"cannot draw {entry.location}: {error}") from None
        return Response(image, media_type="image/jpeg", headers={"cache-control": "private, max-age=60"})

    async def correct(request: Request) -> Response:
        need_token(request, header_only=True)
        review = the_review()
        label = _label_of(await _json_body(request, '{"label": "cat"}'))
        try:
            entry = await run_in_threadpool(review.correct, entry_id(request), label)
        except NotFound as error:
            raise ApiError(404, str(error)) from None
        except Refused as error:
            raise ApiError(409, str(error)) from None
        return JSONResponse(entry.as_json())

    async def favicon(request: Request) -> Response:
        return FileResponse(STATIC / "favicon.ico", headers={"cache-control": "public, max-age=86400"})

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / ("review.html" if request.url.path == "/review" else "index.html"))

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return _error(error.status, error.message)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return _error(error.status_code, str(error.detail))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        classifier.close()

    routes = [
        Route("/", page),
        Route("/review", page),
        Route("/favicon.ico", favicon),
        Route("/api/health", health),
        Route("/api/model", model),
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/review", review_list),
        Route("/api/review/ids", review_ids),
        Route("/api/review/label", correct_many, methods=["POST"]),
        Route("/api/review/undo", undo_many, methods=["POST"]),
        Route("/api/review/name", name_many, methods=["POST"]),
        Route("/api/review/{entry:int}/thumbnail", thumbnail),
        Route("/api/review/{entry:int}/label", correct, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts)),
                    Middleware(_SafetyHeaders)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
