"""The HTTP face of the ingest service: `create_app(cfg)` -> a FastAPI app (run it with uvicorn, or in-process).

    POST /v1/images                 one image (raw body with its Content-Type, or multipart `file`); optional
                                    `label`, `key` (query or form fields; `Idempotency-Key` header for key)
    GET  /v1/images/{id}            metadata           GET /v1/images/{id}/latent          its bitstream
    GET  /v1/images/{id}/reconstruction   PNG           GET /v1/search?label=L&min_score=S&limit=N
    GET  /healthz  /readyz  /metrics (Prometheus)
Errors are `{"error": "one line"}` with their status. Scopes: POST needs a write token, the rest read,
/healthz none (only with --token-file).
"""
from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import check_token, load_tokens
from .config import ServeConfig
from .service import IngestService
from .uploads import Rejected, check_content_type, parse_multipart, read_bounded

PUBLIC_KEYS = ("id", "sha256", "bytes", "bpp", "shape", "latent_shape", "stored_size", "label", "key",
               "predictions", "source_bytes", "duplicate", "sealed", "slot", "created", "worker", "timings_ms")


def public(meta: dict) -> dict:
    return {k: meta[k] for k in PUBLIC_KEYS if k in meta}


class _RequestMetrics:
    """Pure ASGI middleware: every answer counted by route, method and status, and timed."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), {"code": 500}

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)


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

    app = FastAPI(title="latentstore ingest", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    app.add_middleware(_RequestMetrics, metrics=svc.metrics)

    def reject(status: int, reason: str, code: str, headers: dict | None = None) -> JSONResponse:
        svc.metrics.rejects.labels(str(status), code).inc()
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    @app.exception_handler(Rejected)
    async def _rejected(request, e: Rejected):
        return reject(e.status, e.reason, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return reject(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return reject(422, f"bad parameter {where}: {first.get('msg', 'invalid')}", "bad_parameter")

    def need(request: Request, scope: str) -> None:
        check_token(tokens, request.headers.get("authorization"), scope)

    def found(image_id: str) -> dict:
        m = svc.lookup(image_id)
        if m is None:
            raise Rejected(404, f"no image {image_id}", "not_found")
        return m

    @app.post("/v1/images")
    async def post_image(request: Request, label: str | None = None, key: str | None = None):
        need(request, "write")
        t0 = time.perf_counter()
        if not svc.ready:
            raise Rejected(503, "not ready", "not_ready", {"Retry-After": "1"})
        ct = request.headers.get("content-type", "")
        body = await read_bounded(request, cfg.max_upload_bytes)
        if ct.lower().startswith("multipart/form-data"):
            data, fields = await parse_multipart(request.headers, body)
            label, key = label or fields.get("label"), key or fields.get("key")
        else:
            check_content_type(ct)
            data = body
        key = key or request.headers.get("idempotency-key")
        for name, v in (("label", label), ("key", key)):
            if v is not None and not (0 < len(v) <= 256 and v.isprintable()):
                raise Rejected(400, f"{name} must be 1-256 printable characters", "bad_request")
        return public(await svc.upload(data, label, key, t0))

    @app.get("/v1/images/{image_id}")
    async def get_image(image_id: str, request: Request):
        need(request, "read")
        return public(found(image_id))

    @app.get("/v1/images/{image_id}/latent")
    async def get_latent(image_id: str, request: Request):
        need(request, "read")
        m = found(image_id)
        sym, payload = await run_in_threadpool(svc.blobs, m)
        data = svc.engine.bitstream(tuple(m["latent_shape"]), payload)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{image_id}.lsb"'})

    @app.get("/v1/images/{image_id}/reconstruction")
    async def get_reconstruction(image_id: str, request: Request):
        need(request, "read")
        m = found(image_id)

        def render():
            return svc.engine.reconstruction_png(svc.blobs(m)[0])
        return Response(await run_in_threadpool(render), media_type="image/png")

    @app.get("/v1/search")
    async def search(request: Request, label: str, min_score: float = 0.0, limit: int = 100):
        need(request, "read")
        if not 1 <= limit <= 10_000:
            raise Rejected(422, "limit must be in [1, 10000]", "bad_parameter")
        hits = await run_in_threadpool(svc.search, label, min_score, limit)
        return {"label": label, "min_score": min_score, "count": len(hits), "results": hits}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/readyz")
    async def readyz(request: Request):
        need(request, "read")
        writable = os.access(os.path.join(cfg.store, "_serve", "intake"), os.W_OK)
        sealer_error = svc.sealer.last_error if svc.sealer is not None else None
        ok = svc.ready and writable and sealer_error is None
        body = {"ready": ok, "codec": svc.engine.model.name if svc.engine else None,
                "classifier": cfg.classifier if svc.engine and svc.engine.classifier is not None else None,
                "store_writable": writable, "sealer": svc.sealer is not None, "sealer_error": sealer_error,
                "pid": os.getpid()}
        return JSONResponse(body, status_code=200 if ok else 503)

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
    return create_app(ServeConfig(**json.loads(os.environ["LATENTSTORE_SERVE_CONFIG"])))
