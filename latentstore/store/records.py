"""The commit records a store is written with, wherever it lives: the creation record `_parts/INIT.json`,
one sealed record per committed shard, and the complete schema that `finalize` builds from them."""
from __future__ import annotations

import hashlib
import json
import os

from ..errors import StoreError, UsageError
from .schema import MAX_METADATA_BYTES, PARTS_DIR, StoreSchema, read_metadata

INIT_MARKER = "INIT.json"  # in _parts/: written last by the rank that creates the store
NOTES_FILE = "notes.json"  # in _parts/: conversion notes, folded into the schema by finalize


def seal(record: dict) -> dict:
    """A commit record with its own sha256, so `merge` can refuse a damaged one."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return {**body, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()}


def check_seal(record: dict, where: str) -> dict:
    if not isinstance(record, dict) or record.get("sha256") != seal(record)["sha256"]:
        raise StoreError(f"{where}: commit record fails its checksum (damaged); delete it and run "
                         "`latentstore convert --resume` to rewrite that shard")
    return record


def read_record(path: str, root: str) -> StoreSchema:
    from ..data.imageio import read_bounded
    data = read_bounded(path, MAX_METADATA_BYTES, StoreError)  # a FIFO or /dev/zero link: one line, no hang
    return parse_record(data, root, os.path.basename(path))


def parse_record(data: bytes, root: str, name: str) -> StoreSchema:
    """A schema record's bytes (INIT.json) -> StoreSchema, its checksum and bounds checked."""
    try:
        d = json.loads(data)
    except ValueError as e:
        raise StoreError(f"{root}/{PARTS_DIR}/{name}: unreadable ({str(e).splitlines()[0]})") from None
    return StoreSchema.from_dict(d, f"{root} ({name})")


def check_resumable(existing: StoreSchema, schema: StoreSchema, root: str) -> None:
    """A resumed (or another rank's) run must write what the store was created for."""
    if existing.codec.get("coder", "latentstore.ans") != schema.codec.get("coder", "latentstore.ans"):
        raise UsageError(f"cannot resume {root}: it was written with entropy coder "
                         f"{existing.codec.get('coder', 'latentstore.ans')}, this run asks for "
                         f"{schema.codec.get('coder')} (--bitstream)")
    for k in ("kind", "policy", "shard_size", "num_slots", "inputs_sha256", "label_names", "has_masks"):
        if getattr(existing, k) != getattr(schema, k):
            raise UsageError(f"cannot resume {root}: its {k} differs from this run's (different inputs or options)")
    if existing.codec["weights_hash"] != schema.codec["weights_hash"]:
        raise UsageError(f"cannot resume {root}: it was written by codec {existing.codec['id']} "
                         f"({existing.codec['weights_hash']}), not {schema.codec['id']} "
                         f"({schema.codec['weights_hash']})")


def complete_schema(schema: StoreSchema, parts: dict[int, dict], root: str) -> None:
    """The creation-time schema + every shard's commit record -> the complete schema (totals, checksums)."""
    missing = [k for k in range(schema.num_shards) if k not in parts]
    if missing:
        raise StoreError(f"{root}: {len(missing)} of {schema.num_shards} shards are not written yet "
                         f"(first missing: {missing[0]}); run the remaining ranks, or convert --resume")
    totals: dict = {}
    for p in parts.values():
        for key, v in p["totals"].items():
            totals[key] = totals.get(key, 0) + v
    schema.num_samples = sum(p["samples"] for p in parts.values())
    schema.rejects = [r for k in sorted(parts) for r in parts[k]["rejects"]]
    schema.num_rejected = len(schema.rejects)
    schema.totals = totals
    schema.checksums = {**schema.checksums,  # the codec and metadata files, from creation
                        **{name: h for k in sorted(parts) for name, h in parts[k]["checksums"].items()}}
    schema.complete = True


def read_parts_at(loc) -> dict[int, dict]:
    """shard -> its commit record, each checked against its own seal, from a store's Location (a local folder
    or an object-store prefix: store/remote/location.py)."""
    parts = {}
    for rel in sorted(loc.list(PARTS_DIR + "/")):
        f = rel.split("/", 1)[1]
        if not (f.startswith("shard-") and f.endswith(".json")):
            continue
        try:
            p = check_seal(json.loads(read_metadata(loc, rel)), rel)
        except (OSError, ValueError) as e:
            raise StoreError(f"{rel}: unreadable commit record ({str(e).splitlines()[0]})") from None
        if not f[6:-5].isdigit() or p.get("shard") != int(f[6:-5]):
            raise StoreError(f"{rel}: commit record names shard {p.get('shard')!r}")
        parts[p["shard"]] = p
    return parts
