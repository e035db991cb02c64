"""`latentstore verify`: re-read every byte a reader trusts, check every checksum, decode every sample.

Opening the store already refuses a schema that fails its own checksum or its bounds (store/validate.py).
Then: every recorded file checksum (shard files, codec weights, array metadata), every commit record's
seal, the layout's own structure, and every sample decoded; the count that decodes must equal the count
the schema claims. Each problem is one line naming the file or the sample.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import StoreError
from .reader import open_store
from .schema import CODEC_FILE, PARTS_DIR
from .writer import INIT_MARKER, NOTES_FILE, check_seal, read_record, sha256_file


def verify(path: str, progress=None) -> dict:
    """Returns {"ok", "errors", "notes", "samples", "files"}."""
    store = open_store(path)
    schema, backend = store.schema, store.backend
    errors: list[str] = []
    notes: list[str] = []
    for rel, want in sorted(schema.checksums.items()):
        f = os.path.join(path, rel)
        if not os.path.exists(f):
            errors.append(f"{backend.file_where(rel)}: file {rel} is missing")
        elif sha256_file(f) != want:
            errors.append(f"{backend.file_where(rel)}: checksum mismatch in {rel}")
    if not os.path.exists(os.path.join(path, CODEC_FILE)):
        errors.append(f"{CODEC_FILE} is missing")
    else:
        if CODEC_FILE not in schema.checksums:
            notes.append(f"schema v{schema.schema_version} records no checksum of {CODEC_FILE} or the array metadata, "
                         "nor of itself: those are checked by loading them and by cross-checks")
        errors += _codec_matches(store)
    errors += _check_records(path)
    structural = backend.check()
    errors += structural
    n = 0
    if structural:  # the index cannot be trusted: name what still decodes, container by container
        n = backend.decode_readable(errors)
    else:
        n = _decode_all(store, errors, progress)
    if n != schema.num_samples:
        errors.append(f"{n} samples decode, the schema claims {schema.num_samples}")
    return {"ok": not errors, "errors": errors, "notes": notes, "samples": n, "files": len(schema.checksums)}


def _decode_all(store, errors: list[str], progress) -> int:
    L, n = store.schema.codec["L"], 0
    try:
        count = len(store)
    except StoreError as e:
        errors.append(str(e))
        return 0
    for i in range(count):
        try:
            sym = store.symbols(i, checked=True)
            if sym.max(initial=0) >= L:
                raise ValueError("symbols out of range")
            n += 1
        except Exception as e:  # any failure to decode is a finding, with the sample named
            errors.append(f"{store.backend.where(int(store.slots[i]))}: does not decode ({str(e).splitlines()[0][:200]})")
        if progress:
            progress(1)
    return n


def _check_records(path: str) -> list[str]:
    """The records `merge` and `--resume` trust: each must pass its own seal (stores written before seals have none)."""
    d = os.path.join(path, PARTS_DIR)
    errs = []
    init = os.path.join(d, INIT_MARKER)
    if os.path.exists(init):
        try:
            read_record(init, path)  # the schema's own checksum (v2) and bounds
        except StoreError as e:
            errs.append(f"{PARTS_DIR}/{INIT_MARKER}: {str(e).split(': ', 1)[-1]}")
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if not ((f.startswith("shard-") and f.endswith(".json")) or f == NOTES_FILE):
            continue
        try:
            with open(os.path.join(d, f)) as fh:
                rec = json.load(fh)
            if isinstance(rec, dict) and "sha256" in rec:
                check_seal(rec, f"{PARTS_DIR}/{f}")
        except (OSError, ValueError) as e:
            errs.append(f"{PARTS_DIR}/{f}: unreadable commit record ({str(e).splitlines()[0][:120]})")
        except StoreError as e:
            errs.append(str(e))
    return errs


def _codec_matches(store) -> list[str]:
    """The schema's copy of the codec's tables and centres must be the embedded codec's own."""
    try:
        codec = store.codec  # loads the weights, checks their hash against the file's and the schema's
    except Exception as e:
        return [f"{CODEC_FILE}: {str(e).splitlines()[0][:200]}"]
    c = store.schema.codec
    errs = []
    if (c["C"], c["L"]) != (codec.cfg.C, codec.cfg.L):
        errs.append(f"schema's codec C, L = {c['C']}, {c['L']}; the embedded codec's {codec.cfg.C}, {codec.cfg.L}")
    elif (codec.freqs != np.asarray(c["freqs"])).any():
        errs.append("schema's codec.freqs differ from the embedded codec's frequency table")
    elif not np.allclose(codec.centres(), np.asarray(c["centres"], dtype=np.float32), rtol=0, atol=1e-6):
        errs.append("schema's codec.centres differ from the embedded codec's centres")
    return errs
