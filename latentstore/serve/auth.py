"""Bearer tokens with a scope: `--token-file` holds lines "TOKEN read|write" ('#' comments, blank lines ignored).

A write token may also read. Every request but GET /healthz needs `Authorization: Bearer TOKEN` when a
token file is given: none or an unknown token is 401, a read token on an upload is 403.
"""
from __future__ import annotations

import hmac
import os

from ..errors import UsageError
from .uploads import Rejected

SCOPES = ("read", "write")


def load_tokens(path: str) -> dict[str, str]:
    if not os.path.isfile(path):
        raise UsageError(f"--token-file {path}: no such file")
    tokens = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in SCOPES:
                raise UsageError(f"--token-file {path} line {n}: expected 'TOKEN read' or 'TOKEN write'")
            tokens[parts[0]] = parts[1]
    if not tokens:
        raise UsageError(f"--token-file {path}: no tokens")
    return tokens


def check_token(tokens: dict[str, str] | None, authorization: str | None, need: str) -> None:
    """Rejected(401 / 403) unless the header carries a token with scope `need` (write covers read)."""
    if tokens is None:
        return
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Rejected(401, "missing bearer token (Authorization: Bearer TOKEN)", "unauthorized",
                       {"WWW-Authenticate": "Bearer"})
    given = authorization[7:].strip()
    scope = None
    for tok, sc in tokens.items():  # compare all, in constant time each
        if hmac.compare_digest(tok.encode(), given.encode()):
            scope = sc
    if scope is None:
        raise Rejected(401, "unknown token", "unauthorized", {"WWW-Authenticate": "Bearer"})
    if need == "write" and scope != "write":
        raise Rejected(403, "this token may only read", "forbidden")
