"""The HTTP face of the ingest service: `create_app(cfg)` -> a FastAPI app (run it with uvicorn, or in-process).

    POST /v1/images                 one image (raw body with its Content-Type, or multipart `file`), or a client's
                                    bitstream (application/x-latentstore, raw or as the `file` part's type; a
                                    native store also takes a `companion` part); optional `label`, `key` (query
                                    or form fields; `Idempotency-Key` header for key)
    GET  /v1/codec                  the store's codec file (ETag: its weights hash; If-None-Match -> 304)
    GET  /v1/images/{id}            metadata           GET /v1/images/{id}/latent          its bitstream
    GET  /v1/images/{id}/reconstruction   PNG (?max_side=N)          GET /v1/search?label=L&min_score=S&limit=N
    GET  /healthz  /readyz  /metrics (Prometheus)   GET /openapi.json  the API schema (read scope)
Errors are `{"error": "one line"}` with their status. Scopes: POST needs a write token, the rest read,
/healthz none (only with --token-file). The schema is behind the read token like the data it describes; the
/docs and /redoc pages are off (they load scripts from a CDN; point any OpenAPI viewer at /openapi.json).
Every query value is checked (a non-finite min_score, an out-of-range limit: 422), so none reaches a 500.
Each answer is one access-log line (logger latentstore.serve.access: client, method, path without the query,
status, bytes, ms; never a header, so never a token); a request whose connection closed before its body was
read (the client left, or a read deadline dropped it) is that one line too, status 499, no traceback.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import StoreError
from .auth import check_token, load_tokens
from .config import ServeConfig
from .service import IngestService
from .uploads import LATENT_TYPE, Rejected, check_content_type, parse_multipart, read_bounded

access_log = logging.getLogger("latentstore.serve.access")
IMAGE_ID = re.compile(r"[0-9a-f]{32}")  # service.image_id: the sha256's first 32 hex digits
NOTE = "latentstore.note"  # a scope key: what the access line adds (a client that left)

PUBLIC_KEYS = ("id", "sha256", "bytes", "bpp", "shape", "latent_shape", "stored_size", "label", "key",
               "predictions", "source_bytes", "encoded_by", "label_sent", "duplicate", "sealed", "slot", "created",
               "worker", "timings_ms")


def setup_logging() -> None:
    """The service's log lines (its warnings, one access line per answer) on stderr, each one line."""
    log = logging.getLogger("latentstore.serve")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s latentstore.serve %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # its parse warnings repeat a 400's reason


def public(meta: dict) -> dict:
    return {k: meta[k] for k in PUBLIC_KEYS if k in meta}


class _RequestMetrics:
    """Pure ASGI middleware: every answer counted by route, method and status, timed, and logged in one line."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, sent = time.perf_counter(), {"code": 500}, [0]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            elif msg["type"] == "http.response.body":
                sent[0] += len(msg.get("body", b""))
            await send(msg)
        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            client = "%s:%s" % tuple(scope["client"][:2]) if scope.get("client") else "-"
            path = scope.get("raw_path", b"").decode("ascii", "replace")[:200] or scope.get("path", "")[:200]
            note = scope.get(NOTE)
            access_log.info("%s %s %s %d %dB %.1fms%s", client, scope["method"], path, status["code"], sent[0],
                            seconds * 1e3, f" ({note})" if note else "")


class IngestApp(FastAPI):
    """FastAPI, with POST /v1/images answered in front of its middleware stack and router.

    Why: a client's bitstream costs the service ~1 ms of CPU per upload, and FastAPI's routing, dependency
    solving and the exception and body-limit middlewares took ~0.35 ms of it (the event loop: 0.97 -> 0.63 ms per
    upload; issue #30, py-spy). The upload
    answers through the same handler and `_RequestMetrics` (counted, timed, one access line) either way;
    every other route is FastAPI's as before."""

    fast_upload = None  # _RequestMetrics around create_app's fast_upload
    upload_route = None  # the FastAPI route of POST /v1/images: the metrics' route label, the OpenAPI entry

    async def __call__(self, scope, receive, send):
        if (self.fast_upload is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] == "/v1/images"):
            scope["app"], scope["route"] = self, self.upload_route
            return await self.fast_upload(scope, receive, send)
        return await super().__call__(scope, receive, send)


