"""The ASGI app: the classify API and page, and with a report the review API and page.

Every error is JSON, `{"error": "..."}`, with a 4xx status that says what kind it is. The review
(reading thumbnails and the report's paths, and above all corrections, which change files) needs
the token printed at start: in the `X-Notcat-Token` header, or for reads in the `token` query
parameter (the page's own URL and its <img> links). A correction takes the header only, which a
page from another site cannot send without the CORS permission this app never gives. The Host
header is checked too, so that a page from elsewhere cannot reach the app through DNS rebinding.
"""

from __future__ import annotations

import json
import secrets
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

from notcat_sort.decide import Label, Policy
from notcat_sort.model import ModelCard, card_path
from notcat_sort.serve.corrections import TRAINING_LABELS
from notcat_sort.serve.inference import BatchedClassifier, DecodeError, NotAnImage
from notcat_sort.serve.review import NotFound, Refused, Review
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


async def _read_upload(request: Request, limit: int) -> bytes:
    """The image in the body, raw or as the multipart field `file`; 413 past `limit` bytes, read no further."""
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
    body = b"".join(chunks)
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
        body = await upload.read()
        await form.close()
        if len(body) > limit:
            raise too_large
    if not body:
        raise ApiError(400, 'empty upload: send the image as the body, or as the multipart field "file"')
    return body


def create_app(config: ServeConfig) -> Starlette:
    classifier = BatchedClassifier(config.card, config.policy, config.workers, config.batch_size)
    thumbnails = Thumbnails()
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
        upload = await _read_upload(request, config.max_upload)
        try:
            verdict = await run_in_threadpool(classifier.classify, upload)
        except NotAnImage as error:
            raise ApiError(415, str(error)) from None
        except DecodeError as error:
            raise ApiError(422, f"cannot read this image: {error}") from None
        return JSONResponse({"label": verdict.label.value, "p_cat": verdict.p_cat,
                             "threshold": config.policy.threshold, "model": model_name, "sha256": verdict.sha256})

    async def review_list(request: Request) -> Response:
        need_token(request)
        review = the_review()
        return JSONResponse({"report": str(review.report), "corrections": str(review.corrections.root),
                             "entries": [entry.as_json() for entry in review.entries]})

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
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError(415, 'send JSON: {"label": "cat"} or {"label": "not-cat"}')
        try:
            wanted = (await request.json())["label"]
            label = Label(wanted)
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, 'expected JSON {"label": "cat"} or {"label": "not-cat"}') from None
        if label not in TRAINING_LABELS:
            raise ApiError(400, f"a correction is cat or not-cat, not {label.value}")
        try:
            entry = await run_in_threadpool(review.correct, entry_id(request), label)
        except NotFound as error:
            raise ApiError(404, str(error)) from None
        except Refused as error:
            raise ApiError(409, str(error)) from None
        return JSONResponse(entry.as_json())

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
        Route("/api/health", health),
        Route("/api/model", model),
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/review", review_list),
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
