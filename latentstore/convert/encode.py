"""Conversion's encoding stages, one code path for the CPU and the GPU: pixels -> symbols -> payloads.

    launch(ok)   stack the batch -> [0, 1] floats, channels_last -> encoder (the coding policy, device.py: bf16
                 autocast on CUDA and on CPUs with native bf16, else fp32; on the CPU a batch is cut into
                 chunks of at most CPU_CHUNK images, one per core on one torch thread each: see
                 codec/workers.py) -> the fused symbols + histogram kernel. Asynchronous on the GPU.
                                                                                                    (main thread)
    finish(h)    what the host needs of a batch. CPU path: its symbols. GPU path (v2/v3 stores of fixed size):
                 the rANS lanes of its payloads (the Triton encoder, on a side stream), its context counts
                 and which images are all zeros; the symbols stay on the device. The pipeline finishes a
                 batch after it has launched the next one, so the GPU always has the next encoder queued
                 while the host waits for this batch's entropy coding.                         (main thread)
    code(...)    a shard's payloads: numba rANS over all its host symbols at once (threads split it), or the
                 assembly of the GPU's lanes into payloads (a byte shuffle).                     (writer thread)
The store's coder (v2 `latentstore.rans` or v3 `latentstore.rans3`: store/coders.py) picks the context counts,
the numba coder and the Triton kernels; the stages are the same for both.
Both paths give the same bytes (tests/test_bitstream_v2.py, tests/test_convert.py, tests/test_store_v3.py), so a
store's bytes do not depend on where it was entropy-coded; they do depend on the encoder's arithmetic (the policy, recorded in
schema.policy["encoder"]; an image's symbols do not depend on its batch, chunk or thread count). Stores
written before the policy was recorded were fp32 on the CPU, bf16 on CUDA (resume_policy keeps to that).
torch.backends.cudnn.benchmark stays off: its timed choice of convolution algorithms could round
differently from one run to the next, and the same inputs must give the same bytes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import bitstream as bs
from ..codec.workers import run_all, worker_count
from ..device import CodecPolicy, codec_policy, policy_from_record, resolve_precision
from ..errors import UsageError
from ..store.coders import RANS_ID, LaneCoder, lane_coder

RANS = RANS_ID  # kept for importers of the name
CPU_CHUNK = 8  # images per encoder call on the CPU: 16 at once ran 1.5x, 32 2.6x slower per image than 8 (cache)


@dataclass
class EncodedBatch:
    slots: list[int]
    metas: list[dict]
    counts: np.ndarray  # (C, L) hard histogram (v1 stores) or (C, contexts, L) context counts (v2, v3), the batch's
    shape: tuple  # one image's (C, h, w)
    symbols: np.ndarray | None = None  # (B, C, h, w) uint8 on the host; None on the GPU path
    device_symbols: torch.Tensor | None = None  # GPU path, stores with masks: a bad mask's sample is read back
    lanes: tuple | None = None  # GPU path: host (words uint16 (B, K, M), word counts (B, K), final states (B, K))
    zero: np.ndarray | None = None  # GPU path: (B,) images whose symbols are all 0 (stored as empty chunks)

    def host_symbols(self, i: int) -> np.ndarray | None:
        """What a Sample carries: the symbols on the CPU path; on the GPU path none, but for an all-zero image
        (fixed-size Zarr stores those as empty chunks and must see them)."""
        if self.symbols is not None:
            return self.symbols[i]
        return np.zeros(self.shape, np.uint8) if self.zero[i] else None

    def read_back(self, i: int) -> np.ndarray:
        return self.symbols[i] if self.symbols is not None else self.device_symbols[i].cpu().numpy()


def context_counts_t(sym: torch.Tensor, L: int, coder: LaneCoder | None = None) -> torch.Tensor:
    """`coder`'s (default v2's) context_counts on the symbols' device: (B, C, h, w) -> (C, contexts, L) int64."""
    return (coder or lane_coder(RANS_ID)).context_counts_t(sym, L)


def sample_counts(sym: np.ndarray, counts: np.ndarray, coder: LaneCoder | None = None) -> np.ndarray:
    """One image's share of a shard's counts, in their kind: `coder`'s (C, contexts, L) context counts (v2 when
    not given), or (C, L) symbol counts."""
    if counts.ndim == 3:
        return (coder or lane_coder(RANS_ID)).context_counts(sym, counts.shape[-1])
    return np.stack([np.bincount(c, minlength=counts.shape[1]) for c in sym.reshape(len(counts), -1)])


def pixels(group: list, device: str) -> torch.Tensor:
    """[(slot, HWC uint8 image (numpy, or a device tensor from DALI), meta)] -> (B, 3, H, W) in [0, 1],
    channels_last (NHWC from DALI is already that layout; the stack is the one copy of the decoded pixels)."""
    imgs = [o[1] for o in group]
    t = torch.stack(imgs) if torch.is_tensor(imgs[0]) else torch.from_numpy(np.stack(imgs))
    x = t.to(device).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(memory_format=torch.channels_last)


