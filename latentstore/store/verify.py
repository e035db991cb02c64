"""`latentstore verify`: re-read every byte a reader trusts, check every checksum, decode every sample.

Opening the store already refuses a schema that fails its own checksum or its bounds (store/validate.py).
Then: no special file (FIFO, device, link to /dev/zero) anywhere in it, every recorded file checksum (shard
files, codec weights, array metadata), every commit record's seal, the schema against what is on disk and
against its commit records (store/crosscheck.py), the keyed seal when a key is given, the layout's own
structure, and every sample decoded; the count that decodes must equal the count the schema claims. Each
problem is one line naming the file or the sample. Every read is bounded (schema.read_metadata).
"""
from __future__ import annotations

import hashlib
import os
import stat

import numpy as np

from ..data.imageio import file_kind
from ..errors import StoreError
from .backends import CorruptSampleError
from .crosscheck import files_beyond_schema, keyed_seal_problems, read_records, records_match
from .reader import open_store
from .remote import location_for
from .schema import CODEC_FILE, PARTS_DIR, SCHEMA_VERSION
from .sealkey import seal_key
from .writer import sha256_file


def verify(path: str, progress=None, strict: bool = False, key: bytes | None = None) -> dict:
    """Returns {"ok", "errors", "notes", "samples", "files"}. Notes say what could not be verified (an older
    schema, an http store that cannot be listed); `strict` makes each of them a failure. `key`: the seal key
    to check the schema's keyed seal with (default: $LATENTSTORE_SEAL_KEY's, if set)."""
    store = open_store(path)  # the schema's bounded read, its own seal and its bounds
    schema, backend = store.schema, store.backend
    key = key if key is not None else seal_key()
    errors: list[str] = []
    loc = location_for(path)
    special = special_files(loc)
    errors += [f"{rel}: is {kind}, not a regular file" for rel, kind in sorted(special.items())]
    unverified = _coverage(schema, backend)
    for rel, want in sorted(schema.checksums.items()):
        if rel in special:
            continue
        try:
            got = _sha256(loc, rel)
        except StoreError as e:
            errors.append(str(e))
            continue
        if got is None:
            errors.append(f"{backend.file_where(rel)}: file {rel} is missing")
        elif got != want:
            errors.append(f"{backend.file_where(rel)}: checksum mismatch in {rel}")
    if not loc.exists(CODEC_FILE):
        errors.append(f"{CODEC_FILE} is missing")
    elif CODEC_FILE not in special:
        errors += _codec_matches(store)
    rec_errors, init, parts, listed = read_records(loc, path, schema.num_shards, skip=special)
    errors += rec_errors
    checks = [files_beyond_schema(loc, schema, backend.metadata_files()), keyed_seal_problems(schema, key)]
    if not rec_errors and not any(r.startswith(PARTS_DIR + "/") for r in special):  # else each unread record
        checks.append(records_match(schema, init, parts, listed))  # would only repeat itself as disagreements
    for found, missed in checks:
        errors += found
        unverified += missed
    if strict:  # what could not be verified is a failure, said once
        errors += [f"--strict: {u}" for u in unverified]
        unverified = []
    if special:  # a FIFO or a device in place of a shard would hang the decoder: nothing more is read
        errors.append("samples were not decoded: the store holds special files in place of its own")
        return _result(errors, unverified, 0, schema)
    n = 0
    try:  # a reader that checks what it reads may refuse a whole shard: one finding, the rest still checked
        structural = backend.check()
        errors += structural
        if structural:  # the index cannot be trusted: name what still decodes, container by container
            n = backend.decode_readable(errors)
        else:
            n = _decode_all(store, errors, progress)
    except StoreError as e:
        structural = [str(e)]
        errors.append(str(e))
    if n != schema.num_samples:
        errors.append(f"{n} samples decode, the schema claims {schema.num_samples}")
    if not structural:
        errors += _contents_match(store)
    return _result(errors, unverified, n, schema)


def _result(errors: list[str], notes: list[str], n: int, schema) -> dict:
    return {"ok": not errors, "errors": errors, "notes": notes, "samples": n, "files": len(schema.checksums)}


