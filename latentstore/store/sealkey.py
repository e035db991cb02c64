"""The secret key of a store's keyed seal (StoreSchema.seal_hmac): where it comes from, and its rules.

Threat model, in two lines (verify's --help says the same):
  the plain seal (schema_sha256) catches accidents: damage, a half-written or hand-broken schema;
  the keyed seal (HMAC-SHA256) catches an editor: without the key an edited schema cannot be resealed.

A key is given by `--key-file PATH` (convert, merge, verify) or the environment variable
LATENTSTORE_SEAL_KEY (the key itself: CI secrets, the ingest service). Every writer of a schema
(convert, merge, the service's appends) seals with it when one is given; `verify` checks it.
"""
from __future__ import annotations

import contextlib
import os
import stat

from ..errors import UsageError

SEAL_KEY_ENV = "LATENTSTORE_SEAL_KEY"
MIN_KEY_BYTES = 16  # 128 bits at the least, as for the service's tokens
MAX_KEY_FILE_BYTES = 4096  # a key, not a payload
THREAT_MODEL = ("The plain seal (sha256) catches accidents: damage, a half-written or hand-broken schema. "
                "The keyed seal (HMAC-SHA256, --key-file or $LATENTSTORE_SEAL_KEY) catches an editor: "
                "without the key an edited store cannot be resealed.")

_GIVEN: list[bytes] = []  # the key a command was given (--key-file), innermost last; it overrides the environment


def _checked(key: bytes, where: str) -> bytes:
    key = key.strip()
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"{where}: a seal key must be at least {MIN_KEY_BYTES} bytes (got {len(key)})")
    return key


def read_key_file(path: str) -> bytes:
    """A key file's key: a private regular file (no group or world access), bounded, of at least 16 bytes."""
    from ..data.imageio import read_bounded

    def private(st: os.stat_result) -> None:  # the mode of the file read, not of whatever the path names later
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UsageError(f"--key-file {path}: is readable or writable by others (mode "
                             f"{stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    data = read_bounded(path, MAX_KEY_FILE_BYTES, UsageError, private)  # refuses FIFOs, devices, oversized files
    return _checked(data, f"--key-file {path}")


def seal_key() -> bytes | None:
    """The key schemas are sealed and checked with now: --key-file's, else $LATENTSTORE_SEAL_KEY's, else None."""
    if _GIVEN:
        return _GIVEN[-1]
    env = os.environ.get(SEAL_KEY_ENV)
    if env:
        return _checked(env.encode(), f"${SEAL_KEY_ENV}")
    return None


@contextlib.contextmanager
def sealing_with(key_file: str | None):
    """Within the block, seal and check with the key in `key_file` (None: the environment's, if any)."""
    if key_file is None:
        yield seal_key()
        return
    _GIVEN.append(read_key_file(key_file))
    try:
        yield _GIVEN[-1]
    finally:
        _GIVEN.pop()
