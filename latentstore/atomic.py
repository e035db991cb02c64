"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every writer in the package goes through these two functions. The temporary name carries the pid,
so two processes never share one; `remove_stale_temps` sweeps what a killed process left behind.
"""
from __future__ import annotations

import json
import os

from .errors import LatentstoreError

TMP_MARK = ".tmp"  # temporaries are named f"{path}{TMP_MARK}{pid}"


def write_bytes_atomic(path: str, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` through a temporary file and a rename; OSError becomes a one-line error."""
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise LatentstoreError(f"{path}: cannot write ({e.strerror or e})") from None


def write_json_atomic(obj, path: str) -> None:
    """JSON with sorted keys (same object, same bytes), written atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def remove_stale_temps(directory: str) -> list[str]:
    """Delete `*.tmpPID` files in `directory` (recursively) whose process is gone; returns what was removed."""
    removed = []
    for root, _, files in os.walk(directory):
        for f in files:
            head, sep, pid = f.rpartition(TMP_MARK)
            if not sep or not head or not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                os.remove(os.path.join(root, f))
                removed.append(os.path.join(root, f))
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
