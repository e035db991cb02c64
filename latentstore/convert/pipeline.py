"""One-shot conversion: an image dataset -> an entropy-coded latent store.

Stages, overlapped with threads (DALI and torch release the GIL):
    reader thread : read bytes -> screen -> DALI decode + resize/crop (or Pillow + the same resize)
    main thread   : normalise -> encoder (bf16 on CUDA) -> fused symbols + histogram kernel -> host
    coder pool    : ANS entropy coding of each sample's bitstream (WebDataset and native Zarr)
    writer thread : shard files + the shard's part record, committed atomically
So decode of batch k+1, encode of batch k and the write of the previous shard run together.

Work is cut into shards of `shard_size` inputs (see store.writer): a rank takes shards
k = shard_id, shard_id + num_shards, ...; a resumed run skips committed shards and redoes the rest.
"""
from __future__ import annotations

import copy
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..codec.zoo import codec_file, load_codec
from ..device import autocast_for, resolve_device
from ..errors import BadImageError, UsageError
from ..store.lock import LOCK_DIR
from ..store.schema import StoreSchema
from ..store.writer import Sample, StoreWriter, finalize_store
from .decode import DaliImageStage, Screened, dali_error_reason, screen
from .sources import InputItem, list_inputs


@dataclass
class ConvertOptions:
    codec: str = "ls-c16"  # operating point name or codec file
    fmt: str = "zarr"  # zarr | wds
    size: int | None = 256  # fixed-size side S (multiple of 8); None = native size
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32  # images per encoder batch
    shard_size: int = 256  # inputs per shard (the unit of commit and of resume)
    resume: bool = False  # continue an interrupted conversion into an existing DST
    num_shards: int = 1  # world size of a rank-sharded conversion
    shard_id: int = 0  # this process's rank
    coder_threads: int = 4  # entropy-coding threads
    progress: bool = True  # show a progress bar
    max_shards: int = 0  # stop after this many shards (0: all); for benchmarks and tests
    max_file_mb: int = 256  # an input file (or tar member) larger than this is a reject, not a memory blow-up


@dataclass
class ConvertSummary:
    dst: str
    stored: int = 0  # samples written by this process
    rejected: int = 0
    rejects: list = field(default_factory=list)
    shards_written: int = 0
    shards_skipped: int = 0  # already committed (resume)
    wall_s: float = 0.0
    stage_s: dict = field(default_factory=dict)  # seconds per stage (decode, encode, code, write)
    finalized: bool = False
    schema: StoreSchema | None = None

    @property
    def images_per_s(self) -> float:
        return (self.stored + self.rejected) / self.wall_s if self.wall_s else 0.0

    def describe(self) -> str:
        """What `latentstore convert` prints: counts, speed, stages, the first rejects, then the store."""
        from ..store.info import format_info, info
        s = self
        lines = [f"converted      {s.stored:,} images stored, {s.rejected:,} rejected by this process in {s.wall_s:.1f} s "
                 f"({s.images_per_s:.1f} img/s); {s.shards_written} shards written, {s.shards_skipped} already done"]
        if s.stage_s:
            lines.append("stages (s)     " + ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items()))
        for r in s.rejects[:10]:
            lines.append(f"  rejected     {r['path']}: {r['reason']}")
        if len(s.rejects) > 10:
            lines.append(f"  ... and {len(s.rejects) - 10} more (see `latentstore info --json`)")
        if s.finalized:
            lines.append(format_info(info(s.dst)))
        else:
            lines.append("this rank is done; run `latentstore merge DST` once every rank has finished")
        return "\n".join(lines)


def resolve_rank(opts: ConvertOptions) -> tuple[int, int]:
    """--num-shards/--shard-id, else torchrun's RANK/WORLD_SIZE, else a single process."""
    world, rank = opts.num_shards, opts.shard_id
    if world == 1 and "WORLD_SIZE" in os.environ:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", 0))
    if world < 1:
        raise UsageError(f"--num-shards must be >= 1 (got {world})")
    if not 0 <= rank < world:
        raise UsageError(f"--shard-id {rank} must be in [0, {world})")
    return rank, world