def _coverage(schema, backend) -> list[str]:
    """What this store's schema does not let verify check (notes; failures under --strict)."""
    out = []
    if schema.schema_version < SCHEMA_VERSION:
        out.append(f"schema v{schema.schema_version} is older than this writer's v{SCHEMA_VERSION}: it has no "
                   f"checksum of itself, nor of {CODEC_FILE} or the array metadata; those are checked by loading "
                   "them and by cross-checks (`latentstore recode` writes a current store)")
    elif not schema.checksums and schema.num_samples:
        out.append("the schema records no file checksums")
    else:
        uncovered = [f for f in [CODEC_FILE] + backend.metadata_files() if f not in schema.checksums]
        if uncovered:
            out.append(f"the schema records no checksum of {', '.join(uncovered)}")
    return out


def special_files(loc) -> dict[str, str]:
    """rel -> what it is, for every FIFO, device or socket in a local store (links followed: a link to /dev/zero
    is a device). Object stores hold only objects."""
    if not loc.local:
        return {}
    out = {}
    for d, dirs, files in os.walk(loc.url):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, name)
            try:
                mode = os.stat(p).st_mode
            except OSError as e:
                out[os.path.relpath(p, loc.url)] = f"unreadable ({e.strerror or e})"
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                out[os.path.relpath(p, loc.url).replace(os.sep, "/")] = file_kind(mode)
    return out


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
        except CorruptSampleError as e:  # already one line naming the store, shard and sample
            errors.append(str(e))
        except Exception as e:  # any failure to decode is a finding, with the sample named
            errors.append(f"{store.backend.where(int(store.slots[i]))}: does not decode ({str(e).splitlines()[0][:200]})")
        if progress:
            progress(1)
    return n


def _contents_match(store) -> list[str]:
    """What the samples themselves say about the schema: every label names a class, and the bitstreams were
    coded by the schema's entropy coder."""
    from ..codec import bitstream as bs
    from ..codec.entropy import coder_for_version
    from .backends import store_coder
    errs = []
    try:
        labels = store.labels
        if len(labels) and (labels.min() < -1 or labels.max() >= len(store.schema.label_names)):
            errs.append(f"labels run from {labels.min()} to {labels.max()}, the schema names "
                        f"{len(store.schema.label_names)} classes")
        data = store.bitstream(0) if len(store) else None
        if data is not None:
            coder = coder_for_version(bs.unpack(data)[0].version).id
            if coder != store_coder(store.schema):
                errs.append(f"the samples are coded with {coder}, the schema says {store_coder(store.schema)}")
    except Exception as e:  # already reported as a sample that does not decode
        errs.append(f"the samples could not be compared with the schema ({str(e).splitlines()[0][:160]})")
    return errs


def _sha256(loc, rel: str) -> str | None:
    """sha256 of a store file (local: streamed; remote: one GET), None when it is missing."""
    if loc.local:
        f = os.path.join(loc.url, rel)
        return sha256_file(f) if os.path.exists(f) else None
    try:
        return hashlib.sha256(loc.read(rel)).hexdigest()
    except FileNotFoundError:
        return None


def _codec_matches(store) -> list[str]:
    """The schema's copy of the codec's tables and centres must be the embedded codec's own."""
    try:
        codec = store.codec  # loads the weights, checks their hash against the file's and the schema's
    except Exception as e:
        return [f"{CODEC_FILE}: {str(e).splitlines()[0][:200]}"]
    c = store.schema.codec
    errs = []
    if c["id"] != codec.name:
        errs.append(f"schema's codec id {c['id']!r}; the embedded codec is {codec.name!r}")
    if (c["C"], c["L"]) != (codec.cfg.C, codec.cfg.L):
        errs.append(f"schema's codec C, L = {c['C']}, {c['L']}; the embedded codec's {codec.cfg.C}, {codec.cfg.L}")
    elif (codec.freqs != np.asarray(c["freqs"])).any():
        errs.append("schema's codec.freqs differ from the embedded codec's frequency table")
    elif not np.allclose(codec.centres(), np.asarray(c["centres"], dtype=np.float32), rtol=0, atol=1e-6):
        errs.append("schema's codec.centres differ from the embedded codec's centres")
    return errs
