"""The service's listening sockets: bound and checked before anything else starts (a busy port is one line)."""
from __future__ import annotations

import errno
import socket

from ..errors import UsageError


def listen_socket(host: str, port: int, backlog: int = 2048, reuse_port: bool = False,
                  listen: bool = True) -> socket.socket:
    """A socket bound and listening on host:port (port 0: a free one), or UsageError: one line, exit 2.
    Listening at once holds the port while the models load; connections wait in the backlog meanwhile.
    `reuse_port`: SO_REUSEPORT, so each `--workers` process listens on its own socket of the port (below);
    `listen=False`: bound only (the supervisor's: it holds the port and names it, and is handed no connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and accepted ones
    # inherit it. Without it every answer's body waited for the client's delayed ACK of its headers (Nagle):
    # ~45 ms per request however fast the handler, which capped a latent upload at concurrency / 45 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free; a listener not
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        why = {errno.EADDRINUSE: "the port is in use (another server? pick another --port, or 0 for any)",
               errno.EADDRNOTAVAIL: "not an address of this machine",
               errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(e.errno, e.strerror or str(e))
        raise UsageError(f"cannot listen on {host}:{port}: {why}") from None
    return sock