def convert(src: str, dst: str, opts: ConvertOptions) -> ConvertSummary:
    t_start = time.time()
    if opts.fmt not in ("zarr", "wds"):
        raise UsageError(f"--format must be zarr or wds (got {opts.fmt!r})")
    if opts.size is not None and (opts.size < 8 or opts.size % 8):
        raise UsageError(f"--size must be a positive multiple of 8 (got {opts.size})")
    rank, world = resolve_rank(opts)
    codec = load_codec(opts.codec)
    listing = list_inputs(src)
    device = resolve_device(opts.device)
    if rank == 0 and not opts.resume and os.path.exists(dst) and os.listdir(dst) != [LOCK_DIR]:
        raise UsageError(f"{dst} exists; pass --resume to continue it, or choose a new destination")  # before any work

    schema = StoreSchema(
        kind=opts.fmt,
        codec={"id": codec.name, "weights_hash": codec.hash, "C": codec.cfg.C, "L": codec.cfg.L,
               "centres": [float(c) for c in codec.centres()], "freqs": codec.freqs.tolist()},
        policy={"mode": "fixed" if opts.size else "native", "size": opts.size,
                "resize": "shorter side to size (DALI, antialiased linear), centre crop" if opts.size
                else "none; reflect-padded to a multiple of 8 by the encoder, cropped back on decode",
                "colour": "8-bit RGB; EXIF orientation applied; alpha composited on white; 16-bit scaled"},
        shard_size=opts.shard_size, num_slots=len(listing.items), label_names=listing.label_names,
        inputs_sha256=listing.sha256(), name=os.path.basename(os.path.normpath(dst)).split(".")[0] or "latents",
        has_masks=any(it.mask for it in listing.items) and opts.size is not None,
    )
    writer = StoreWriter.open(dst, schema, codec_file(opts.codec), opts.resume, rank, world)
    try:
        if rank == 0 and listing.notes:
            writer.record_notes(listing.notes)  # not inputs, but worth keeping (an empty class folder)
        done = writer.committed()
        mine = [k for k in range(schema.num_shards) if k % world == rank]
        todo = [k for k in mine if k not in done]
        if opts.max_shards:
            todo = todo[: opts.max_shards]
        summary = ConvertSummary(dst, shards_skipped=len(mine) - len(todo))
        _run_shards(listing.items, todo, writer, codec, device, opts, summary)
        summary.wall_s = time.time() - t_start
        if world == 1 and not opts.max_shards:
            summary.schema = finalize_store(dst)
            summary.finalized = True
    finally:
        writer.close()
    return summary


def _run_shards(items: list[InputItem], todo: list[int], writer: StoreWriter, codec, device: str,
                opts: ConvertOptions, summary: ConvertSummary) -> None:
    schema = writer.schema
    # channels_last: 1.4x faster convolutions on x86 CPUs (oneDNN) and the layout tensor cores want
    # (a copy: the zoo caches codecs, and compress() elsewhere must keep its own layout and bytes)
    model = copy.deepcopy(codec).to(device).to(memory_format=torch.channels_last)
    stage = DaliImageStage(opts.size, opts.batch_size, device)
    stats = {"decode": 0.0, "encode": 0.0, "code": 0.0, "write": 0.0}
    total = sum(len(writer.shard_slots(k)) for k in todo)
    bar = None
    if opts.progress and total:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc="convert", smoothing=0.1)

    # -------------------------------------------------------------- reader thread: decode
    decoded: queue.Queue = queue.Queue(maxsize=3)
    max_bytes = opts.max_file_mb << 20

    def read_batches():
        try:
            for k in todo:
                slots = list(writer.shard_slots(k))
                for b0 in range(0, len(slots), opts.batch_size):
                    t0 = time.time()
                    batch = slots[b0: b0 + opts.batch_size]
                    decoded.put((k, b0 + len(batch) >= len(slots), _decode_batch(items, batch, stage, max_bytes)))
                    stats["decode"] += time.time() - t0
            decoded.put(None)
        except BaseException as e:  # surface reader failures in the main thread
            decoded.put(e)

    reader = threading.Thread(target=read_batches, daemon=True)
    reader.start()

    coder = ThreadPoolExecutor(max(1, opts.coder_threads))
    writer_pool = ThreadPoolExecutor(1)
    pending_write: Future | None = None
    need_bitstream = schema.kind == "wds" or schema.policy["mode"] == "native"
    shard_samples: list = []
    shard_rejects: list = []
    shard_counts = np.zeros((schema.codec["C"], schema.codec["L"]), np.int64)
    try:
        while True:
            msg = decoded.get()
            if msg is None:
                break
            if isinstance(msg, BaseException):
                raise msg
            k, last_in_shard, (ok, rejects) = msg
            t0 = time.time()
            encoded, counts = _encode(model, ok, device, schema)
            shard_samples += encoded
            shard_counts += counts
            stats["encode"] += time.time() - t0
            shard_rejects += rejects
            if bar:
                bar.update(len(ok) + len(rejects))
            if last_in_shard:
                samples = [_make_sample(s, items, schema) for s in shard_samples]
                if pending_write is not None:
                    pending_write.result()  # at most one shard in flight: memory stays flat
                # entropy coding and the write run beside the encoding of the next shard
                pending_write = writer_pool.submit(_code_and_write, writer, k, samples, shard_rejects, shard_counts,
                                                   stats, coder if need_bitstream else None, codec)
                summary.stored += len(samples)
                summary.rejected += len(shard_rejects)
                summary.rejects += shard_rejects
                summary.shards_written += 1
                shard_samples, shard_rejects = [], []
                shard_counts = np.zeros_like(shard_counts)
        if pending_write is not None:
            pending_write.result()
    finally:
        coder.shutdown(wait=True)
        writer_pool.shutdown(wait=True)
        if bar:
            bar.close()
    summary.stage_s = stats