class Encoder:
    """model: the codec on `device`, channels_last. gpu_coding: entropy-code v2/v3 payloads with the Triton
    encoder (on CUDA by default; `entropy="triton"` forces it, also on the CPU through TRITON_INTERPRET).
    policy: the coding policy (device.CodecPolicy); None: device.codec_policy(device), the fast one."""

    def __init__(self, model, device: str, schema, entropy: str = "auto", compile_encoder: bool = False,
                 policy: CodecPolicy | None = None):
        self.model, self.device = model, device
        self.policy = policy or codec_policy(device, compile=compile_encoder)
        self.workers = worker_count(None, device)  # CPU: a batch's chunks encoded one per core (codec/workers.py)
        model.prepare(self.policy)
        self.C, self.L = schema.codec["C"], schema.codec["L"]
        self.lane = lane_coder(schema.codec.get("coder"))  # v2 or v3: payloads coded here; None: v1
        self.fixed = schema.policy["mode"] == "fixed"
        self.side = schema.policy.get("size")
        self.gpu_coding = self.lane is not None and self.fixed and (
            entropy == "triton" or (entropy == "auto" and device == "cuda"))
        self.keep_device_symbols = schema.has_masks  # only a bad mask needs a sample's symbols back
        self.stream = torch.cuda.Stream() if self.gpu_coding and device == "cuda" else None
        self.tables = self.tables_t = None
        self._forward = None
        if compile_encoder:  # fixed shapes only: every batch is padded to the full batch (no recompiles)
            enc, norm = model.encoder, model.normalise
            self._forward = torch.compile(lambda x: enc.forward_unbiased(norm(x)), dynamic=False)

    def set_tables(self, tables: np.ndarray | None) -> None:
        """v2, v3: the store's own tables, once the store exists (the table fit before it needs none)."""
        self.tables = tables
        if tables is not None and self.gpu_coding:
            self.tables_t = torch.from_numpy(np.asarray(tables, np.int64)).to(self.device)

    def zero_counts(self) -> np.ndarray:
        return np.zeros(self.lane.counts_shape(self.C, self.L) if self.lane else (self.C, self.L), np.int64)

    # ------------------------------------------------------------------------------- main thread
    @torch.no_grad()
    def launch(self, ok: list, host: bool = False, pad_to: int = 0):
        """Start encoding a decoded batch; host=True: finish() brings the symbols to the host (the table fit)."""
        groups = [ok] if self.fixed else [[o] for o in ok]  # native: shapes differ, one image at a time
        out = []
        for g in (g for g in groups if g):
            x = pixels(g, self.device)
            r = self._symbols(x, pad_to)
            ev = None
            if self.stream is not None and not host:
                ev = torch.cuda.Event()
                ev.record()  # the side stream starts this batch's entropy coding from here
            metas = [o[2] for o in g]
            for o, meta in zip(g, metas):
                meta["stored_size"] = tuple(int(v) for v in o[1].shape[:2])
            # g is kept until finish(): DALI may reuse an output buffer once nothing references it, and only
            # finish() knows that the stack above has run on the GPU (it waits for later work of this batch)
            out.append(([o[0] for o in g], metas, r["symbols"], r["hard_hist"], ev, g))
        return ("host" if host or not self.gpu_coding else "device", out)

    def _symbols(self, x: torch.Tensor, pad_to: int) -> dict:
        if self._forward is None:
            if self.device == "cuda" or len(x) == 1:
                return self.model.symbols(x, policy=self.policy)
            # one chunk per worker (one per core, one torch thread each), at most CPU_CHUNK images a call
            step = min(CPU_CHUNK, -(-len(x) // self.workers))
            parts = run_all(lambda i: self.model.symbols(x[i: i + step], policy=self.policy),
                            list(range(0, len(x), step)), self.workers)
            return {"symbols": torch.cat([p["symbols"] for p in parts]),
                    "hard_hist": sum(p["hard_hist"] for p in parts)}
        import latentstore_kernels as K
        n = x.shape[0]
        if pad_to > n:
            x = torch.cat([x, x.new_zeros((pad_to - n,) + x.shape[1:])]).contiguous(memory_format=torch.channels_last)
        with self.policy.autocast():
            z, bias = self._forward(x)
        return K.symbols(z[:n], self.model.quantizer.centres.detach(), bias.detach())

    def finish(self, launched) -> list[EncodedBatch]:
        """A launched batch -> its EncodedBatches (a list given here is already finished: a table-fit batch)."""
        if isinstance(launched, list):
            return launched
        kind, groups = launched
        return [self._host(*g) if kind == "host" else self._device(*g) for g in groups]

    def _host(self, slots, metas, sym, hist, _ev, _pixels) -> EncodedBatch:
        s = sym.cpu().numpy()
        counts = self.lane.context_counts(s, self.L) if self.lane else hist.cpu().numpy()
        return EncodedBatch(slots, metas, counts, s.shape[1:], symbols=s)

    def _device(self, slots, metas, sym, hist, ev, _pixels) -> EncodedBatch:
        K = self.lane.lanes(*sym.shape[1:])
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            if self.stream is not None:
                self.stream.wait_event(ev)
                sym.record_stream(self.stream)  # made on the main stream, read on this one
            counts = self.lane.context_counts_t(sym, self.L)
            zero = sym.flatten(1).amax(1) == 0
            words, nwords, states = self.lane.gpu.encode_lanes(sym, self.tables_t, K)  # waits for this stream only
            # words are 16-bit values in int32: halved before they cross (int16 wraps them; read back as uint16)
            lanes = (words.to(torch.int16).cpu().numpy().view(np.uint16), nwords.cpu().numpy(), states.cpu().numpy())
            return EncodedBatch(slots, metas, counts.cpu().numpy(), tuple(sym.shape[1:]), lanes=lanes,
                                zero=zero.cpu().numpy(), device_symbols=sym if self.keep_device_symbols else None)

    # ----------------------------------------------------------------------------- writer thread
    def code(self, samples: list, refs: list, threads: int) -> None:
        """v2/v3 payloads of a shard's samples (refs: each sample's (EncodedBatch, row)): the GPU's lanes assembled
        (one byte shuffle for both: they share the payload layout), host symbols coded by numba in one call per
        latent shape (fixed size: the whole shard)."""
        from ..codec.entropy.rans_kernels_cpu import assemble_range
        by_shape: dict = {}
        assembled: dict = {}
        for s, (b, i) in zip(samples, refs):
            if b.lanes is None:
                by_shape.setdefault(b.symbols.shape[1:], []).append((s, b.symbols[i]))
                continue
            if id(b) not in assembled:
                words, nwords, states = b.lanes
                out = np.empty((len(words), 1 + 9 * words.shape[1] + 2 * words.shape[1] * words.shape[2]), np.uint8)
                lengths = np.zeros(len(words), np.int64)
                assemble_range(words, nwords, states, out, lengths)
                assembled[id(b)] = [out[j, :n].tobytes() for j, n in enumerate(lengths)]
            s.payload = assembled[id(b)][i]
        for group in by_shape.values():
            coded = self.lane.encode_batch(np.stack([sym for _, sym in group]), self.tables, threads=threads)
            for (s, _), p in zip(group, coded):
                s.payload = p

    def bitstream(self, s) -> bytes:
        """A v2/v3 sample's complete bitstream from its payload: what codec.pack makes, without coding again."""
        C, h, w = s.symbols.shape if s.symbols is not None else (self.C, self.side // 8, self.side // 8)
        m = self.model
        header = bs.Header(m.name, m.hash, C, self.L, h, w, int(s.stored_size[0]), int(s.stored_size[1]),
                           self.lane.version)
        return bs.pack(header, s.payload, self.tables)


def resume_policy(existing_policy: dict | None, device: str, precision: str | None, compiled: bool) -> tuple:
    """The coding policy of a run, and what its schema.policy["encoder"] records: a new store takes
    codec_policy(device, precision) and records it; a resumed one keeps the policy its record names (a store
    from before records: fp32 on the CPU, bf16 on CUDA, recorded as it was then), and a forced precision
    that contradicts it is refused: one store, one arithmetic."""
    asked = resolve_precision(precision)
    if existing_policy is None:
        pol = codec_policy(device, precision, compile=compiled)
        return pol, pol.record()
    rec = existing_policy.get("encoder")
    pol = policy_from_record(rec, device)
    legacy = pol is None
    if legacy:  # written before policies were recorded
        pol = CodecPolicy(device=device, dtype="bf16" if device == "cuda" else "fp32", compile=rec == "torch.compile")
    if asked != "auto" and asked != pol.dtype:
        raise UsageError(f"cannot resume: the store was encoded in {pol.dtype}, this run asks for {asked} "
                         "(--precision / LATENTSTORE_PRECISION); one store keeps one arithmetic")
    if pol.device != device:
        raise UsageError(f"cannot resume: the store was encoded on {pol.device}, this run is on {device} "
                         "(other rounding: pass --device " + pol.device + ")")
    if pol.compile != compiled:
        raise UsageError("cannot resume: the store was encoded " + ("with" if pol.compile else "without")
                         + " torch.compile (--encoder), which rounds differently")
    if legacy:
        return pol, rec
    return pol, pol.record()
