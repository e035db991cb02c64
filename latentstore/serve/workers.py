"""`serve --workers N`: a uvicorn worker process that listens on a SO_REUSEPORT socket of its own.

uvicorn's supervisor hands every worker the one socket it bound. Each worker's asyncio loop accepts up to its
backlog of connections per wake-up, so the first worker to wake took every waiting connection: with keep-alive
clients (32 connections, two workers) 3 runs of 5 sent every upload to one worker. With a socket per worker on
the same port (SO_REUSEPORT), the kernel spreads connections over the workers by their address hash.
server._run_workers installs this class as the supervisor's process class (module level: spawned workers
unpickle it by name).
"""
from __future__ import annotations

from uvicorn.supervisors.multiprocess import Process

from .sockets import listen_socket


class OwnSocketProcess(Process):
    """A uvicorn worker serving its own SO_REUSEPORT socket on the supervisor's host and port."""

    def target(self, sockets=None):  # runs in the worker process
        port = sockets[0].getsockname()[1]  # the supervisor's bound (not listening) socket names the port
        for s in sockets:
            s.close()
        super().target([listen_socket(self.config.host, port, reuse_port=True)])
