"""`latentstore verify`: re-read every byte a reader trusts, check every checksum, decode every sample.

Opening the store already refuses a schema that fails its own checksum or its bounds (store/validate.py).
Then: every recorded file checksum (shard files, codec weights, array metadata), every commit record's
seal, the layout's own structure, and every sample decoded; the count that decodes must equal the count
the schema claims. Each problem is one line naming the file or the sample.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import StoreError
from .reader import open_store
from .schema import CODEC_FILE, PARTS_DIR
from .remote import location_for
from .writer import INIT_MARKER, NOTES_FILE, check_seal, parse_record, sha256_file


def verify(path: str, progress=None) -> dict:
    """Returns {"ok", "errors", "notes", "samples", "files"}."""
    store = open_store(path)
    schema, backend = store.schema, store.backend
    errors: list[str] = []
    notes: list[str] = []
    loc = location_for(path)
    for rel, want in sorted(schema.checksums.items()):
        got = _sha256(loc, rel)
        if got is None:
            errors.append(f"{backend.file_where(rel)}: file {rel} is missing")
        elif got != want:
            errors.append(f"{backend.file_where(rel)}: checksum mismatch in {rel}")
    if not loc.exists(CODEC_FILE):
        errors.append(f"{CODEC_FILE} is missing")
    else:
        if CODEC_FILE not in schema.checksums:
            notes.append(f"schema v{schema.schema_version} records no checksum of {CODEC_FILE} or the array metadata, "
                         "nor of itself: those are checked by loading them and by cross-checks")
        errors += _codec_matches(store)
    errors += _check_records(path, schema.num_shards)
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


def _sha256(loc, rel: str) -> str | None:
    """sha256 of a store file (local: streamed; remote: one GET), None when it is missing."""
    if loc.local:
        f = os.path.join(loc.url, rel)
        return sha256_file(f) if os.path.exists(f) else None
    try:
        return hashlib.sha256(loc.read(rel)).hexdigest()
    except FileNotFoundError:
        return None


def _check_records(path: str, num_shards: int) -> list[str]:
    """The records `merge` and `--resume` trust: each must pass its own seal (stores written before seals have none)."""
    loc = location_for(path)
    if getattr(loc, "http", False):  # no listing over http(s): the records a complete store has, by name
        want = [INIT_MARKER, NOTES_FILE] + [f"shard-{k:06d}.json" for k in range(num_shards)]
        names = sorted(n for n in want if loc.exists(f"{PARTS_DIR}/{n}"))
    else:
        names = sorted(n.split("/", 1)[1] for n in loc.list(PARTS_DIR + "/") if n.count("/") == 1)
    errs = []
    if INIT_MARKER in names:
        try:
            parse_record(loc.read(f"{PARTS_DIR}/{INIT_MARKER}"), path, INIT_MARKER)  # the schema's own checksum (v2) and bounds
        except StoreError as e:
            errs.append(f"{PARTS_DIR}/{INIT_MARKER}: {str(e).split(': ', 1)[-1]}")
    for f in names:
        if not ((f.startswith("shard-") and f.endswith(".json")) or f == NOTES_FILE):
            continue
        try:
            rec = json.loads(loc.read(f"{PARTS_DIR}/{f}"))
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
