"""What the service computes per upload: pixels -> the store's geometry -> symbols + payload (conversion's own
encoder) -> top-5 predictions of a classify run's cResNet on the latents (never decoded to pixels).
A client's bitstream (serve/latent_ingest.py, already checked and entropy-decoded into a CheckedLatent) skips
the encoder: `run` takes either kind in one batch, and `classify_symbols` is the classifier alone.

`prepare` runs in the decode thread pool (one image); `run` in the batcher's thread (a micro-batch), on
CUDA when there is one (the encoder under conversion's bf16 autocast) and on the CPU otherwise. The v2
payloads are coded by numba on the host (a micro-batch is small; the GPU rANS path wants 256 images).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from ..codec.zoo import codec_file, load_codec
from ..convert.encode import RANS, Encoder, resume_policy
from ..device import autocast_for, resolve_device
from ..errors import UsageError
from ..store.backends import schema_tables
from ..store.schema import StoreSchema

RESIZE_POLICY = "shorter side to size (Pillow, antialiased bilinear), centre crop"


@dataclass
class Encoded:
    symbols: np.ndarray  # (C, h, w) uint8
    payload: bytes  # v2 entropy-coded symbols (the store's tables)
    bitstream_bytes: int  # size of the complete bitstream GET /latent returns
    predictions: list  # [{"label", "score"}] top-5, or [] without a classifier


def fit_to(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3): shorter side to `side`, centre crop (conversion's geometry)."""
    h, w = rgb.shape[:2]
    s = side / min(h, w)
    nh, nw = max(side, round(h * s)), max(side, round(w * s))
    im = Image.fromarray(rgb)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - side) // 2, (nw - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)), dtype=np.uint8)


def classifier_labels(cfg: dict) -> list[str]:
    """Class names of a classify run: its training store's label names when that store is readable."""
    n = int(cfg["num_classes"])
    try:
        from ..store.schema import read_schema
        names = list(read_schema(cfg.get("train", "")).label_names)
        if len(names) == n:
            return names
    except Exception:
        pass
    return [f"class-{i}" for i in range(n)]


