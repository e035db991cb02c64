"""Running the app under uvicorn: one process (the service started first, so a bad store or codec is one
line and exit 2), or `workers` processes sharing the socket and the store (uvicorn's own supervisor; each
worker builds the app from LATENTSTORE_SERVE_CONFIG, and the one that takes the sealer lock seals).

Start-up order, so that nothing is created for a start that cannot succeed: every argument and the token file
are checked (`ServeConfig.check`), then the listening socket is bound (a port in use is one line, exit 2),
then the service opens or creates the store, then uvicorn serves the socket it was handed.
Requests are read under header and body deadlines (timeouts.py); each answer is one access-log line (app.py).

SIGTERM or Ctrl-C: uvicorn stops accepting, finishes in-flight requests, then the app's lifespan drains
the batcher and seals everything; the process exits 0.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys

from ..errors import UsageError
from .config import ServeConfig
from .sockets import listen_socket

def _announce(server_or_sock, host: str) -> None:
    sockets = getattr(server_or_sock, "servers", None)
    if sockets is not None:
        port = sockets[0].sockets[0].getsockname()[1]
    else:
        port = server_or_sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}", file=sys.stderr, flush=True)


def uvicorn_config(app, cfg: ServeConfig, **kw):
    """The uvicorn Config every serving path uses: the read deadlines, no uvicorn access log (app.py writes
    ours), a 30 s graceful shutdown."""
    from .timeouts import DeadlineConfig
    return DeadlineConfig(app, header_timeout_s=cfg.header_timeout_s, body_timeout_s=cfg.body_timeout_s,
                          host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=30, lifespan="on", **kw)


def _drained_exit(signum, frame):
    raise SystemExit(0)


def run_server(cfg: ServeConfig) -> int:
    from .app import setup_logging
    setup_logging()
    cfg.check()
    per_worker = cfg.workers > 1 and hasattr(socket, "SO_REUSEPORT")
    sock = listen_socket(cfg.host, cfg.port, reuse_port=per_worker, listen=not per_worker)
    try:
        if cfg.workers > 1:
            return _run_workers(cfg, sock)
        return _run_one(cfg, sock)
    finally:
        sock.close()


def _run_one(cfg: ServeConfig, sock: socket.socket) -> int:
    import uvicorn

    from .app import create_app
    from .service import IngestService
    service = IngestService(cfg)
    service.start()  # errors here are one line (the CLI's `friendly`)
    try:
        app = create_app(cfg, service)
    except BaseException:
        service.stop()
        raise

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                _announce(self, cfg.host)

    server = _Server(uvicorn_config(app, cfg))
    # uvicorn re-raises the signal that stopped it once it has shut down; by then the service has drained and
    # sealed, so SIGTERM ends the process with 0 (uvicorn's own handlers are in place while it runs)
    signal.signal(signal.SIGTERM, _drained_exit)
    server.run(sockets=[sock])
    if not server.started:  # the lifespan never ran, so drain here
        service.stop()
        raise UsageError(f"could not serve on {cfg.host}:{cfg.port}")
    return 0


def _run_workers(cfg: ServeConfig, sock: socket.socket) -> int:
    """uvicorn's supervisor (health checks, restarts, signals), with one change where the kernel has SO_REUSEPORT:
    each worker listens on a socket of its own on the port, and the kernel spreads new connections over them.
    On one shared socket the worker that woke first accepted every connection waiting (asyncio accepts up to its
    backlog per wake-up): with keep-alive clients, 3 of 5 runs of 32 connections all went to one of two workers,
    which halved the rate of cheap (latent) uploads. Until the workers listen, connections are refused (the
    supervisor's socket is bound, not listening); clients wait for /readyz as they do for one process."""
    from uvicorn.supervisors import Multiprocess, multiprocess
    os.environ["LATENTSTORE_SERVE_CONFIG"] = json.dumps(dataclasses.asdict(cfg))
    if hasattr(socket, "SO_REUSEPORT"):
        from .workers import OwnSocketProcess
        multiprocess.Process = OwnSocketProcess  # every worker Multiprocess starts (and restarts) is one of these
    config = uvicorn_config("latentstore.serve.app:app_from_env", cfg, factory=True, workers=cfg.workers,
                            # the supervisor SIGKILLs a worker that misses a ping for this long; loading torch
                            # and the models on a busy machine takes far more than uvicorn's default 5 s
                            timeout_worker_healthcheck=120)
    _announce(sock, cfg.host)  # each worker answers /readyz once its models are loaded
    Multiprocess(config, sockets=[sock]).run()
    return 0

