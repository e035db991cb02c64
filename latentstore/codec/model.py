"""The learned codec: encoder, soft-to-hard quantizer, decoder and the entropy model, in one module.

As in CompressAI, the model owns its entropy model and its bytes:
    codec.compress(x)        -> {"strings": [bytes per image], "shape": (H, W)}
    codec.decompress(strings) -> {"x_hat": (B, 3, H, W) in [0, 1]}
    codec.update(counts)     rebuilds the coding tables from symbol counts after training
`forward` is the training path and returns a dict with fixed keys. The codec's identity is its
weights hash (a sha256 over every tensor, entropy tables included), carried by every bitstream.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import latentstore_kernels as K

from ..device import codec_policy
from ..errors import BitstreamError
from . import bitstream as bs
from .entropy import get_coder
from .networks import Decoder, Encoder
from .quantizer import SoftToHardQuantizer

DEFAULT_CODER = None  # compress() codes with default_coder(codec) unless told otherwise
# Coding tables refitted per codec file and per store; not part of the codec's identity (a v2/v3 bitstream's
# CRC is seeded with its tables' crc32 instead), so refitting them never orphans a store or a bitstream.
UNHASHED_STATE = ("entropy.rans_tables", "entropy.rans3_tables")


def default_coder(L: int) -> str:
    """The coder compress() uses: `latentstore.rans3` (bitstream v3; 10-18% fewer bytes than v2 on the
    programme's codecs, benchmarks/results/codec_training/context_whatif-programme.md) where its alphabet limit
    allows, else `latentstore.rans` (v2)."""
    from .entropy.rans_v3 import MAX_L
    return "latentstore.rans3" if L <= MAX_L else "latentstore.rans"


@dataclass
class CodecConfig:
    name: str = "ls-c32"  # the zoo name; also the codec id written into every bitstream
    C: int = 32  # latent channels: the rate knob (z is C x H/8 x W/8)
    L: int = 6  # quantization centres (the symbol alphabet size)
    N: int = 64  # feature width of the residual trunk (Theis et al. use 128; 64 keeps 3 codecs < 15 MB)
    target_bpp: float = 0.635  # the operating point; H_t = target_bpp * 64 / C bits per symbol
    beta: float = 600.0  # weight of the entropy hinge in MSE(0..255 scale) + beta * max(H - H_t, 0)
    sigma: float = 1.0  # initial softmax sharpness of the soft assignment (see train.codec for the schedule)
    centre_range: float = 2.0  # centres start evenly spaced in [-range, range]
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])  # fixed input normalisation, saved with the weights
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])

    @property
    def target_bits_per_symbol(self) -> float:
        return self.target_bpp * 64.0 / self.C

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CodecConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in json.loads(s).items() if k in known})


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of a sha256 over the tensors in name order: the codec's identity."""
    h = hashlib.sha256()
    for k in sorted(k for k in state if k not in UNHASHED_STATE):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def floor_frequencies(hist: np.ndarray, floor_fraction: float = 1e-4) -> np.ndarray:
    """Symbol counts -> counts with a floor: every symbol gets at least `floor_fraction` of its channel's total."""
    hist = np.asarray(hist, dtype=np.int64)
    floor = np.maximum(1, np.ceil(hist.sum(1, keepdims=True) * floor_fraction)).astype(np.int64)
    return np.maximum(hist, floor)


class EntropyModel(nn.Module):
    """The frozen symbol models the coders use:
    freqs        (C, L) int64 counts, every one > 0: `latentstore.ans` (v1), part of the codec's identity;
    rans_tables  (C, L+1, L) 12-bit counts conditioned on the symbol above: `latentstore.rans` (v2), the
                 fallback tables of bitstreams outside a store (a store fits its own). A codec file without
                 them (made before v2) gets tables derived from `freqs`, context-free.
    rans3_tables (C, (L+1)**3, L) 12-bit counts conditioned on above, left, above-right: `latentstore.rans3`
                 (v3), when L <= 6 (else (C, 0, L): no v3). A codec file or checkpoint without them (made
                 before v3) gets v2's tables spread over the new contexts (v3_tables_from_v2): v3 then codes
                 as v2 does, until refit_tables fits real ones."""

    def __init__(self, C: int, L: int):
        super().__init__()
        from .entropy.rans_v3 import MAX_L, n_contexts
        self.register_buffer("freqs", torch.ones(C, L, dtype=torch.int64))
        self.register_buffer("rans_tables", torch.from_numpy(context_free_tables(np.ones((C, L), np.int64))))
        self.register_buffer("rans3_tables", torch.from_numpy(
            v3_tables_from_v2(self.rans_tables.numpy()) if L <= MAX_L else np.zeros((C, 0, L), np.int32)))
        self._v3_rows = n_contexts(L) if L <= MAX_L else 0

    def update(self, counts, floor_fraction: float = 1e-4, context_counts: np.ndarray | None = None,
               context3_counts: np.ndarray | None = None) -> None:
        """New v1 counts (C, L); new v2 tables from (C, L+1, L) context counts when given, else from the counts;
        new v3 tables from (C, (L+1)**3, L) counts when given, else v2's spread over v3's contexts."""
        from .entropy import rans_v3
        from .entropy.rans_v2 import tables_from_counts
        self.freqs.copy_(torch.as_tensor(floor_frequencies(np.asarray(counts), floor_fraction)))
        fitted = tables_from_counts(context_counts) if context_counts is not None else \
            context_free_tables(self.freqs.cpu().numpy())
        self.rans_tables.copy_(torch.from_numpy(fitted.astype(np.int32)))
        if self._v3_rows:
            fitted3 = rans_v3.tables_from_counts(context3_counts) if context3_counts is not None else \
                v3_tables_from_v2(fitted)
            self.rans3_tables.copy_(torch.from_numpy(fitted3.astype(np.int32)))

    def tables(self, coder_id: str):
        """What coder `coder_id` codes with."""
        if coder_id == "latentstore.ans":
            return self.freqs.cpu().numpy()
        if coder_id == "latentstore.rans":
            return self.rans_tables.cpu().numpy().astype(np.uint16)
        if coder_id == "latentstore.rans3" and self._v3_rows:
            return self.rans3_tables.cpu().numpy().astype(np.uint16)
        raise BitstreamError(f"codec has no tables for entropy coder {coder_id!r}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state from before v3 (codec files, training checkpoints) has no rans3_tables: derive them."""
        key = prefix + "rans3_tables"
        if key not in state_dict and prefix + "rans_tables" in state_dict:
            v2 = state_dict[prefix + "rans_tables"].cpu().numpy()
            state_dict[key] = torch.from_numpy(v3_tables_from_v2(v2) if self._v3_rows else
                                               np.zeros((v2.shape[0], 0, v2.shape[2]), np.int32))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def v3_tables_from_v2(tables: np.ndarray) -> np.ndarray:
    """(C, L+1, L) v2 tables -> (C, (L+1)**3, L) v3 tables that use only the symbol above (v2's model)."""
    t = np.asarray(tables)
    L = t.shape[-1]
    above = np.arange((L + 1) ** 3) // ((L + 1) ** 2)  # ctx = (above * (L+1) + left) * (L+1) + above_right
    return np.ascontiguousarray(t[:, above, :]).astype(np.int32)


def context_free_tables(freqs: np.ndarray) -> np.ndarray:
    """v2 tables that ignore the context: each channel's v1 counts at 12 bits, for all L+1 contexts."""
    from .entropy.rans_v2 import quantize_row
    C, L = freqs.shape
    rows = np.stack([quantize_row(np.asarray(f, np.float64)) for f in freqs])  # (C, L)
    return np.repeat(rows[:, None, :], L + 1, axis=1).astype(np.int32)


class LatentCodec(nn.Module):
    """Encoder + soft-to-hard quantizer + decoder + entropy model. Images in [0, 1], any size."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = SoftToHardQuantizer(cfg.L, cfg.centre_range, cfg.sigma)
        self.entropy = EntropyModel(cfg.C, cfg.L)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        self.meta: dict = {}  # the training record (where, how long, measured figures)
        self._hash: str | None = None

    # ------------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def hash(self) -> str:
        """Weights hash, fixed when the codec is loaded or `update()`d (training changes weights first)."""
        if self._hash is None:
            self._hash = weights_hash(self.state_for_saving())
        return self._hash

    def state_for_saving(self) -> dict[str, torch.Tensor]:
        return {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
                for k, v in self.state_dict().items()}

    @property
    def freqs(self) -> np.ndarray:
        return self.entropy.freqs.cpu().numpy()

    def centres(self) -> np.ndarray:
        """Centres as frozen into a bitstream: symbol j means centres()[j]."""
        return self.quantizer.sorted_centres().cpu().numpy().astype(np.float32)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def update(self, counts=None, floor_fraction: float = 1e-4, context_counts=None, context3_counts=None) -> str:
        """Rebuild the coding tables (from (C, L) symbol counts and, for v2 and v3, their context counts, when
        given) and the hash; returns the hash."""
        if counts is not None:
            self.entropy.update(counts, floor_fraction, context_counts, context3_counts)
        self._hash = None
        return self.hash

    # --------------------------------------------------------------------------- networks
    @staticmethod
    def pad8(x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad to a multiple of 8 (decode crops back)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"  # reflect needs pad < side
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def denormalise(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> z (B, C, ceil(H/8), ceil(W/8)), before quantization."""
        return self.encoder(self.normalise(self.pad8(x01)))

    def decode(self, z_q: torch.Tensor, size: tuple[int, int] | None = None, policy=None) -> torch.Tensor:
        """Quantized latents -> (B, 3, H, W) in [0, 1], cropped to `size` when given. policy (device.CodecPolicy):
        bf16 runs the decoder's trunk in bf16 autocast and its last convolution in fp32; None: plain fp32."""
        if policy is None or not policy.bf16:
            y = self.decoder(z_q)
        else:
            with policy.autocast():
                h = self.decoder.trunk(policy.layout_of(z_q))
            y = self.decoder.head(h.float())
        x = self.denormalise(y).clamp(0, 1)
        return x[..., : size[0], : size[1]] if size is not None else x

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x01)  # (B, C, h, w)
        q = self.quantizer(z)
        x_hat = self.denormalise(self.decoder(q["z_q"]))[..., : x01.shape[-2], : x01.shape[-1]]  # (B, 3, H, W)
        return {"x_hat": x_hat, "z": z, **q}

    # ------------------------------------------------------------------- symbols and bytes
    def policy(self, precision: str | None = None):
        """The coding policy (device.CodecPolicy) on this codec's device: bf16 on CUDA and on CPUs with native
        bf16, else fp32; `precision` or LATENTSTORE_PRECISION forces 'fp32' or 'bf16'."""
        return codec_policy(self.device, precision)

    def prepare(self, policy) -> None:
        """Put the networks' weights in the policy's memory format (values unchanged). Why: a convolution's
        output takes its layout from its input or weight, and bf16 oneDNN kernels round NCHW and NHWC inputs
        differently, so without this a tile and the whole image could meet a layer in different layouts
        (measured: 8 of 120k cells flipped); channels_last weights make every activation NHWC."""
        cl = torch.channels_last
        if policy.layout == "channels_last" and not self.encoder.conv1.weight.is_contiguous(memory_format=cl):
            self.encoder.to(memory_format=cl)
            self.decoder.to(memory_format=cl)

    @torch.no_grad()
    def symbols(self, x01: torch.Tensor, tile: int | None = None, policy=None) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {'symbols': uint8 (B, C, h, w), 'hard_hist': int64 (C, L)}.

        The one path from pixels to symbols (compress and conversion alike): the encoder's last bias
        is added inside the symbol kernel, and z goes in its own dtype (bf16 under autocast).
        policy: a device.CodecPolicy (None: self.policy(), bf16 where the hardware has it). An image's
        symbols do not depend on its batch, the thread count or the tiling (tests/test_cpu_policy.py).
        Images over tiling.TILE_ABOVE_PIXELS pixels are encoded in tiles (same symbols, bounded
        memory); `tile` sets the tile side in pixels (0: never tile; None: LATENTSTORE_TILE or default)."""
        from . import tiling
        policy = policy or self.policy()
        self.prepare(policy)
        if tiling.wants_tiles(x01.shape[-2:], tile, self.device):
            return tiling.symbols_tiled(self, x01, tile, policy=policy)
        with policy.autocast():
            z, bias = self.encoder.forward_unbiased(policy.layout_of(self.normalise(self.pad8(x01))))
        return K.symbols(z, self.quantizer.centres.detach(), bias.detach())

    @torch.no_grad()
    def reconstruct(self, symbols: torch.Tensor, size: tuple[int, int] | None = None,
                    tile: int | None = None, policy=None) -> torch.Tensor:
        """uint8 (B, C, h, w) symbols -> (B, 3, H, W) in [0, 1]. Large images are decoded in tiles
        (same pixels, bounded memory); `tile` as in `symbols`; `policy` as in `symbols` (see decode)."""
        from . import tiling
        policy = policy or self.policy()
        self.prepare(policy)
        full = (8 * symbols.shape[-2], 8 * symbols.shape[-1])
        if tiling.wants_tiles(size or full, tile, self.device):
            return tiling.reconstruct_tiled(self, symbols, size or full, tile, policy=policy)
        return self.decode(self.quantizer.dequantize(symbols.to(self.device)), size, policy)

    def pack(self, symbols: np.ndarray, size: tuple[int, int], coder: str | None = DEFAULT_CODER,
             tables=None) -> bytes:
        """Entropy-code (C, h, w) symbols of an image of `size` (H, W) into a complete bitstream.
        `coder`: None for default_coder(L). `tables`: the coder's tables to use instead of the codec's own (a
        store's fitted tables)."""
        C, h, w = symbols.shape
        c = get_coder(coder or default_coder(self.cfg.L))
        tables = self.entropy.tables(c.id) if tables is None else tables
        header = bs.Header(self.name, self.hash, C, self.cfg.L, h, w, int(size[0]), int(size[1]), c.bitstream_version)
        return bs.pack(header, c.encode(np.ascontiguousarray(symbols, dtype=np.uint8), tables), tables)

    def parse(self, data: bytes, tables=None) -> tuple[bs.Header, np.ndarray]:
        """A bitstream of this codec -> (header, (C, h, w) uint8 symbols); anything else is a BitstreamError."""
        from .entropy import coder_for_version
        header, payload = bs.unpack(data)
        if header.weights_hash != self.hash or (header.codec_id and header.codec_id != self.name):
            made_by = f"codec {header.codec_id!r} (weights {header.weights_hash})" if header.codec_id else \
                f"the codec with weights {header.weights_hash}"
            raise BitstreamError(f"bitstream was made by {made_by}, not {self.name!r} (weights {self.hash})")
        if (header.C, header.L) != (self.cfg.C, self.cfg.L):
            raise BitstreamError("bitstream header is corrupt (C or L differs from the codec's)")
        c = coder_for_version(header.version)
        tables = self.entropy.tables(c.id) if tables is None else tables
        bs.check_crc(header, payload, tables)
        symbols = c.decode(payload, tables, header.shape)
        if symbols.max(initial=0) >= self.cfg.L:
            raise BitstreamError("bitstream decoded to out-of-range symbols (corrupt)")
        return header, symbols

    @torch.no_grad()
    def compress(self, x01, coder: str | None = DEFAULT_CODER):
        """(B, 3, H, W) tensor in [0, 1] -> {'strings': B complete bitstreams, 'shape': (H, W)} (CompressAI's
        convention). One image as an (H, W, 3) uint8 array or a PIL image -> its bitstream (bytes)."""
        if not torch.is_tensor(x01):
            from .tiling import as_rgb8, rgb_symbols
            rgb = as_rgb8(x01)
            return self.pack(rgb_symbols(self, rgb), rgb.shape[:2], coder)
        H, W = x01.shape[-2:]
        sym = self.symbols(x01.to(self.device))["symbols"].cpu().numpy()
        return {"strings": [self.pack(s, (H, W), coder) for s in sym], "shape": (H, W)}

    @torch.no_grad()
    def decompress(self, strings):
        """Bitstreams of one image size -> {'x_hat': (B, 3, H, W) in [0, 1]} (CompressAI's convention).
        One bitstream (bytes) -> its image as an (H, W, 3) uint8 array."""
        if isinstance(strings, (bytes, bytearray, memoryview)):
            from .tiling import symbols_rgb
            header, sym = self.parse(bytes(strings))
            return symbols_rgb(self, sym, (header.H, header.W))
        parsed = [self.parse(s) for s in strings]
        sizes = {(h.H, h.W) for h, _ in parsed}
        if len(sizes) > 1:
            raise BitstreamError("decompress() batches bitstreams of one image size; decode the others apart")
        sym = torch.from_numpy(np.stack([s for _, s in parsed]))
        return {"x_hat": self.reconstruct(sym, sizes.pop())}