class IngestEngine:
    def __init__(self, codec: str, classifier: str | None = None, device: str = "auto"):
        self.codec_file = codec_file(codec)
        self.device = resolve_device(device)
        base = load_codec(codec)
        self.model = copy.deepcopy(base).to(self.device).eval()
        self._codec_tables = None  # the codec's own v2 tables as numpy, made at the first client bitstream
        if self.device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.classifier = None
        self.label_names: list[str] = []
        if classifier:
            if not os.path.isdir(classifier):
                raise UsageError(f"--classifier {classifier}: no such classify run")
            from latentstore_train.joint import load_classifier
            net, cfg = load_classifier(classifier, base.cfg.C)
            self.classifier = net.to(self.device).eval()
            self.label_names = classifier_labels(cfg)
        self.enc: Encoder | None = None
        self.side = 0  # S: the store's side (fixed), or the classifier's view of a native store
        self.native = False  # the store keeps each photo at its own size (serve/native.py)
        self.centres_t = torch.as_tensor(base.centres(), dtype=torch.float32, device=self.device)

    def new_schema(self, side: int, shard_size: int, name: str, native: bool = False) -> StoreSchema:
        """The schema of a new service store: fixed size S (native: each photo at its own size, S the classifier's
        view, serve/native.py), bitstream v2 coded with the codec's own tables (so a GET /latent bitstream
        decodes with `latentstore decompress` alone)."""
        m = self.model
        schema = StoreSchema(
            kind="zarr",
            codec={"id": m.name, "weights_hash": m.hash, "C": m.cfg.C, "L": m.cfg.L,
                   "centres": [float(c) for c in m.centres()], "freqs": m.freqs.tolist(), "coder": RANS,
                   "rans_tables": m.entropy.tables(RANS).tolist(),
                   "rans_tables_fit": {"method": "the codec's own tables (a service store has no inputs to fit)"}},
            policy={"mode": "fixed", "size": side, "resize": RESIZE_POLICY,
                    "colour": "8-bit RGB; EXIF orientation applied; alpha composited on white; 16-bit scaled",
                    "source": "uploads to latentstore serve (a growing store)",
                    # what the encoder runs in, as conversion records it: a reopened store keeps it (bind)
                    "encoder": resume_policy(None, self.device, None, False)[1]},
            shard_size=shard_size, num_slots=shard_size, label_names=list(self.label_names),
            inputs_sha256="", name=name)
        if native:
            from .native import native_policy
            schema.policy = native_policy(schema.policy, side)
        return schema

    def bind(self, schema: StoreSchema) -> None:
        """Encode for this store: its codec (checked), its size, its tables."""
        if schema.codec["weights_hash"] != self.model.hash:
            raise UsageError(f"the store holds latents of codec {schema.codec['id']} ({schema.codec['weights_hash']}), "
                             f"not of --codec {self.model.name} ({self.model.hash})")
        mode = schema.policy.get("mode")
        if schema.codec.get("coder") != RANS or schema.kind != "zarr" or mode not in ("fixed", "native"):
            raise UsageError("the service appends to Zarr bitstream v2 stores only (fixed size, or --native)")
        self.native = mode == "native"
        self.side = int(schema.policy["classifier_size" if self.native else "size"])
        policy, _ = resume_policy(schema.policy, self.device, None, False)  # the store's recorded arithmetic
        # a native store's micro-batch encodes the classifier's S x S view: the fixed path's encoder at S
        enc_schema = copy.deepcopy(schema)
        enc_schema.policy.update(mode="fixed", size=self.side)
        self.enc = Encoder(self.model, self.device, enc_schema, entropy="numba", policy=policy)
        self.enc.set_tables(schema_tables(schema, RANS))

    # ------------------------------------------------------------------------ per image / per batch
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return fit_to(rgb, self.side)

    @torch.no_grad()
    def run(self, images: list) -> list[Encoded]:
        """A micro-batch of (S, S, 3) uint8 pixels (encoded here) and/or CheckedLatents (a client's bitstream:
        symbols and payload as they are, no encoder) -> one Encoded each, in order; one classifier batch."""
        from .latent_ingest import CheckedLatent
        pix = [(i, im, {}) for i, im in enumerate(images) if not isinstance(im, CheckedLatent)]
        samples = [None] * len(images)
        if pix:
            (batch,) = self.enc.finish(self.enc.launch(pix))
            coded = [SimpleNamespace(symbols=batch.symbols[k], payload=None, stored_size=(self.side, self.side))
                     for k in range(len(pix))]
            self.enc.code(coded, [(batch, k) for k in range(len(pix))], threads=1)
            for (i, _, _), s in zip(pix, coded):
                samples[i] = s
        for i, im in enumerate(images):
            if isinstance(im, CheckedLatent):
                samples[i] = SimpleNamespace(symbols=im.symbols, payload=im.payload, stored_size=(im.header.H, im.header.W))
        preds = self.classify_symbols([s.symbols for s in samples])
        return [Encoded(s.symbols, s.payload, len(self.enc.bitstream(s)), p) for s, p in zip(samples, preds)]

    def classify_symbols(self, symbols: list[np.ndarray]) -> list[list[dict]]:
        """Top-5 of (C, h, w) uint8 symbols, never decoded to pixels and never through the encoder; [] each without a
        classifier. One batch per latent shape (a fixed-size store has one)."""
        out: list[list[dict]] = [[] for _ in symbols]
        if self.classifier is None or not symbols:
            return out
        by_shape: dict[tuple, list[int]] = {}
        for i, s in enumerate(symbols):
            by_shape.setdefault(tuple(s.shape), []).append(i)
        for idx in by_shape.values():
            for i, p in zip(idx, self._predict(np.stack([symbols[i] for i in idx]))):
                out[i] = p
        return out

    @property
    def precision(self) -> str:
        """The store's encoder arithmetic (bf16 | fp32): what a client's encoder must run to give the same symbols."""
        return self.enc.policy.dtype

    def codec_answer(self, if_none_match: str | None = None) -> tuple[int, bytes, dict]:
        """GET /v1/codec: (status, body, headers), see latent_ingest.codec_response."""
        from .latent_ingest import codec_response
        return codec_response(self.codec_file, self.model, self.precision, "native" if self.native else "fixed",
                              self.side, if_none_match)

    def check_latent(self, data: bytes, max_pixels: int, full: bool = False):
        """A client's bitstream -> latent_ingest.CheckedLatent for `run`, or Rejected: checked in full against this
        store (codec, S x S or any size when `full`, the pixel path's limits, CRC, every lane) and re-coded to
        its tables when needed."""
        from .latent_ingest import LatentBounds, check_latent_upload
        bounds = LatentBounds(max_pixels=max_pixels, side=None if full else self.side)
        if self._codec_tables is None:  # the served codec is frozen: its tables never change
            from ..codec.entropy.rans_v2 import RANS_V2
            self._codec_tables = self.model.entropy.tables(RANS_V2.id)
        return check_latent_upload(data, self.model, bounds, self.enc.tables, self._codec_tables)

    def _predict(self, symbols: np.ndarray) -> list[list[dict]]:
        return self.predict_latents(self.centres_t[torch.from_numpy(symbols).to(self.device).long()])

    @torch.no_grad()
    def predict_latents(self, x: torch.Tensor) -> list[list[dict]]:
        """Top-5 of dequantized latents (B, C, h, w) float (the centres' values, or a view computed from them)."""
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            logits = self.classifier(x).float()
        p = torch.softmax(logits, 1)
        k = min(5, p.shape[1])
        top = p.topk(k, 1)
        return [[{"label": self.label_names[int(j)], "score": round(float(v), 6)} for v, j in zip(vs, js)]
                for vs, js in zip(top.values.cpu(), top.indices.cpu())]

    def bitstream(self, symbols_shape: tuple, payload: bytes, size: tuple | None = None) -> bytes:
        """The complete bitstream of stored symbols' payload; `size`: the image's (H, W) (None: S x S)."""
        return self.enc.bitstream(SimpleNamespace(symbols=np.empty(symbols_shape, np.uint8), payload=payload,
                                                  stored_size=size or (self.side, self.side)))

    @torch.no_grad()
    def reconstruction_png(self, symbols: np.ndarray, size: tuple | None = None, max_side: int | None = None) -> bytes:
        """The decoder's pixels for stored symbols at the image's `size` (None: S x S), as a PNG (decoded on demand,
        tile by tile above a megapixel, never kept); `max_side`: scaled down to it, a preview."""
        from ..codec.api import symbols_to_rgb
        from .native import preview_png
        rgb = symbols_to_rgb(self.model, symbols, tuple(size) if size else (self.side, self.side))
        return preview_png(rgb, max_side)
