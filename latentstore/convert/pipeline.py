"""One-shot conversion: an image dataset -> an entropy-coded latent store. One code path for the CPU and the GPU.

Stages, overlapped with threads (DALI, torch and numba release the GIL):
    reader threads: read bytes and screen headers, one batch ahead of the decoder
    reader thread : DALI decode + resize/crop (or Pillow + the same resize); on CUDA the hardware JPEG
                    decoder, GPU resize/crop, and a DLPack hand-off: the pixels stay on the GPU
    main thread   : encoder (bf16 channels_last on CUDA and native-bf16 CPUs) -> fused symbols + histogram; on CUDA the
                    v2/v3 rANS encoder (a side stream), so that only compressed bytes reach the host (encode.py)
    writer thread : the shard's payloads (numba rANS over the whole shard on the CPU; assembly of the GPU's
                    lanes), then its files written directly (fixed-size Zarr) and its part record, committed
So reading batch k+2, decoding k+1, encoding k and coding + writing the previous shard run together; the
main thread finishes a batch only after it has launched the next one (double buffering: the GPU is never
left waiting for the host).

Work is cut into shards of `shard_size` inputs (see store.writer): a rank takes shards
k = shard_id, shard_id + num_shards, ...; a resumed run skips committed shards and redoes the rest.
Batches never cross a shard, so a shard's bytes depend on its inputs and options alone (resume, ranks).
"""
from __future__ import annotations

import copy
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..codec.zoo import codec_file, load_codec
from ..device import resolve_device
from ..errors import UsageError
from ..store.coders import coder_for_bitstream, lane_coder
from ..store.lock import LOCK_DIR
from ..store.schema import StoreSchema
from ..store.writer import StoreWriter, finalize_store
from .decode import DaliImageStage, decode_batch, read_screened
from .encode import EncodedBatch, Encoder, resume_policy
from .shards import code_and_write, make_samples
from .sources import InputItem, list_inputs

GPU_MIN_BATCH = 256  # on CUDA, images per decode and encoder batch at least: the hardware decoder, the encoder
# and the rANS lanes (images x 16) all want that many in flight (issue #11: 40k img/s encoder ceiling at 256)


@dataclass
class ConvertOptions:
    codec: str = "ls-c16"  # operating point name or codec file
    fmt: str = "zarr"  # zarr | wds
    size: int | None = 256  # fixed-size side S (multiple of 8); None = native size
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32  # images per decode and encoder batch (on CUDA at least GPU_MIN_BATCH)
    shard_size: int = 256  # inputs per shard (the unit of commit and of resume)
    resume: bool = False  # continue an interrupted conversion into an existing DST
    num_shards: int = 1  # world size of a rank-sharded conversion
    shard_id: int = 0  # this process's rank
    coder_threads: int = 4  # entropy-coding threads
    progress: bool = True  # show a progress bar
    max_shards: int = 0  # stop after this many shards (0: all); for benchmarks and tests
    max_file_mb: int = 256  # an input file (or tar member) larger than this is a reject, not a memory blow-up
    bitstream: str = "v2"  # v2: latentstore.rans with tables fitted to the store; v3: latentstore.rans3 (the same,
    # three-neighbour contexts, L <= 6); v1: latentstore.ans
    entropy: str = "auto"  # v2/v3 coder: auto (Triton on CUDA, numba on the CPU), triton, numba: the same bytes
    encoder: str = "eager"  # eager | compile (torch.compile, fixed size; other float rounding: kept in the policy)
    precision: str | None = None  # auto | bf16 | fp32; None: LATENTSTORE_PRECISION, else auto (device.codec_policy)
    reader_threads: int = 4  # threads reading and screening the next batch's files


