"""Bearer tokens with a scope: `--token-file` holds lines "TOKEN read|write" ('#' comments, blank lines ignored).

A write token may also read. Every request but GET /healthz needs `Authorization: Bearer TOKEN` when a
token file is given: none or an unknown token is 401, a read token on an upload is 403.

The file is a secret, so the server refuses to start (one line, exit 2) unless it is a regular file that only
its owner may read or write (mode 0600 or stricter, as ssh asks of a private key), is UTF-8 text, and every
token is at least MIN_TOKEN_CHARS visible ASCII characters (a short token can be guessed over the network).
"""
from __future__ import annotations

import hmac
import os
import stat

from ..errors import BadImageError, UsageError
from .uploads import Rejected

SCOPES = ("read", "write")
MIN_TOKEN_CHARS = 16  # 16 random characters of a 64-symbol alphabet: 96 bits
MAX_TOKEN_FILE_BYTES = 1 << 16  # a token file is a few lines; more is a wrong path (a log, a device)


def _read_private(path: str) -> str:
    from ..data.imageio import read_bounded  # the one bounded reader: regular files only, FIFOs cannot hang it
    if not os.path.lexists(path):
        raise UsageError(f"--token-file {path}: no such file")

    def private(st: os.stat_result) -> None:  # the mode of the file read (fstat), not of a path checked before
        if st.st_mode & 0o077:
            raise UsageError(f"--token-file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or "
                             f"write it; make it private (chmod 600 {path})")
    try:
        data = read_bounded(path, MAX_TOKEN_FILE_BYTES, check_stat=private)
    except BadImageError as e:  # its reasons ("is a directory", "over the ... limit") are about the file
        raise UsageError(f"--token-file {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--token-file {path}: not UTF-8 text (byte {e.start})") from None


def load_tokens(path: str) -> dict[str, str]:
    """{token: scope} from a private token file, or UsageError (exit 2) with the one-line reason."""
    tokens: dict[str, str] = {}
    for n, line in enumerate(_read_private(path).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in SCOPES:
            raise UsageError(f"--token-file {path} line {n}: expected 'TOKEN read' or 'TOKEN write'")
        tok = parts[0]
        if not all(33 <= ord(ch) < 127 for ch in tok):
            raise UsageError(f"--token-file {path} line {n}: a token must be visible ASCII characters")
        if len(tok) < MIN_TOKEN_CHARS:
            raise UsageError(f"--token-file {path} line {n}: a token of {len(tok)} characters is too short (at "
                             f"least {MIN_TOKEN_CHARS}; `python -c 'import secrets; print(secrets.token_urlsafe(24))'` "
                             "makes one)")
        if tokens.get(tok, parts[1]) != parts[1]:
            raise UsageError(f"--token-file {path} line {n}: the same token with two scopes")
        tokens[tok] = parts[1]
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
    given = authorization[7:].strip().encode("utf-8", "replace")
    scope = None
    for tok, sc in tokens.items():  # compare all, in constant time each
        if hmac.compare_digest(tok.encode(), given):
            scope = sc
    if scope is None:
        raise Rejected(401, "unknown token", "unauthorized", {"WWW-Authenticate": "Bearer"})
    if need == "write" and scope != "write":
        raise Rejected(403, "this token may only read", "forbidden")
