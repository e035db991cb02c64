"""`verify`'s cross-checks: the schema against what is on disk, and against the commit records it was built from.

A schema that passes its own seal may still not describe the store: an edit resealed with the plain
sha256, or a store cut short with its shards left in place. Each check below is one line per finding:
  - files on disk that the schema does not cover (a tar, chunk or sample beyond it);
  - commit records that are missing, beyond the schema's shards, or that disagree with it (checksums,
    sample counts, rejects);
  - the creation record (`_parts/INIT.json`) that disagrees with the schema's creation fields (codec,
    coder, policy, shard size, label names, version, ...).
What cannot be checked (an http(s) store cannot be listed; a store without records) is returned as
`unverified`, which `verify --strict` turns into failures.
"""
from __future__ import annotations

import json

from ..errors import StoreError
from .lock import LOCK_DIR
from .records import INIT_MARKER, NOTES_FILE, check_seal, parse_record
from .schema import CODEC_FILE, PARTS_DIR, SCHEMA_FILE, StoreSchema, read_metadata

SERVICE_STATE_DIR = "_serve"  # the ingest service's intake and journal (serve/service.py): not store content
# creation fields: set once when the store is created, copied by `finalize` from INIT.json into the schema
# (the service's growth rewrites INIT.json's num_slots and label_names with the schema's)
CREATION_FIELDS = ("format", "schema_version", "kind", "codec", "policy", "shard_size", "num_slots", "label_names",
                   "inputs_sha256", "name", "has_masks")
MAX_LISTED = 10  # findings of one kind named before the rest are counted


def _capped(lines: list[str], what: str) -> list[str]:
    return lines if len(lines) <= MAX_LISTED else lines[:MAX_LISTED] + [f"... and {len(lines) - MAX_LISTED} more {what}"]


def read_records(loc, path: str, num_shards: int, skip=()):
    """(errors, INIT's schema or None, {shard: record}, record names present). `skip`: files already reported."""
    if getattr(loc, "http", False):  # no listing over http(s): the records a complete store has, by name
        want = [INIT_MARKER, NOTES_FILE] + [f"shard-{k:06d}.json" for k in range(num_shards)]
        names = sorted(n for n in want if loc.exists(f"{PARTS_DIR}/{n}"))
    else:
        names = sorted(n.split("/", 1)[1] for n in loc.list(PARTS_DIR + "/") if n.count("/") == 1)
    errs, init, parts = [], None, {}
    for f in names:
        rel = f"{PARTS_DIR}/{f}"
        is_part = f.startswith("shard-") and f.endswith(".json")
        if (f != INIT_MARKER and f != NOTES_FILE and not is_part) or rel in skip:
            continue
        try:
            data = read_metadata(loc, rel)
            if f == INIT_MARKER:  # the schema's own checksum (v2) and bounds
                init = parse_record(data, path, INIT_MARKER)
                continue
            rec = json.loads(data)
            if isinstance(rec, dict) and "sha256" in rec:
                check_seal(rec, rel)
            if is_part:
                named = rec.get("shard") if isinstance(rec, dict) else None
                if not f[6:-5].isdigit() or named != int(f[6:-5]):
                    raise StoreError(f"{rel}: commit record names shard {named!r}")
                parts[int(f[6:-5])] = rec
        except (OSError, ValueError) as e:
            errs.append(f"{rel}: unreadable commit record ({str(e).splitlines()[0][:120]})")
        except StoreError as e:
            errs.append(f"{rel}: {str(e).split(': ', 1)[-1]}" if f == INIT_MARKER else str(e))
    return errs, init, parts, names


