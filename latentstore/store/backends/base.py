"""What every store backend provides, and the bitstream decoding they share.

A backend is one on-disk layout (Zarr fixed-size, Zarr native-size, WebDataset). It alone knows its
file and member names: the writer calls `create` and `write_shard`, the reader calls the per-slot
methods, `verify` calls `check` and `where`. Slots are global input positions (see store.writer);
a backend reports which slots hold a sample (`slots`) and reads any of them by position.
"""
from __future__ import annotations

import numpy as np

from ...codec import bitstream as bs
from ...codec.entropy import coder_for_version
from ...errors import BitstreamError, StoreError
from ..coders import lane_coder
from ..schema import StoreSchema


class CorruptSampleError(StoreError):
    """A sample whose bytes fail their checksum, or whose rANS lanes do not decode exactly: never returned as
    data. The message names the store, the shard and the sample; `slot` is the sample's slot (None when a whole
    shard is unreadable). Training's `skip_corrupt` skips exactly these; everything else stops a run."""

    def __init__(self, message: str, slot: int | None = None):
        super().__init__(message)
        self.slot = slot


def store_coder(schema: StoreSchema) -> str:
    """The entropy coder of a store's latents (stores written before bitstream v2 name none: v1's)."""
    return schema.codec.get("coder", "latentstore.ans")


_ARRAYS: dict = {}  # id(list) -> (the list, its array): readers ask for a store's tables once per sample


def _as_array(values, dtype) -> np.ndarray:
    """np.asarray of a schema's nested list (or a compact table, coders.tables_from_json), cached while that
    value lives (1,344 numbers took 130 us a call)."""
    hit = _ARRAYS.get(id(values))
    if hit is None or hit[0] is not values:
        if len(_ARRAYS) > 64:
            _ARRAYS.clear()
        from ..coders import tables_from_json
        hit = _ARRAYS[id(values)] = (values, np.asarray(tables_from_json(values), dtype=dtype))
        hit[1].setflags(write=False)
    return hit[1]


def schema_tables(schema: StoreSchema, coder_id: str):
    """The coding tables a store's schema holds for `coder_id` (v2, v3: fitted to the store's own symbols)."""
    if coder_id == "latentstore.ans":
        return np.asarray(schema.codec["freqs"], dtype=np.int64)
    lc = lane_coder(coder_id)
    if lc is not None and lc.tables_field in schema.codec:
        return _as_array(schema.codec[lc.tables_field], np.uint16)
    raise StoreError(f"store has no tables for entropy coder {coder_id!r}")


def _named(where, slot) -> str:
    """`where` is the name itself, or a function of the slot giving it (built only for an error message: the
    hot path formats no string)."""
    return where(slot) if callable(where) else where


def checked_payload(schema: StoreSchema, data: bytes, where, slot: int | None = None):
    """A complete bitstream of this store's codec -> (header, coder, tables, payload), its weights hash and CRC
    checked; CorruptSampleError naming `where` (the store, shard and sample: a string, or slot -> string)."""
    try:
        header, payload = bs.unpack(data)
        if header.weights_hash != schema.codec["weights_hash"]:
            raise BitstreamError(f"made by the codec with weights {header.weights_hash}, "
                                 f"not the store's {schema.codec['id']}")
        coder = coder_for_version(header.version)
        tables = schema_tables(schema, coder.id)
        bs.check_crc(header, payload, tables)
        return header, coder, tables, payload
    except BitstreamError as e:
        raise CorruptSampleError(f"{_named(where, slot)}: {e}", slot) from None


def decode_bitstream(schema: StoreSchema, data: bytes, where, slot: int | None = None) -> np.ndarray:
    """A complete bitstream of this store's codec -> (C, h, w) uint8 symbols (every lane checked to end exactly),
    or CorruptSampleError naming `where`."""
    header, coder, tables, payload = checked_payload(schema, data, where, slot)
    try:
        return coder.decode(payload, tables, header.shape)
    except (BitstreamError, ValueError) as e:
        raise CorruptSampleError(f"{_named(where, slot)}: {e}", slot) from None


