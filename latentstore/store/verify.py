"""`latentstore verify`: re-read every byte a reader trusts, check every checksum, decode every sample."""
from __future__ import annotations

import os

from .reader import open_store
from .schema import CODEC_FILE
from .writer import sha256_file


def verify(path: str, progress=None) -> dict:
    """Checks every checksum and decodes every sample. Returns {"ok", "errors", "samples", "files"}."""
    store = open_store(path)
    schema, backend = store.schema, store.backend
    errors: list[str] = []
    for rel, want in sorted(schema.checksums.items()):
        f = os.path.join(path, rel)
        if not os.path.exists(f):
            errors.append(f"{backend.file_where(rel)}: file {rel} is missing")
        elif sha256_file(f) != want:
            errors.append(f"{backend.file_where(rel)}: checksum mismatch in {rel}")
    if not os.path.exists(os.path.join(path, CODEC_FILE)):
        errors.append(f"{CODEC_FILE} is missing")
    structural = backend.check()
    errors += structural
    n = 0
    if structural:  # the index cannot be trusted: name what still decodes, container by container
        n = backend.decode_readable(errors)
    else:
        L = schema.codec["L"]
        for i in range(len(store)):
            try:
                sym = store.symbols(i, checked=True)
                if sym.max(initial=0) >= L:
                    raise ValueError("symbols out of range")
                n += 1
            except Exception as e:  # any failure to decode is a finding, with the sample named
                errors.append(f"{backend.where(int(store.slots[i]))}: does not decode ({str(e).splitlines()[0][:200]})")
            if progress:
                progress(1)
    return {"ok": not errors, "errors": errors, "samples": n, "files": len(schema.checksums)}