def create_app(cfg: ServeConfig, service: IngestService | None = None) -> FastAPI:
    """The app over `service` (started by the app's lifespan unless it is already started); the lifespan's
    end drains it: queued uploads finish, everything is sealed, the store lock is released."""
    cfg.check()
    tokens = load_tokens(cfg.token_file) if cfg.token_file else None
    svc = service or IngestService(cfg)

    @asynccontextmanager
    async def lifespan(app):
        if not svc.ready:
            await run_in_threadpool(svc.start)
        yield
        await run_in_threadpool(svc.stop)

    app = IngestApp(title="latentstore ingest", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.service = svc
    app.add_middleware(_RequestMetrics, metrics=svc.metrics)

    def reject(status: int, reason: str, code: str, headers: dict | None = None) -> JSONResponse:
        svc.metrics.rejects.labels(str(status), code).inc()
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    def error_answer(scope, e: Exception) -> Response:
        """The answer to an error the handlers raise on purpose (Rejected, a client gone, a sample failing its
        check), for FastAPI's exception handlers and IngestApp's upload path alike."""
        if isinstance(e, Rejected):
            return reject(e.status, e.reason, e.code, e.headers)
        if isinstance(e, ClientDisconnect):  # nobody to answer: the access line says so, no traceback
            scope[NOTE] = "connection closed mid-request"  # by the client, or by a read deadline
            return Response(status_code=499)
        line = str(e).splitlines()[0] if str(e) else type(e).__name__  # StoreError: never served as data
        logging.getLogger("latentstore.serve").error("read refused: %s", line)
        return reject(500, line, "corrupt_sample")

    @app.exception_handler(Rejected)
    async def _rejected(request, e: Rejected):
        return error_answer(request.scope, e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return reject(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http")

    @app.exception_handler(StoreError)
    async def _damaged(request, e: StoreError):  # a stored sample failed its check on read
        return error_answer(request.scope, e)

    @app.exception_handler(ClientDisconnect)
    async def _left(request, e):
        return error_answer(request.scope, e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return reject(422, f"bad parameter {where}: {first.get('msg', 'invalid')}", "bad_parameter")

    def need(request: Request, scope: str) -> None:
        check_token(tokens, request.headers.get("authorization"), scope)

    def found(image_id: str) -> dict:
        if not IMAGE_ID.fullmatch(image_id):
            raise Rejected(404, f"no image {image_id[:64]!r} (an id is 32 hex digits)", "not_found")
        m = svc.lookup(image_id)
        if m is None:
            raise Rejected(404, f"no image {image_id}", "not_found")
        return m

    async def answer_upload(request: Request, label: str | None, key: str | None) -> Response:
        """POST /v1/images, whichever way it arrives (IngestApp's fast path, or the route below)."""
        need(request, "write")
        t0 = time.perf_counter()
        if not svc.ready:
            raise Rejected(503, "not ready", "not_ready", {"Retry-After": "1"})
        ct = request.headers.get("content-type", "")
        multipart = ct.lower().startswith("multipart/form-data")
        latent = False if multipart else check_content_type(ct)  # 415 before a byte of the body is read
        body = await read_bounded(request, cfg.max_upload_bytes)
        companion = None
        if multipart:
            part = await parse_multipart(request.headers, body)
            data, companion, latent = part.data, part.companion, part.content_type == LATENT_TYPE
            label, key = label or part.fields.get("label"), key or part.fields.get("key")
        else:
            data = body
        key = key or request.headers.get("idempotency-key")
        for name, v in (("label", label), ("key", key)):
            if v is not None and not (0 < len(v) <= 256 and v.isprintable()):
                raise Rejected(400, f"{name} must be 1-256 printable characters", "bad_request")
        # a JSONResponse as it is: the answer is plain JSON types already (FastAPI's encoder walked it again)
        return JSONResponse(public(await svc.upload(data, label, key, t0, latent=latent, companion=companion)))

    @app.post("/v1/images")
    async def post_image(request: Request, label: str | None = None, key: str | None = None):
        # the OpenAPI entry of the upload; IngestApp answers every POST /v1/images before FastAPI's router
        return await answer_upload(request, label, key)

    async def fast_upload(scope, receive, send):
        """POST /v1/images as plain ASGI: the same answers and errors as the app's handlers give."""
        request = Request(scope, receive)
        try:
            q = request.query_params
            response = await answer_upload(request, q.get("label"), q.get("key"))
        except (Rejected, ClientDisconnect, StoreError) as e:
            response = error_answer(scope, e)
        await response(scope, receive, send)

    app.fast_upload = _RequestMetrics(fast_upload, svc.metrics)
    app.upload_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/images")

    @app.get("/v1/codec")
    async def get_codec(request: Request):  # what `upload --encode` codes with (latent_ingest.codec_response)
        need(request, "read")
        if not svc.ready:
            raise Rejected(503, "not ready", "not_ready", {"Retry-After": "1"})
        status, body, headers = await run_in_threadpool(svc.engine.codec_answer, request.headers.get("if-none-match"))
        return Response(body, status_code=status, headers=headers, media_type="application/octet-stream")

    @app.get("/v1/images/{image_id}")
    async def get_image(image_id: str, request: Request):
        need(request, "read")
        return public(found(image_id))

    @app.get("/v1/images/{image_id}/latent")
    async def get_latent(image_id: str, request: Request):
        need(request, "read")
        m = found(image_id)
        sym, payload = await run_in_threadpool(svc.blobs, m)
        data = svc.engine.bitstream(tuple(m["latent_shape"]), payload, tuple(m["stored_size"]))
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{image_id}.lsb"'})

    @app.get("/v1/images/{image_id}/reconstruction")
    async def get_reconstruction(image_id: str, request: Request, max_side: int | None = None):
        need(request, "read")
        if max_side is not None and not 8 <= max_side <= 65535:
            raise Rejected(422, "max_side must be in [8, 65535]", "bad_parameter")
        m = found(image_id)

        def render():  # what the store keeps: S x S, or (native) the photo at its own size, tiled above 1 Mpx
            return svc.engine.reconstruction_png(svc.blobs(m)[0], tuple(m["stored_size"]), max_side)
        return Response(await run_in_threadpool(render), media_type="image/png")

    @app.get("/v1/search")
    async def search(request: Request, label: str, min_score: float = 0.0, limit: int = 100):
        need(request, "read")
        if not 1 <= limit <= 10_000:
            raise Rejected(422, "limit must be in [1, 10000]", "bad_parameter")
        if not math.isfinite(min_score):
            raise Rejected(422, f"min_score must be a finite number (got {min_score})", "bad_parameter")
        if not 0 < len(label) <= 256:
            raise Rejected(422, "label must be 1-256 characters", "bad_parameter")
        hits = await run_in_threadpool(svc.search, label, min_score, limit)
        return {"label": label, "min_score": min_score, "count": len(hits), "results": hits}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/readyz")
    async def readyz(request: Request):
        need(request, "read")
        reason = svc.ready_reason()  # one verdict (serve/health.py): starting, log or seal failing, not writable
        ok = reason is None
        writable = os.access(os.path.join(cfg.store, "_serve", "intake"), os.W_OK)  # reported, decided above
        sealer_error = svc.sealer.last_error if svc.sealer is not None else None
        body = {"ready": ok, "reason": reason, "codec": svc.engine.model.name if svc.engine else None,
                "classifier": cfg.classifier if svc.engine and svc.engine.classifier is not None else None,
                "store_writable": writable, "sealer": svc.sealer is not None, "sealer_error": sealer_error,
                "pid": os.getpid()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        need(request, "read")
        return JSONResponse(app.openapi())

    @app.get("/metrics")
    async def metrics(request: Request):
        need(request, "read")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        if svc.ready:
            svc.metrics.queue_depth.set(svc.batcher.depth)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory` worker processes (`latentstore serve --workers N`): the config from the
    environment variable LATENTSTORE_SERVE_CONFIG (JSON of ServeConfig's fields)."""
    import json

    setup_logging()  # a worker process: its warnings and access lines go to stderr like the single server's
    return create_app(ServeConfig(**json.loads(os.environ["LATENTSTORE_SERVE_CONFIG"])))