def files_beyond_schema(loc, schema: StoreSchema, metadata_files: list[str]) -> tuple[list[str], list[str]]:
    """Files on disk that no part of the schema accounts for: a tar, chunk or record beyond it."""
    if getattr(loc, "http", False):
        return [], ["an http(s) store cannot be listed: files beyond the schema (shards, chunks) were not looked for"]
    if not schema.checksums:
        return [], [f"schema v{schema.schema_version} records no file checksums: files beyond the schema "
                    "(shards, chunks) were not looked for"]
    known = set(schema.checksums) | set(metadata_files) | {CODEC_FILE, f"{PARTS_DIR}/{INIT_MARKER}",
                                                           f"{PARTS_DIR}/{NOTES_FILE}"}
    known.add("zarr.json" if schema.kind == "zarr" else SCHEMA_FILE)
    known |= {f"{PARTS_DIR}/shard-{k:06d}.json" for k in range(schema.num_shards)}
    not_content = (LOCK_DIR + "/", SERVICE_STATE_DIR + "/")
    extra = sorted(n for n in loc.list() if n not in known and not n.startswith(not_content))
    return _capped([f"{n}: on disk but not in the schema (a shard, chunk or record beyond what it describes)"
                    for n in extra], "files beyond the schema"), []


def records_match(schema: StoreSchema, init: StoreSchema | None, parts: dict, listed) -> tuple[list[str], list[str]]:
    """The schema against the commit records `finalize` built it from."""
    if listed is not None and not listed:
        return [], [f"the store has no commit records ({PARTS_DIR}/): the schema could not be checked against them"]
    errs: list[str] = []
    if init is None:
        errs.append(f"{PARTS_DIR}/{INIT_MARKER}: the creation record is missing")
    else:
        for f in CREATION_FIELDS:
            if getattr(init, f) != getattr(schema, f):
                errs.append(f"schema field {f} differs from the creation record's ({PARTS_DIR}/{INIT_MARKER})")
    missing = [k for k in range(schema.num_shards) if k not in parts]
    if missing:
        errs.append(f"{len(missing)} of {schema.num_shards} shards have no commit record (first: "
                    f"{PARTS_DIR}/shard-{missing[0]:06d}.json)")
    beyond = sorted(k for k in parts if k >= schema.num_shards)
    if beyond:
        errs.append(f"{len(beyond)} commit record(s) beyond the schema's {schema.num_shards} shards (first: "
                    f"{PARTS_DIR}/shard-{beyond[0]:06d}.json)")
    inside = [parts[k] for k in sorted(parts) if k < schema.num_shards]
    try:
        recorded = {**(init.checksums if init is not None else {}),
                    **{n: h for p in inside for n, h in p["checksums"].items()}}
        samples = sum(int(p["samples"]) for p in inside)
        rejects = [r for p in inside for r in p["rejects"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return errs + [f"a commit record is malformed ({type(e).__name__}: {str(e)[:80]})"], []
    bad = [f"{n}: the schema's checksum differs from its commit record's" for n in sorted(recorded)
           if n in schema.checksums and schema.checksums[n] != recorded[n]]
    bad += [f"{n}: checksum recorded at commit is missing from the schema" for n in sorted(recorded)
            if n not in schema.checksums]
    bad += [f"{n}: checksum in the schema is in no commit record" for n in sorted(schema.checksums)
            if n not in recorded]
    errs += _capped(bad, "checksum disagreements")
    if not missing and samples != schema.num_samples:
        errs.append(f"the commit records hold {samples} samples, the schema claims {schema.num_samples}")
    if not missing and rejects != schema.rejects:
        errs.append(f"the commit records list {len(rejects)} rejects, the schema {len(schema.rejects)} (or others)")
    return errs, []


def keyed_seal_problems(schema: StoreSchema, key: bytes | None) -> tuple[list[str], list[str]]:
    if key is None:
        return [], (["the schema carries a keyed seal, but no key was given (--key-file or $LATENTSTORE_SEAL_KEY): "
                     "it was not checked"] if schema.seal_hmac else [])
    if not schema.seal_hmac:
        return ["the schema carries no keyed seal (written without a key, or the seal was removed)"], []
    if not schema.seal_matches(key):
        return ["the schema's keyed seal does not match (edited after it was sealed, or sealed with another key)"], []
    return [], []
