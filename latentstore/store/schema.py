"""The one schema shared by the store writer and reader (FFCV-style: self-describing, versioned).

Zarr stores keep it in the root group's attributes under "latentstore"; WebDataset stores in
`schema.json` beside the shards. The codec's weights travel in `codec.safetensors`, so a store
decodes to pixels from the store alone.

Version 2 (this writer) adds `schema_sha256`, a checksum of the schema itself, and checksums of
every file a reader trusts (codec weights and array metadata included). Version 1 stores are
still read; `verify` says what their older schema does not cover (and `verify --strict` refuses them).

Two seals: `schema_sha256`, a plain checksum anyone can recompute, catches accidents (a damaged or
half-written schema); `seal_hmac`, an HMAC-SHA256 with a secret key (store/sealkey.py), present when the
writer was given one, catches an editor: an edited schema cannot be resealed without the key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field

from ..errors import StoreError, UsageError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("zarr", "wds")
CODEC_FILE = "codec.safetensors"
PARTS_DIR = "_parts"
SCHEMA_FILE = "schema.json"  # WebDataset stores; Zarr stores keep the schema in zarr.json's attributes


@dataclass
class StoreSchema:
    kind: str  # "zarr" | "wds"
    codec: dict  # id, weights_hash, C, L, centres (L floats), freqs (C x L ints)
    policy: dict  # mode: "fixed" | "native"; size: S (fixed); how images were resized / padded
    shard_size: int  # input slots per shard: shard k holds inputs [k*S, (k+1)*S)
    num_slots: int  # inputs listed (valid + rejected): the length of the zarr arrays
    label_names: list  # index -> class name
    inputs_sha256: str  # of the sorted input listing: a resume must see the same inputs
    name: str = "latents"  # WebDataset shard prefix: NAME-000000.tar
    has_masks: bool = False  # per-sample segmentation masks stored beside the latents
    complete: bool = False  # True once every shard is committed and totals are written
    num_samples: int = 0  # valid samples stored
    num_rejected: int = 0  # inputs skipped, each with a reason in `rejects`
    rejects: list = field(default_factory=list)  # [{"path", "reason"}]
    notes: list = field(default_factory=list)  # findings that are not inputs, e.g. an empty class folder
    totals: dict = field(default_factory=dict)  # source_bytes, source_pixels, stored_pixels, latent_bytes, entropy_bits
    checksums: dict = field(default_factory=dict)  # relative file path -> sha256, for every file a reader trusts
    format: str = "latentstore"
    schema_version: int = SCHEMA_VERSION
    created: str = ""  # ISO date of creation
    latentstore_version: str = ""  # the writer's package version
    schema_sha256: str = ""  # sha256 of this schema's canonical JSON without the two seals (v2)
    seal_hmac: str = ""  # HMAC-SHA256 of the same JSON under the writer's seal key; "" when written without one

    def _canonical(self) -> bytes:
        d = asdict(self)
        d.pop("schema_sha256")
        d.pop("seal_hmac")  # not in either seal: stores written before keyed seals have no such field
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @property
    def num_shards(self) -> int:
        return (self.num_slots + self.shard_size - 1) // self.shard_size

    def content_sha256(self) -> str:
        return hashlib.sha256(self._canonical()).hexdigest()

    def keyed_seal(self, key: bytes) -> str:
        return hmac.new(key, self._canonical(), hashlib.sha256).hexdigest()

    def seal_matches(self, key: bytes) -> bool:
        return bool(self.seal_hmac) and hmac.compare_digest(self.seal_hmac, self.keyed_seal(key))

    def to_dict(self) -> dict:
        """The dict written to disk, sealed with its own checksum, and with the seal key when the writer has one."""
        from .sealkey import seal_key
        key = seal_key()
        self.seal_hmac = self.keyed_seal(key) if key else ""
        self.schema_sha256 = self.content_sha256()
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "store") -> "StoreSchema":
        from .validate import validate_schema
        if not isinstance(d, dict) or d.get("format") != "latentstore":
            raise StoreError(f"{where}: not a latentstore store (no latentstore schema)")
        v = d.get("schema_version")
        if v not in READABLE_VERSIONS:
            raise StoreError(f"{where}: schema version {v} is not supported by this reader (it knows "
                             f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade latentstore")
        if d.get("kind") not in KINDS:
            raise StoreError(f"{where}: unknown store kind {d.get('kind')!r} (known: {', '.join(KINDS)})")
        missing = [k for k in ("codec", "policy", "shard_size", "num_slots", "label_names") if k not in d]
        if missing:
            raise StoreError(f"{where}: schema is missing {', '.join(missing)}")
        if not isinstance(d["codec"], dict):
            raise StoreError(f"{where}: schema's codec entry is not a mapping")
        cmissing = [k for k in ("id", "weights_hash", "C", "L", "centres", "freqs") if k not in d["codec"]]
        if cmissing:
            raise StoreError(f"{where}: schema's codec entry is missing {', '.join(cmissing)}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            schema = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise StoreError(f"{where}: malformed schema ({e})") from None
        if v >= 2 and schema.schema_sha256 != schema.content_sha256():
            raise StoreError(f"{where}: the schema's checksum does not match its content (the schema was changed "
                             "or damaged after it was written)")
        validate_schema(schema, where)
        return schema


def detect_kind(path: str) -> str:
    from .remote import is_remote, location_for
    if is_remote(path):
        loc = location_for(path)
        if loc.exists("zarr.json"):
            return "zarr"
        if loc.exists(SCHEMA_FILE):
            return "wds"
        raise describe_missing_remote(path)
    if os.path.exists(os.path.join(path, "zarr.json")):
        return "zarr"
    if os.path.exists(os.path.join(path, SCHEMA_FILE)):
        return "wds"
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such store")
    raise StoreError(f"{path}: not a latentstore store (neither zarr.json nor {SCHEMA_FILE})")


MAX_METADATA_BYTES = 256 << 20  # a schema, commit record or array metadata file: far above any real one
                               # (ImageNet's schema is ~5 MB), low enough that /dev/zero cannot exhaust memory


def read_metadata(loc, rel: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bounded read of a store's metadata file (local folder or object-store prefix): a special file (a
    FIFO, a device, a link to /dev/zero) or one over `limit` is a one-line StoreError; FileNotFoundError when
    it is absent. Every reader of a schema, commit record or array metadata goes through here."""
    if loc.local:
        from ..data.imageio import read_bounded
        p = loc.path(rel)
        if not os.path.lexists(p):
            raise FileNotFoundError(p)
        return read_bounded(p, limit, StoreError)
    size = loc.size(rel)
    if size is None:
        raise FileNotFoundError(rel)
    if size > limit:
        raise StoreError(f"{loc.url}/{rel}: {size:,} bytes is over the {limit:,}-byte metadata limit")
    data = loc.read(rel)
    if len(data) > limit:  # replaced since it was sized
        raise StoreError(f"{loc.url}/{rel}: grew past the {limit:,}-byte metadata limit while being read")
    return data


