"""PyTorch readers over latent stores, built for training throughput and exact resume.

One order for everything: `epoch_indices(n, epoch, seed, rank, world)` is a seeded permutation,
padded by wrapping so every rank gets the same count, split rank::world. Augmentation draws from
a generator seeded by (seed, epoch, sample), so a sample's crop and flip do not depend on the
worker that reads it, and the batches are the same whatever the number of workers.

- `LatentMapDataset` + `EpochSampler`: random access (Zarr, or WebDataset through its tar index).
- `LatentBatchStream`: an IterableDataset that yields whole batches; worker w builds batches
  w, w + W, ..., which the DataLoader interleaves back in order (use batch_size=None).
- `ResumableLoader`: wraps either; `state_dict()` = (epoch, batches done), and
  `load_state_dict` continues the epoch at exactly the next batch.
Symbols travel as uint8 (4x fewer bytes than fp32); `dequantize_on(device)` makes floats there.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..store import LatentStore, open_store


def epoch_indices(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                  pad: bool = True) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if pad and n % world:
        order = np.concatenate([order, order[: world - n % world]])  # every rank sees as many samples
    return order[rank::world]


class LatentAugment:
    """Latent-space augmentation: random crop + horizontal flip (train), centre crop (eval).
    `params` draws a sample's crop and flip, `apply` does them: the GPU decode path ships the params."""

    def __init__(self, crop: int | None = 28, train: bool = True, flip: bool = True):
        self.crop, self.train, self.flip = crop, train, flip

    def params(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
        """(y, x, crop height, crop width, flip) in latent cells."""
        y = x = 0
        ch, cw = h, w
        if self.crop and (h > self.crop or w > self.crop):
            ch, cw = min(self.crop, h), min(self.crop, w)
            if self.train:
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
        flip = bool(self.train and self.flip and rng.random() < 0.5)
        return y, x, ch, cw, flip

    @staticmethod
    def apply(sym: np.ndarray, mask: np.ndarray | None, p: tuple) -> tuple[np.ndarray, np.ndarray | None]:
        y, x, ch, cw, flip = p
        sym = sym[:, y: y + ch, x: x + cw]
        if mask is not None:  # masks live at 8x the latent resolution
            mask = mask[y * 8: (y + ch) * 8, x * 8: (x + cw) * 8]
        if flip:
            sym = sym[:, :, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        return np.ascontiguousarray(sym), (np.ascontiguousarray(mask) if mask is not None else None)

    def __call__(self, sym: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
        return self.apply(sym, mask, self.params(*sym.shape[1:], rng))


class LatentMapDataset(Dataset):
    """Random access to a store's samples. Index with an int, or (index, epoch) from EpochSampler."""

    def __init__(self, path: str, train: bool = True, crop: int | None = 28, output: str = "symbols",
                 seed: int = 0, flip: bool = True):
        if output not in ("symbols", "float", "payload"):
            raise ValueError("output must be 'symbols', 'float' or 'payload' (compressed bytes, decoded on the GPU)")
        self.path, self.output, self.seed = path, output, seed
        self.augment = LatentAugment(crop, train, flip)
        self._store: LatentStore | None = None
        self.n = len(self.store)

    @property
    def store(self) -> LatentStore:
        if self._store is None:  # opened lazily: once per DataLoader worker
            self._store = open_store(self.path)
        return self._store

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_store"] = None
        return d

    def __len__(self) -> int:
        return self.n

    def _rng(self, i: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, i, 1])  # a sample's draws depend on nothing else

    def _finish(self, i: int, epoch: int, sym: np.ndarray) -> dict:
        s = self.store
        sym, mask = self.augment(sym, s.mask(i), self._rng(i, epoch))
        out = {"latent": torch.from_numpy(s.dequantize(sym)) if self.output == "float" else torch.from_numpy(sym),
               "label": int(s.labels[i]), "index": i}
        if mask is not None:
            out["mask"] = torch.from_numpy(mask)
        return out

    def sample(self, i: int, epoch: int = 0) -> dict:
        return self.samples([i], epoch)[0]

    def samples(self, indices, epoch: int = 0) -> list[dict]:
        """A batch of samples, decoded in one call where the store allows (Zarr, bitstream v2)."""
        s = self.store
        idx = [int(i) for i in indices]
        if self.output == "payload":
            return [self._payload_sample(i, epoch, p) for i, p in zip(idx, s.payloads(idx))]
        syms = s.read_batch(idx) if s.mode == "fixed" else [s.symbols(i) for i in idx]
        return [self._finish(i, epoch, sym) for i, sym in zip(idx, syms)]

    def _payload_sample(self, i: int, epoch: int, payload: bytes) -> dict:
        """Compressed bytes and the augmentation to apply after the GPU decodes them."""
        _, h, w = self.store.latent_shape
        p = self.augment.params(h, w, self._rng(i, epoch))
        return {"payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8), "augment": torch.tensor(p[:4] + (int(p[4]),)),
                "label": int(self.store.labels[i]), "index": i}

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        return self.sample(int(i), int(epoch))

    def __getitems__(self, keys) -> list[dict]:
        """torch's batched fetch (a DataLoader with a sampler): one decode call per batch."""
        pairs = [k if isinstance(k, tuple) else (k, 0) for k in keys]
        epochs = {int(e) for _, e in pairs}
        if len(epochs) != 1:
            return [self[k] for k in keys]
        return self.samples([i for i, _ in pairs], epochs.pop())


class EpochSampler(Sampler):
    """Yields (index, epoch) for this rank; `start` skips samples already consumed (resume)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1, pad: bool = True):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.pad = n, seed, shuffle, rank, world, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        idx = epoch_indices(self.n, self.epoch, self.seed, self.rank, self.world, self.shuffle, self.pad)
        for i in idx[self.start:]:
            yield int(i), self.epoch

    def __len__(self) -> int:
        return len(epoch_indices(self.n, 0, self.seed, self.rank, self.world, False, self.pad)) - self.start


def collate(samples: list[dict]) -> dict:
    """Stack tensors, tensor-ify ints: works for latent and RGB samples alike. Compressed payloads of different
    lengths become one uint8 tensor plus (B+1,) offsets: the GPU decoder's input."""
    out = {}
    for k, v in samples[0].items():
        if k == "payload":
            parts = [s[k] for s in samples]
            out[k] = torch.cat(parts)
            out["offsets"] = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)
        else:
            out[k] = torch.stack([s[k] for s in samples]) if torch.is_tensor(v) else torch.tensor([s[k] for s in samples])
    return out


class LatentBatchStream(IterableDataset):
    """Whole batches in the global order; worker w of W builds batches w, w+W, ... (DataLoader batch_size=None)."""

    def __init__(self, path: str, batch_size: int, train: bool = True, crop: int | None = 28, output: str = "symbols",
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True, drop_last: bool = False):
        self.ds = LatentMapDataset(path, train, crop, output, seed)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self) -> int:
        n = len(epoch_indices(self.ds.n, 0, self.seed, self.rank, self.world, False))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches() - self.start_batch

    def __iter__(self):
        idx = epoch_indices(self.ds.n, self.epoch, self.seed, self.rank, self.world, self.shuffle)
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        for b in range(self.start_batch + wid, self.num_batches(), nw):
            chunk = idx[b * self.batch_size: (b + 1) * self.batch_size]
            yield collate(self.ds.samples(chunk, self.epoch))


