"""Running the app under uvicorn: one process (the service started first, so a bad store or codec is one
line and exit 2), or `workers` processes sharing the socket and the store (uvicorn's own supervisor; each
worker builds the app from LATENTSTORE_SERVE_CONFIG, and the one that takes the sealer lock seals).

SIGTERM or Ctrl-C: uvicorn stops accepting, finishes in-flight requests, then the app's lifespan drains
the batcher and seals everything; the process exits 0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys

from .config import ServeConfig

log = logging.getLogger("latentstore.serve")


def setup_logging() -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s latentstore.serve %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


def _announce(server_or_sock, host: str) -> None:
    sockets = getattr(server_or_sock, "servers", None)
    if sockets is not None:
        port = sockets[0].sockets[0].getsockname()[1]
    else:
        port = server_or_sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}", file=sys.stderr, flush=True)


def _drained_exit(signum, frame):
    raise SystemExit(0)


def run_server(cfg: ServeConfig) -> int:
    import uvicorn
    setup_logging()
    cfg.check()
    if cfg.workers > 1:
        return _run_workers(cfg)
    from .app import create_app
    from .service import IngestService
    service = IngestService(cfg)
    service.start()  # errors here are one line (the CLI's `friendly`), before any socket is bound
    try:
        app = create_app(cfg, service)
    except BaseException:
        service.stop()
        raise
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                _announce(self, cfg.host)

    server = _Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; by then the service has drained and
    # sealed, so SIGTERM ends the process with 0 (uvicorn's own handlers are in place while it runs)
    signal.signal(signal.SIGTERM, _drained_exit)
    server.run()
    if not server.started:  # could not bind (port in use): the lifespan never ran, so drain here
        service.stop()
        from ..errors import UsageError
        raise UsageError(f"could not listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)")
    return 0


def _run_workers(cfg: ServeConfig) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess
    os.environ["LATENTSTORE_SERVE_CONFIG"] = json.dumps(dataclasses.asdict(cfg))
    config = uvicorn.Config("latentstore.serve.app:app_from_env", factory=True, host=cfg.host, port=cfg.port,
                            workers=cfg.workers, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on",
                            # the supervisor SIGKILLs a worker that misses a ping for this long; loading torch
                            # and the models on a busy machine takes far more than uvicorn's default 5 s
                            timeout_worker_healthcheck=120)
    sock = config.bind_socket()
    _announce(sock, cfg.host)  # each worker answers /readyz once its models are loaded
    Multiprocess(config, sockets=[sock]).run()
    return 0
