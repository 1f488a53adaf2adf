"""The HTTP side of ``detkit serve``: a FastAPI app around one :class:`~detkit.serve.engine.Engine`.

========================  ==========================================================================
``POST /v1/detect``       one image -> detections in original-image pixels, class names, scores, timing.
                          Body: ``multipart/form-data`` (a file field, e.g. ``-F file=@photo.jpg``),
                          ``application/json`` ``{"image": "<base64 or data: URL>", "name": "..."}``, or
                          the raw image bytes (``Content-Type: image/*`` or ``application/octet-stream``).
                          Query: ``conf``, ``iou``, ``max_det``, ``classes`` (names or ids, comma-separated)
``GET /v1/model``         classes, colours, input size, thresholds and limits, source file, detkit version
``GET /healthz``          liveness: 200 while the process and its batch loop run
``GET /readyz``           readiness: 200 when a request would be accepted now, else 503 with the reason
``GET /metrics``          Prometheus text format (:mod:`detkit.serve.metrics`)
``GET /``                 a page to try the model in a browser (``static/index.html``)
========================  ==========================================================================

No endpoint fetches anything on the server's behalf: images come in the request body only.

Every refusal is JSON ``{"detail": "<one line naming the problem>"}``: 413 (body over
``--max-upload-mb``), 415 (no image format / unsupported Content-Type), 422 (an undecodable image,
one over the pixel limit, a bad query value, an unknown query parameter, a setting the model cannot
honour), 503 with ``Retry-After`` (the queue is full). Anything unexpected is a 500 with the same
shape; the traceback goes to the server log, never into a response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from detkit.inference import DEFAULT_CONF
from detkit.serve.batching import DynamicBatcher, Overloaded
from detkit.serve.engine import Engine, RequestError
from detkit.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics

__all__ = ["ServeOptions", "create_app", "app_from_environment", "OPTIONS_ENV"]

log = logging.getLogger("detkit.serve")

# How `detkit serve --workers N` hands its options to the worker processes uvicorn starts.
OPTIONS_ENV = "DETKIT_SERVE_OPTIONS"
QUERY_PARAMETERS = ("conf", "iou", "max_det", "classes")
_ROUTES = ("/", "/v1/detect", "/v1/model", "/healthz", "/readyz", "/metrics")


@dataclass
class ServeOptions:
    """Everything ``detkit serve`` is started with besides host, port and workers."""

    model: str
    device: str | None = None
    conf: float = DEFAULT_CONF
    iou: float | None = None
    max_det: int | None = None
    threads: int | None = None
    unsafe_load: bool = False
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_mb: float = 20.0
    max_pixels: int | None = None  # None: the model config's data.max_image_pixels, else the reader's default

    def build_engine(self) -> Engine:
        return Engine(self.model, device=self.device, conf=self.conf, iou=self.iou, max_det=self.max_det,
                      threads=self.threads, unsafe_load=self.unsafe_load, max_pixels=self.max_pixels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


def app_from_environment() -> FastAPI:
    """The app of one ``--workers`` process (uvicorn's factory): options from :data:`OPTIONS_ENV`."""
    options = ServeOptions.from_json(os.environ[OPTIONS_ENV])
    return create_app(options.build_engine(), options)


def create_app(engine: Engine, options: ServeOptions) -> FastAPI:
    """The app serving ``engine`` (see the module docstring)."""
    metrics = ServeMetrics(options.max_batch)
    batcher = DynamicBatcher(engine.run_batch, max_batch=options.max_batch, max_wait=options.max_wait_ms / 1000,
                             max_queue=options.max_queue, on_batch=metrics.observe_batch)
    upload_limit = int(options.max_upload_mb * 1024 * 1024)
    # Decoding is CPU work: more decodes at once than cores only hold more decoded images in memory.
    decoding = asyncio.Semaphore(os.cpu_count() or 1)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            metrics.process_exited()

    app = FastAPI(title="detkit serve", version=engine.info()["detkit_version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # the docs pages load their scripts from a CDN
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request, exc: Overloaded):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return _error(422, "; ".join(_validation_message(e) for e in exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal server error ({type(exc).__name__}); the server log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz():
        if not batcher.running:
            return _error(503, "the batch loop is not running")
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not batcher.running:
            return _error(503, "not ready: the batch loop is not running")
        if batcher.in_flight >= batcher.max_queue:
            return _error(503, f"not ready: queue full ({batcher.in_flight} requests)",
                          {"Retry-After": str(batcher.retry_after())})
        return {"status": "ready", "queued": batcher.in_flight}

    @app.get("/v1/model")
    async def model():
        batching = {"max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms,
                    "max_queue": options.max_queue, "max_upload_mb": options.max_upload_mb}
        return {**engine.info(), "batching": batching, "worker_pid": os.getpid()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(metrics.expose(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/detect", openapi_extra=_DETECT_BODY)
    async def detect(
        request: Request,
        conf: float | None = Query(None, ge=0, le=1, description="keep detections scoring at least this "
                                   f"(default {engine.default_conf})"),
        iou: float | None = Query(None, ge=0, le=1, description="NMS IoU threshold (default: the model's)"),
        max_det: int | None = Query(None, ge=1, description="at most this many detections (default: the model's)"),
        classes: str | None = Query(None, description="only these classes: names or ids, comma-separated"),
    ):
        start = time.perf_counter()
        unknown = sorted(set(request.query_params) - set(QUERY_PARAMETERS))
        if unknown:
            raise RequestError(422, f"unknown query parameter {', '.join(repr(u) for u in unknown)} "
                                    f"(known: {', '.join(QUERY_PARAMETERS)})")
        settings = engine.settings(conf, iou, max_det, classes)
        with batcher.admit(), metrics.queue.track_inprogress():
            data, name = await read_image_body(request, upload_limit)
            async with decoding:
                prepared = await run_in_threadpool(engine.prepare, data, name)
            detections, batch = await batcher.submit(settings.iou, prepared)
        found = engine.result(detections, settings)
        times = {**prepared.timings, "queue": batch.queued, "inference": batch.run,
                 "total": time.perf_counter() - start}
        return {
            "model": engine.path.name,
            "image": {"name": name, "width": prepared.width, "height": prepared.height},
            "detections": found,
            "settings": settings.to_json(engine.class_names),
            "batch_size": batch.size,
            "time_ms": {key: round(seconds * 1000, 2) for key, seconds in times.items()},
        }

    return app


_PAGE = resources.files("detkit.serve") / "static" / "index.html"
_DETECT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "description": "the image file, base64 (a data: URL works too)"},
        "name": {"type": "string", "description": "a name for messages"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


def _error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _validation_message(error: dict) -> str:
    where = [str(part) for part in error.get("loc", ())]
    place = f"query parameter {where[-1]}" if where[:1] == ["query"] else ".".join(where) or "request"
    given = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], (dict, list)) else ""
    return f"{place}: {error.get('msg', 'invalid')}{given}"


async def read_image_body(request: Request, limit: int) -> tuple[bytes, str]:
    """The image file of a detect request and a name for messages (see the module docstring for the
    three body kinds); 413 past ``limit`` bytes (checked while reading, before anything is parsed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,} "
                                f"(detkit serve --max-upload-mb)")
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over the limit of {limit:,} bytes (detkit serve --max-upload-mb)")
        body.append(chunk)
    data = b"".join(body)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _from_multipart(request, data)
    if media == "application/json":
        return _from_json(data)
    if media.startswith("image/") or media == "application/octet-stream":
        return data, "upload"
    raise RequestError(415, f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with a file "
                            f"field, application/json {{\"image\": \"<base64>\"}}, or the image bytes as image/*")


async def _from_multipart(request: Request, data: bytes) -> tuple[bytes, str]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    async def replay():  # the body was read (and counted) already; the form parser reads it again here
        return {"type": "http.request", "body": data, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=1, max_fields=16) as form:
            for value in form.values():
                if isinstance(value, UploadFile):
                    return await value.read(), value.filename or "upload"
    except MultiPartException as exc:
        raise RequestError(422, f"malformed multipart body: {exc.message}") from None
    raise RequestError(422, "the multipart body has no file field: send the image as a file, e.g. "
                            "curl -F file=@photo.jpg")


def _from_json(data: bytes) -> tuple[bytes, str]:
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(422, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        raise RequestError(422, 'the JSON body must be an object {"image": "<base64 image file>"}')
    unknown = sorted(set(body) - {"image", "name"})
    if unknown:
        raise RequestError(422, f"unknown JSON field {', '.join(repr(u) for u in unknown)} (fields: image, name; "
                                f"{', '.join(QUERY_PARAMETERS)} go in the query string)")
    text = body["image"]
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", text):  # http://, https://, file://, s3://...
        raise RequestError(422, f"image: {text.split('://')[0]}:// URL given; the server fetches nothing on a "
                                f"client's behalf: send the image file itself, base64-encoded")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(422, f"image: not valid base64 ({exc})") from None
    return image, str(body.get("name") or "upload")


class _MetricsMiddleware:
    """Counts and times every HTTP request by route and status code (a plain ASGI middleware, so the
    status is the one actually sent, errors included)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            self.metrics.observe_request(path if path in _ROUTES else "other", status[0], time.perf_counter() - start)