class ResumableLoader:
    """A DataLoader that knows where it is in the epoch: state_dict()/load_state_dict() resume exactly."""

    def __init__(self, dataset, batch_size: int, num_workers: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True, pin_memory: bool = False, persistent_workers: bool = False):
        self.dataset, self.batch_size = dataset, batch_size
        self.kw = dict(num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=persistent_workers and num_workers > 0)
        self.stream = isinstance(dataset, LatentBatchStream)
        self.sampler = None if self.stream else EpochSampler(len(dataset), seed, shuffle, rank, world)
        self.epoch, self.batches_done = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def __len__(self) -> int:
        if self.stream:
            return self.dataset.num_batches()
        return math.ceil(len(epoch_indices(self.sampler.n, 0, 0, self.sampler.rank, self.sampler.world, False))
                         / self.batch_size)

    def __iter__(self):
        if self.stream:
            self.dataset.set_epoch(self.epoch)
            self.dataset.start_batch = self.batches_done
            loader = DataLoader(self.dataset, batch_size=None, **self.kw)
        else:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.batches_done * self.batch_size
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, collate_fn=collate,
                                **self.kw)
        for batch in loader:
            self.batches_done += 1
            yield batch
        self.epoch, self.batches_done = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.batches_done = int(d["epoch"]), int(d["batches_done"])


def dequantize_on(symbols: torch.Tensor, centres, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 symbols -> centre values on `device` (ship uint8 over PCIe, expand on the GPU)."""
    c = torch.as_tensor(np.asarray(centres), dtype=dtype, device=device)
    return c[symbols.to(device, non_blocking=True).long()]
