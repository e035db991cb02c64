"""What the service computes per upload: pixels -> the store's geometry -> symbols + payload (conversion's own
encoder) -> top-5 predictions of a classify run's cResNet on the latents (never decoded to pixels).

`prepare` runs in the decode thread pool (one image); `run` in the batcher's thread (a micro-batch), on
CUDA when there is one (the encoder under conversion's bf16 autocast) and on the CPU otherwise. The v2
payloads are coded by numba on the host (a micro-batch is small; the GPU rANS path wants 256 images).
"""
from __future__ import annotations

import copy
import io
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
        self.side = 0
        self.centres_t = torch.as_tensor(base.centres(), dtype=torch.float32, device=self.device)

    def new_schema(self, side: int, shard_size: int, name: str) -> StoreSchema:
        """The schema of a new service store: fixed size, bitstream v2 coded with the codec's own tables (so a
        GET /latent bitstream decodes with `latentstore decompress` alone)."""
        m = self.model
        return StoreSchema(
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

    def bind(self, schema: StoreSchema) -> None:
        """Encode for this store: its codec (checked), its size, its tables."""
        if schema.codec["weights_hash"] != self.model.hash:
            raise UsageError(f"the store holds latents of codec {schema.codec['id']} ({schema.codec['weights_hash']}), "
                             f"not of --codec {self.model.name} ({self.model.hash})")
        if schema.codec.get("coder") != RANS or schema.policy.get("mode") != "fixed":
            raise UsageError("the service appends to fixed-size bitstream v2 stores only")
        self.side = int(schema.policy["size"])
        policy, _ = resume_policy(schema.policy, self.device, None, False)  # the store's recorded arithmetic
        self.enc = Encoder(self.model, self.device, schema, entropy="numba", policy=policy)
        self.enc.set_tables(schema_tables(schema, RANS))

    # ------------------------------------------------------------------------ per image / per batch
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return fit_to(rgb, self.side)

    @torch.no_grad()
    def run(self, images: list[np.ndarray]) -> list[Encoded]:
        ok = [(i, im, {}) for i, im in enumerate(images)]
        (batch,) = self.enc.finish(self.enc.launch(ok))
        samples = [SimpleNamespace(symbols=batch.symbols[i], payload=None, stored_size=(self.side, self.side))
                   for i in range(len(images))]
        self.enc.code(samples, [(batch, i) for i in range(len(images))], threads=1)
        preds = self._predict(batch.symbols) if self.classifier is not None else [[] for _ in images]
        return [Encoded(s.symbols, s.payload, len(self.enc.bitstream(s)), p) for s, p in zip(samples, preds)]

    def _predict(self, symbols: np.ndarray) -> list[list[dict]]:
        x = self.centres_t[torch.from_numpy(symbols).to(self.device).long()]
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            logits = self.classifier(x).float()
        p = torch.softmax(logits, 1)
        k = min(5, p.shape[1])
        top = p.topk(k, 1)
        return [[{"label": self.label_names[int(j)], "score": round(float(v), 6)} for v, j in zip(vs, js)]
                for vs, js in zip(top.values.cpu(), top.indices.cpu())]

    def bitstream(self, symbols_shape: tuple, payload: bytes) -> bytes:
        return self.enc.bitstream(SimpleNamespace(symbols=np.empty(symbols_shape, np.uint8), payload=payload,
                                                  stored_size=(self.side, self.side)))

    @torch.no_grad()
    def reconstruction_png(self, symbols: np.ndarray) -> bytes:
        """The decoder's pixels for stored symbols, as a PNG (decoded on demand, never kept)."""
        from ..codec.api import symbols_to_rgb
        rgb = symbols_to_rgb(self.model, symbols, (self.side, self.side))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return buf.getvalue()