def _code_and_write(writer, k, samples, rejects, counts, stats, coder, codec):
    """Entropy-code the shard's samples on the coder pool (WebDataset / native), then commit the shard."""
    t0 = time.time()
    if coder is not None:
        futs = [coder.submit(codec.pack, s.symbols, s.stored_size) for s in samples]
        for s, f in zip(samples, futs):
            s.bitstream = f.result()
    t1 = time.time()
    writer.write_shard(k, samples, rejects, counts)  # fixed-size Zarr: zarr runs our ANS codec per chunk here
    stats["code"] += t1 - t0
    stats["write"] += time.time() - t1


def _decode_batch(items: list[InputItem], slots: list[int], stage: DaliImageStage, max_bytes: int):
    """-> ([(slot, HWC uint8 at stored geometry, meta)], [reject dicts])."""
    rejects, dali, pillow = [], [], []
    for slot in slots:
        it = items[slot]
        try:
            data = it.read(max_bytes)
        except BadImageError as e:
            rejects.append({"path": it.ref, "reason": str(e).split(": ", 1)[-1]})
            continue
        s: Screened = screen(data, it.ref)
        meta = {"source_bytes": len(data)}
        if s.route == "reject":
            rejects.append({"path": it.ref, "reason": s.reason})
        elif s.route == "dali":
            meta["size"] = s.size
            dali.append((slot, data, meta))
        else:
            meta["size"] = s.rgb.shape[:2]
            pillow.append((slot, s.rgb, meta))
    ok = []
    for (slot, _, meta), out in zip(dali, stage.decode([d for _, d, _ in dali])):
        if isinstance(out, Exception):
            rejects.append({"path": items[slot].ref, "reason": dali_error_reason(out)})
        else:
            ok.append((slot, out, meta))
    for (slot, _, meta), out in zip(pillow, stage.geometry([r for _, r, _ in pillow])):
        ok.append((slot, out, meta))
    ok.sort(key=lambda t: t[0])
    rejects.sort(key=lambda r: r["path"])
    return ok, rejects


@torch.no_grad()
def _encode(model, ok, device, schema) -> tuple[list, np.ndarray]:
    """A decoded batch -> ([(slot, symbols (C, h, w) uint8, meta)], the batch's (C, L) symbol counts)."""
    counts = np.zeros((schema.codec["C"], schema.codec["L"]), np.int64)
    out: list = []
    groups = [ok] if schema.policy["mode"] == "fixed" else [[o] for o in ok]  # native: shapes differ
    for g in (g for g in groups if g):
        x = torch.from_numpy(np.stack([o[1] for o in g])).to(device).permute(0, 3, 1, 2).float() / 255.0
        x = x.contiguous(memory_format=torch.channels_last)  # NHWC from DALI is already this layout
        with autocast_for(device):
            r = model.symbols(x)
        counts += r["hard_hist"].cpu().numpy()  # the kernel's histogram: no second pass over the symbols
        for (slot, rgb, meta), s in zip(g, r["symbols"].cpu().numpy()):
            meta["stored_size"] = rgb.shape[:2]
            out.append((slot, s, meta))
    return out, counts


def _make_sample(t, items, schema) -> Sample:
    slot, symbols, meta = t
    it = items[slot]
    mask = None
    if schema.has_masks and it.mask:
        from .masks import load_mask
        mask = load_mask(it.mask, schema.policy["size"])
    size = tuple(int(v) for v in meta["size"])
    return Sample(slot=slot, label=it.label, symbols=symbols, size=size,
                  stored_size=tuple(int(v) for v in meta["stored_size"]), source=it.ref,
                  source_bytes=meta["source_bytes"], mask=mask)


def merge(dst: str) -> StoreSchema:
    """After every rank of a sharded conversion is done: check and commit the whole store."""
    from ..atomic import remove_stale_temps
    from ..store.lock import WriterLock
    if not os.path.exists(dst):
        raise UsageError(f"{dst}: no such store")
    with WriterLock.for_merge(dst):  # refuses while any rank still writes
        remove_stale_temps(dst)
        return finalize_store(dst)