class Backend:
    """Base of the three layouts. Subclasses set `kind`/`modes` and implement the methods below."""

    kind: str = ""  # the schema's `kind` this backend writes
    modes: tuple = ()  # the schema policy modes it serves ("fixed", "native")

    def __init__(self, root: str, schema: StoreSchema):
        self.root, self.schema = root, schema
        self._blobs = None

    @property
    def loc(self):
        """Where the store's files are (a local folder or an object-store prefix: store.remote)."""
        from ..remote import location_for
        return location_for(self.root)

    @property
    def blobs(self):
        """A remote store's shard cache: whole shards, fetched in parallel, bounded (remote.blobs), each checked
        against the schema's sha256 when it is fetched (from the network or the disk cache)."""
        if self._blobs is None:
            from .checked_cache import CheckedShardCache
            self._blobs = CheckedShardCache(self.loc, self.schema.schema_sha256 or self.schema.inputs_sha256,
                                            checksums=self.schema.checksums, store=self.root)
        return self._blobs

    # ---- writing
    def create(self) -> None:
        """Lay out an empty store (arrays, folders); the writer adds the codec, parts and schema."""
        raise NotImplementedError

    def write_schema(self, schema: StoreSchema) -> None:
        raise NotImplementedError

    def metadata_files(self) -> list[str]:
        """Files written once at creation that a reader trusts (array metadata), relative to the root."""
        return []

    def write_shard(self, k: int, slots: range, samples: list) -> list[str]:
        """Write shard k's samples (sorted by slot); returns the files written, for checksums."""
        raise NotImplementedError

    def payload_accounting(self, k: int, samples: list) -> tuple[int, int]:
        """(entropy-coded payload bytes, index bytes) of shard k just written; the rest of its latent
        files is per-sample container (headers, checksums, tar padding)."""
        return sum(bs.payload_size(s.bitstream) for s in samples), 0

    def is_payload(self, rel: str) -> bool:
        """Does this store file (relative path) hold latent payload (vs labels, metadata)?"""
        raise NotImplementedError

    # ---- reading
    def slots(self) -> np.ndarray:
        """Slots that hold a sample, ascending."""
        raise NotImplementedError

    def labels(self, slots: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bitstream(self, slot: int) -> bytes | None:
        """The sample's complete bitstream, where the layout stores one (None for fixed-size Zarr)."""
        return None

    def symbols(self, slot: int, checked: bool = False) -> np.ndarray:
        """(C, h, w) uint8. checked=True takes the path that checks every checksum on the way."""
        return decode_bitstream(self.schema, self.bitstream(slot), self.sample_where, slot)

    def payload(self, slot: int) -> bytes:
        """The sample's entropy-coded payload without its container (v2, v3: what the GPU decoder reads), its CRC
        checked here, on the CPU: the GPU decoder checks the lanes."""
        return checked_payload(self.schema, self.bitstream(slot), self.sample_where, slot)[3]

    def symbols_batch(self, slots) -> np.ndarray | list[np.ndarray]:
        """Symbols of several slots: v2/v3 bitstreams of one shape in one batched decode call (each checked first),
        others one by one. Layouts with a faster path (fixed-size Zarr's shard reader) override this."""
        slots = [int(s) for s in slots]
        if not slots or lane_coder(store_coder(self.schema)) is None:
            return [self.symbols(s) for s in slots]
        parts = [checked_payload(self.schema, self.bitstream(s), self.sample_where, s) for s in slots]
        header, coder, tables, _ = parts[0]
        if any(p[0].shape != header.shape or p[1] is not coder for p in parts):  # native sizes, mixed versions
            return [self.symbols(s) for s in slots]
        try:
            return coder.decode_batch([p[3] for p in parts], tables, header.shape)
        except (BitstreamError, ValueError):  # a damaged payload: decode one by one, so the error names its sample
            return [self.symbols(s) for s in slots]

    def mask(self, slot: int) -> np.ndarray | None:
        return None

    def meta(self, slot: int) -> dict:
        """{'size': [H, W] of the original, 'source': ..., 'slot': slot}."""
        raise NotImplementedError

    # ---- verification
    def check(self) -> list[str]:
        """Structural problems (unreadable containers), one line each."""
        return []

    def decode_readable(self, errors: list[str]) -> int:
        """After `check` found damage: decode what still can be read, name what cannot; returns the count."""
        return 0

    def where(self, slot: int) -> str:
        """A readable name for a sample, for error messages."""
        raise NotImplementedError

    def sample_where(self, slot: int) -> str:
        """The store, shard and sample, for the one-line error of a read."""
        return f"{self.root}: {self.where(slot)}"

    def file_where(self, rel: str) -> str:
        """A readable name for a store file's shard."""
        return rel