@dataclass
class ConvertSummary:
    dst: str
    stored: int = 0  # samples written by this process
    rejected: int = 0
    rejects: list = field(default_factory=list)
    shards_written: int = 0
    shards_skipped: int = 0  # already committed (resume)
    wall_s: float = 0.0
    stage_s: dict = field(default_factory=dict)  # seconds per stage (decode, encode, code, write, fit)
    policy: str = ""  # what the encoder ran in (device.CodecPolicy.describe())
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
                 f"({s.images_per_s:.1f} img/s, start-up and table fit included, like the progress bar's); "
                 f"{s.shards_written} shards written, {s.shards_skipped} already done"]
        if s.policy:
            lines.append(f"encoder        {s.policy}")
        if s.stage_s:
            # the stages run in overlapping threads and the fit re-counts its own decode and encode: busy time per
            # stage, which adds up to more than the wall time
            lines.append("stages (s)     " + ", ".join(f"{k} {v:.1f}" for k, v in s.stage_s.items())
                         + f" (busy time of overlapping threads, not parts of the {s.wall_s:.1f} s; fit includes "
                           "its own decode and encode)")
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
    if opts.entropy not in ("auto", "triton", "numba") or opts.encoder not in ("eager", "compile"):
        raise UsageError(f"entropy must be auto, triton or numba and encoder eager or compile "
                         f"(got {opts.entropy!r}, {opts.encoder!r})")
    rank, world = resolve_rank(opts)
    codec = load_codec(opts.codec)
    coder = coder_for_bitstream(opts.bitstream, codec.cfg.L, f"codec {codec.name}")  # before any work
    listing = list_inputs(src)
    device = resolve_device(opts.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process of a node
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
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
    schema.codec["coder"] = coder
    compiled = opts.encoder == "compile" and opts.size is not None
    # what the encoder runs in (dtype, layout, compile) is part of the policy: the writer refuses a resume whose
    # policy differs, and a resume takes the store's recorded policy unless told otherwise (encode.resume_policy)
    policy, record = resume_policy(_existing_policy(dst) if opts.resume else None, device, opts.precision, compiled)
    if record is not None:
        schema.policy["encoder"] = record
    # on CUDA the GPU wants big batches; batches stay inside shards (resume and ranks redo whole shards)
    batch = max(opts.batch_size, GPU_MIN_BATCH) if device == "cuda" else opts.batch_size
    model = copy.deepcopy(codec).to(device).to(memory_format=torch.channels_last)  # a copy: the zoo's stays as is
    stage = DaliImageStage(opts.size, batch, device, _dali_threads(device))
    enc = Encoder(model, device, schema, opts.entropy, compiled, policy=policy)
    ready: dict = {}  # batches the table fit already encoded, by their slots (see _fit_tables)
    stats = {"decode": 0.0, "encode": 0.0, "code": 0.0, "write": 0.0, "fit": 0.0}  # seconds; the fit's own
    # decoding and encoding count in decode and encode too
    # rank 0 fits the store's tables once, when it creates the store; other ranks and resumes read them
    lane = lane_coder(coder)
    on_create = (lambda sch: _fit_tables(sch, listing.items, enc, stage, batch, opts, ready, stats)) \
        if lane is not None else None
    writer = StoreWriter.open(dst, schema, codec_file(opts.codec), opts.resume, rank, world, on_create=on_create)
    try:
        if rank == 0 and listing.notes:
            writer.record_notes(listing.notes)  # not inputs, but worth keeping (an empty class folder)
        if lane is not None:
            from ..store.backends import schema_tables
            enc.set_tables(schema_tables(writer.schema, coder))
        done = writer.committed()
        mine = [k for k in range(schema.num_shards) if k % world == rank]
        todo = [k for k in mine if k not in done]
        if opts.max_shards:
            todo = todo[: opts.max_shards]
        summary = ConvertSummary(dst, shards_skipped=len(mine) - len(todo), policy=enc.policy.describe())
        _run_shards(listing.items, todo, writer, enc, stage, batch, opts, summary, ready, stats, t_start)
        summary.wall_s = time.time() - t_start
        if world == 1 and not opts.max_shards:
            summary.schema = finalize_store(dst)
            summary.finalized = True
    finally:
        writer.close()
    return summary


def _existing_policy(dst: str) -> dict | None:
    """The policy recorded by the store a resume continues (its creation record); None when there is none yet."""
    from ..store.remote import location_for
    from ..store.schema import PARTS_DIR
    from ..store.writer import INIT_MARKER, parse_record
    try:
        data = location_for(dst).read(f"{PARTS_DIR}/{INIT_MARKER}")
    except (OSError, FileNotFoundError):
        return None
    return parse_record(data, dst, INIT_MARKER).policy


def _dali_threads(device: str) -> int:
    """DALI's CPU threads: 2 on the CPU path (the encoder wants the cores); on CUDA enough for the hardware
    decoder's host side and the Huffman decoding of what it does not take."""
    return 2 if device != "cuda" else min(8, max(2, (os.cpu_count() or 2) // 2))


def _fit_tables(schema: StoreSchema, items: list[InputItem], enc: Encoder, stage, batch: int, opts: ConvertOptions,
                ready: dict, stats: dict) -> None:
    """The store's v2/v3 tables, from a seeded sample of its inputs, into the schema it is created with. The sample
    is made of the main run's own batches (tables.fit_batches), and the same inputs through the same encoder
    give the same symbols, so those batches are kept in `ready` instead of being encoded twice (on the CPU,
    where the encoder is nearly all of the time; the GPU path codes every batch on the device instead)."""
    from .tables import BATCH_METHOD, fit_batches, fit_store_tables, recorded
    order = [tuple(b) for b in fit_batches(len(items), batch, opts.shard_size)]  # fit_store_tables' batches
    keep = not enc.gpu_coding
    last: dict = {}
    t_fit = time.time()
    ahead = ThreadPoolExecutor(1, thread_name_prefix="fit-read")
    futs: dict = {}

    def decode(b):  # decodes the next batch on a thread while this one is encoded, as the main run does
        t0, key = time.time(), tuple(b)
        fut = futs.pop(key, None) or ahead.submit(decode_batch, items, b, stage, opts.max_file_mb << 20)
        nxt = order.index(key) + 1 if key in order else len(order)
        if nxt < len(order):
            futs[order[nxt]] = ahead.submit(decode_batch, items, list(order[nxt]), stage, opts.max_file_mb << 20)
        last["key"], (ok, last["rejects"]) = key, fut.result()
        stats["decode"] += time.time() - t0
        return ok, last["rejects"]

    def encode(ok):
        t0 = time.time()
        batches = enc.finish(enc.launch(ok, host=True, pad_to=batch))
        if keep:
            ready[last["key"]] = (batches, last["rejects"])
        stats["encode"] += time.time() - t0
        return [(slot, b.symbols[i], b.metas[i]) for b in batches for i, slot in enumerate(b.slots)], None

    try:
        schema.codec[enc.lane.tables_field] = enc.lane.tables_json(fit_store_tables(
            [list(b) for b in order], decode, encode, schema.codec["C"], schema.codec["L"], enc.lane))
    finally:
        ahead.shutdown(wait=True)
    schema.codec[enc.lane.fit_field] = recorded(sum(len(b) for b in order), BATCH_METHOD)
    stats["fit"] += time.time() - t_fit


def _run_shards(items: list[InputItem], todo: list[int], writer: StoreWriter, enc: Encoder, stage, batch: int,
                opts: ConvertOptions, summary: ConvertSummary, ready: dict, stats: dict, t_start: float) -> None:
    schema = writer.schema
    plan = [(k, b0 + batch >= len(sl), sl[b0: b0 + batch]) for k in todo for sl in [list(writer.shard_slots(k))]
            for b0 in range(0, len(sl), batch)]
    bar = None
    if opts.progress and plan:
        from tqdm import tqdm
        # one clock for the bar and the summary: the average rate since the command started (start-up and the
        # table fit, whose batches arrive here already encoded, included), so the two rates agree
        bar = tqdm(total=sum(len(p[2]) for p in plan), unit="img", desc="convert", smoothing=0)
        bar.start_t = bar.last_print_t = t_start

    # -------------------------------------------------------------- reader threads: read, screen, decode
    decoded: queue.Queue = queue.Queue(maxsize=3)
    max_bytes = opts.max_file_mb << 20

    def read_batches():
        pool = ThreadPoolExecutor(max(1, opts.reader_threads), thread_name_prefix="read")
        reads: dict = {}

        def prefetch(j):
            if j < len(plan) and j not in reads and tuple(plan[j][2]) not in ready:
                reads[j] = [pool.submit(read_screened, items[s], max_bytes) for s in plan[j][2]]
        try:
            for i, (k, last, slots) in enumerate(plan):
                prefetch(i)
                prefetch(i + 1)  # the next batch is read and screened while this one decodes
                t0 = time.time()
                hit = ready.pop(tuple(slots), None)
                if hit is not None:  # encoded by the table fit: (batches, rejects)
                    decoded.put((k, last, hit[0], hit[1]))
                    continue
                ok, rejects = decode_batch(items, slots, stage, max_bytes, [f.result() for f in reads.pop(i)])
                stats["decode"] += time.time() - t0
                decoded.put((k, last, ok, rejects))
            decoded.put(None)
        except BaseException as e:  # surface reader failures in the main thread
            decoded.put(e)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    reader = threading.Thread(target=read_batches, daemon=True)
    reader.start()

    coder = ThreadPoolExecutor(max(1, opts.coder_threads))  # v1 bitstreams, one per sample
    writer_pool = ThreadPoolExecutor(1)
    pending_write: list[Future] = []
    shard: dict = {"batches": [], "rejects": []}

    def settle(k, last, launched, rejects):
        """A batch launched earlier: its results, then, at a shard's end, the shard to the writer thread."""
        t0 = time.time()
        batches = enc.finish(launched)
        stats["encode"] += time.time() - t0
        shard["batches"] += batches
        shard["rejects"] += rejects
        if bar:
            bar.update(sum(len(b.slots) for b in batches) + len(rejects))
        if not last:
            return
        counts = sum((b.counts for b in shard["batches"]), enc.zero_counts())
        samples, refs = make_samples(shard["batches"], items, schema, shard["rejects"], counts)
        if pending_write:
            pending_write.pop().result()  # at most one shard in flight: memory stays flat
        # entropy coding and the write run beside the encoding of the next shard
        pending_write.append(writer_pool.submit(code_and_write, writer, k, samples, refs, shard["rejects"], counts,
                                                stats, enc, coder, opts.coder_threads))
        summary.stored += len(samples)
        summary.rejected += len(shard["rejects"])
        summary.rejects += shard["rejects"]
        summary.shards_written += 1
        shard["batches"], shard["rejects"] = [], []

    held = None  # the batch launched last, settled once the next one is launched
    try:
        while True:
            msg = decoded.get()
            if isinstance(msg, BaseException):
                raise msg
            if msg is not None:
                k, last, work, rejects = msg
                t0 = time.time()
                launched = work if work and isinstance(work[0], EncodedBatch) else enc.launch(work, pad_to=batch)
                stats["encode"] += time.time() - t0
            if held is not None:
                settle(*held)
            if msg is None:
                break
            held = (k, last, launched, rejects)
        if pending_write:
            pending_write.pop().result()
    finally:
        coder.shutdown(wait=True)
        writer_pool.shutdown(wait=True)
        if bar:
            bar.close()
    summary.stage_s = stats


def merge(dst: str) -> StoreSchema:
    """After every rank of a sharded conversion is done: check and commit the whole store."""
    from ..atomic import remove_stale_temps
    from ..store.lock import WriterLock
    from ..store.remote import is_remote
    if is_remote(dst):  # object storage: the remote merge lock, one commit (store/remote/commit.py)
        from ..store.remote.commit import merge_remote
        return merge_remote(dst)
    if not os.path.exists(dst):
        raise UsageError(f"{dst}: no such store")
    with WriterLock.for_merge(dst):  # refuses while any rank still writes
        remove_stale_temps(dst)
        return finalize_store(dst)
