"""List files (`path [label [mask]]` per line), read the same way by `convert` and by `latentstore upload`.

Blank lines and `#` comments are skipped; fields split on tabs when a line has one (paths with spaces), else on
whitespace; relative paths are taken from the list file's folder. Standard library only: the upload client
must start without numpy or torch.
"""
from __future__ import annotations

import os

from .errors import UsageError


def read_list_file(path: str, fields: tuple[str, ...]) -> list[list[str | None]]:
    """One row per entry, padded with None to len(fields); fields[0] and any field named "mask" are paths,
    made absolute. `fields` names the columns for the error message, e.g. ("path", "label", "mask")."""
    form = " ".join([fields[0]] + [f"[{f}" for f in fields[1:]]) + "]" * (len(fields) - 1)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a list file (expected text lines `{form}`)") from None
    rows = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts: list[str | None] = list(line.split("\t") if "\t" in line else line.split())
        if len(parts) > len(fields):
            raise UsageError(f"{path}:{n}: expected `{form}`, got {len(parts)} fields")
        parts += [None] * (len(fields) - len(parts))
        for i, name in enumerate(fields):
            if parts[i] is not None and (i == 0 or name == "mask") and not os.path.isabs(parts[i]):
                parts[i] = os.path.join(base, parts[i])
        rows.append(parts)
    if not rows:
        raise UsageError(f"{path}: list file names no images")
    return rows
