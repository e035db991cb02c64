"""`latentstore predict`: a classify run's top-k labels for a store's samples, or for image files, outside the
service. Images are brought to the run's training store geometry and encoded by that store's codec (the same
encoder as conversion and the service); the cResNet reads their latents. Nothing is decoded to pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .data.imageio import IMAGE_EXTENSIONS
from .errors import LatentstoreError, UsageError


@dataclass
class Prediction:
    source: str  # the file, or the store sample's source name and index
    predictions: list = field(default_factory=list)  # [{"label", "score"}], best first
    label: str | None = None  # a store sample's recorded label, when it has one
    error: str | None = None  # why an image could not be read (then no predictions)


def is_store(path: str) -> bool:
    from .store.remote import is_remote
    return is_remote(path) or any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", "schema.json"))


def image_files(sources: list[str]) -> list[str]:
    """Image files named, or found (sorted, recursively) in folders named."""
    out = []
    for s in sources:
        if os.path.isdir(s):
            for root, dirs, files in os.walk(s):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(s):
            out.append(s)
        else:
            raise UsageError(f"{s}: no such image, folder or store")
    if not out:
        raise UsageError(f"{', '.join(sources)}: no images found")
    return out


class Predictor:
    """A classify run (--input latent) with its training store's codec, geometry and label names."""

    def __init__(self, run: str, device: str = "auto"):
        import json

        from latentstore_train.joint import load_classifier

        from .device import resolve_device
        from .serve.engine import classifier_labels
        from .store import open_store
        cfg_path = os.path.join(run, "config.json")
        if not os.path.isfile(cfg_path):
            raise UsageError(f"--run {run}: not a classify run (no config.json)")
        with open(cfg_path) as f:
            cfg = json.load(f)
        from .models.resnet import ARCHS
        if cfg.get("model") not in ARCHS or "num_classes" not in cfg:  # a seg or joint run, or no run at all
            raise UsageError(f"--run {run}: not a `train classify` run (model {cfg.get('model')!r})")
        if cfg.get("input") != "latent":
            raise UsageError(f"--run {run}: trained on --input {cfg.get('input')}; predict reads latents, so it "
                             "takes runs trained on a latent store (--input latent)")
        self.run, self.device = run, resolve_device(device)
        try:
            self.store = open_store(cfg["train"])  # its codec, tables and size define what the classifier reads
        except LatentstoreError as e:
            raise UsageError(f"--run {run}: its training store {cfg['train']} cannot be opened ({e}); predict "
                             "encodes images with that store's codec") from None
        net, _ = load_classifier(run, self.store.schema.codec["C"])
        self.net = net.to(self.device).eval()
        self.labels = classifier_labels(cfg)
        self.centres = torch.as_tensor(self.store.centres, dtype=torch.float32, device=self.device)
        self._engine = None

    @property
    def engine(self):
        """The store's encoder (conversion's), built on first use: a store SRC needs none."""
        if self._engine is None:
            from .serve.engine import IngestEngine
            from .store.remote import location_for
            from .store.schema import CODEC_FILE
            codec = location_for(self.store.path).local_copy(CODEC_FILE)
            self._engine = IngestEngine(codec, None, self.device)
            try:
                self._engine.bind(self.store.schema)
            except UsageError as e:
                raise UsageError(f"--run {self.run}: predicting images needs a fixed-size bitstream v2 training "
                                 f"store ({e})") from None
        return self._engine

    @torch.no_grad()
    def top_k(self, symbols: np.ndarray, k: int) -> list[list[dict]]:
        from .device import autocast_for
        x = self.centres[torch.from_numpy(np.ascontiguousarray(symbols)).to(self.device).long()]
        with autocast_for(self.device):
            p = torch.softmax(self.net(x).float(), 1)
        top = p.topk(min(k, p.shape[1]), 1)
        return [[{"label": self.labels[int(j)], "score": round(float(v), 6)} for v, j in zip(vs, js)]
                for vs, js in zip(top.values.cpu(), top.indices.cpu())]

    def check_store(self, store) -> None:
        a, b = self.store.schema.codec, store.schema.codec
        if a["weights_hash"] != b["weights_hash"]:
            raise UsageError(f"{store.path} holds latents of codec {b['id']} ({b['weights_hash']}), but the run was "
                             f"trained on {a['id']} ({a['weights_hash']}) latents: convert it with that codec")
        if store.mode != "fixed" or store.latent_shape != self.store.latent_shape:
            raise UsageError(f"{store.path}: its latents are not {self.store.latent_shape} like the run's training "
                             f"store (convert it at --size {self.store.schema.policy['size']})")

    def from_store(self, path: str, k: int, batch_size: int) -> list[Prediction]:
        from .store import open_store
        store = open_store(path)
        self.check_store(store)
        names = list(store.schema.label_names)
        out = []
        for b0 in range(0, len(store), batch_size):
            idx = list(range(b0, min(len(store), b0 + batch_size)))
            for i, preds in zip(idx, self.top_k(store.read_batch(idx), k)):
                src = os.path.basename(str(store.meta(i).get("source", ""))) or "?"
                lab = int(store.labels[i])
                out.append(Prediction(f"#{i} {src}", preds, names[lab] if 0 <= lab < len(names) else None))
        return out

    def from_images(self, files: list[str], k: int, batch_size: int) -> list[Prediction]:
        from .data.imageio import load_image
        eng = self.engine
        out: list[Prediction] = []
        for b0 in range(0, len(files), batch_size):
            batch, rows = [], []
            for f in files[b0: b0 + batch_size]:
                try:
                    batch.append(eng.prepare(load_image(f)))
                    rows.append(Prediction(f))
                except LatentstoreError as e:  # an unreadable image: recorded, the others go on
                    out.append(Prediction(f, error=str(e)))
            if not batch:
                continue
            (encoded,) = eng.enc.finish(eng.enc.launch([(i, im, {}) for i, im in enumerate(batch)]))
            for row, preds in zip(rows, self.top_k(encoded.symbols, k)):
                row.predictions = preds
            out += rows
        order = {f: i for i, f in enumerate(files)}
        return sorted(out, key=lambda p: order[p.source])


def predict(sources: list[str], run: str, k: int = 5, device: str = "auto", batch_size: int = 16) -> list[Prediction]:
    """Top-k labels of run's classifier for a store (one SRC) or for image files and folders."""
    if k < 1:
        raise UsageError(f"--top-k must be >= 1 (got {k})")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size})")
    if not os.path.isdir(run):
        raise UsageError(f"--run {run}: no such run directory")
    stores = [s for s in sources if is_store(s)]
    if stores and len(sources) > 1:
        raise UsageError("give one store, or image files and folders, not both")
    p = Predictor(run, device)
    if stores:
        return p.from_store(stores[0], k, batch_size)
    return p.from_images(image_files(sources), k, batch_size)


def format_table(rows: list[Prediction]) -> str:
    width = min(48, max([len(r.source) for r in rows] + [6]))
    lines = [f"{'source':{width}}  predictions (label score), best first" + ("; true label" if any(r.label for r in rows)
                                                                             else "")]
    for r in rows:
        if r.error:
            lines.append(f"{r.source:{width}}  error: {r.error}")
            continue
        preds = "  ".join(f"{p['label']} {p['score']:.3f}" for p in r.predictions)
        lines.append(f"{r.source:{width}}  {preds}" + (f"   [{r.label}]" if r.label else ""))
    return "\n".join(lines)