def read_schema(path: str) -> StoreSchema:
    from .remote import location_for
    kind = detect_kind(path)
    loc = location_for(path)
    try:
        if kind == "zarr":
            d = json.loads(read_metadata(loc, "zarr.json")).get("attributes", {}).get("latentstore", {})
        else:
            d = json.loads(read_metadata(loc, SCHEMA_FILE))
    except (OSError, ValueError, AttributeError) as e:
        raise StoreError(f"{path}: unreadable schema ({str(e).splitlines()[0]})") from None
    return StoreSchema.from_dict(d, path)


def listing_state(loc) -> tuple[bool, bool]:
    """An object-store prefix: (has content besides lock objects, looks like a latentstore store being written)."""
    from .lock import LOCK_DIR
    names = [n for n in loc.list() if not n.startswith(LOCK_DIR + "/")]
    ours = any(n.startswith(PARTS_DIR + "/") or n == SCHEMA_FILE for n in names)
    if not ours and "zarr.json" in names:
        try:
            ours = "latentstore" in json.loads(read_metadata(loc, "zarr.json")).get("attributes", {})
        except (ValueError, FileNotFoundError):
            ours = False
    return bool(names), ours


def describe_missing_remote(url: str) -> Exception:
    """The error for a remote prefix with no schema object: no such store, or a half-written one."""
    from .remote import location_for
    loc = location_for(url)
    if getattr(loc, "http", False):
        return UsageError(f"{url}: no such store (neither zarr.json nor {SCHEMA_FILE} there)")
    content, ours = listing_state(loc)
    if not content:
        return UsageError(f"{url}: no such store")
    if ours:
        return StoreError(f"{url}: a half-written remote store (its creation was interrupted before its metadata "
                          "was uploaded); run `latentstore convert --resume` to finish it")
    return StoreError(f"{url}: not a latentstore store (neither zarr.json nor {SCHEMA_FILE})")
