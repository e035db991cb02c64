"""PyTorch readers over latent stores, built for training throughput and exact resume.

One order for everything: `epoch_indices(n, epoch, seed, rank, world)` is a seeded permutation,
padded by wrapping so every rank gets the same count, split rank::world. Augmentation draws from
a counter-based generator keyed by (seed, epoch, sample), so a sample's crop and flip do not depend on the
worker that reads it, and the batches are the same whatever the number of workers.

- `LatentMapDataset` + `EpochSampler`: random access (Zarr, or WebDataset through its tar index).
- `LatentBatchStream`: an IterableDataset that yields whole batches; worker w builds batches
  w, w + W, ..., which the DataLoader interleaves back in order (use batch_size=None).
- `ResumableLoader`: wraps either; `state_dict()` = (epoch, batches done), and
  `load_state_dict` continues the epoch at exactly the next batch.
Symbols travel as uint8 (4x fewer bytes than fp32); `dequantize_on(device)` makes floats there.
Every read checks what it reads (store/backends): a corrupt sample raises CorruptSampleError, one line naming
the store, shard and sample. With skip_corrupt=True it is left out of its batch instead, and the batch says so:
`batch["corrupt"]` holds the indices left out and `batch["corrupt_errors"]` their errors (training counts them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..errors import LatentstoreError
from ..store import LatentStore, open_store
from ..store.backends import CorruptSampleError


def epoch_indices(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                  pad: bool = True) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if pad and n % world:
        order = np.concatenate([order, order[: world - n % world]])  # every rank sees as many samples
    return order[rank::world]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a counter-based generator."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices, n: int, stream: int = 1) -> np.ndarray:
    """(len(indices), n) uniforms in [0, 1) that depend on (seed, epoch, index, stream) alone, so a sample's
    draws do not depend on the worker, the batch or its neighbours. Counter-based and vectorised over a
    batch: a numpy Generator per sample cost 30 us, a fifth of a whole ls-c32 sample's loading."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(1, seed, np.uint64))
        key = _splitmix64(key ^ np.uint64(epoch & (2 ** 64 - 1)))
        key = _splitmix64(key ^ np.uint64(stream))
        key = _splitmix64(key ^ idx)  # (B,)
        z = _splitmix64(key[:, None] + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64)[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class LatentAugment:
    """Latent-space augmentation: random crop + horizontal flip (train), centre crop (eval).
    `params` draws each sample's crop and flip from (seed, epoch, index), `apply` / `apply_batch` do them: the GPU
    decode path ships the params, and the segmentation pixel datasets crop their images with the same draws."""

    def __init__(self, crop: int | None = 28, train: bool = True, flip: bool = True):
        self.crop, self.train, self.flip = crop, train, flip

    def params(self, h: int, w: int, seed: int, epoch: int, indices) -> np.ndarray:
        """(B, 5) int64: (y, x, crop height, crop width, flip) in latent cells, one row per index."""
        u = sample_uniforms(seed, epoch, indices, 3)
        out = np.zeros((len(u), 5), np.int64)
        ch, cw = h, w
        if self.crop and (h > self.crop or w > self.crop):
            ch, cw = min(self.crop, h), min(self.crop, w)
            if self.train:
                out[:, 0] = np.minimum((u[:, 0] * (h - ch + 1)).astype(np.int64), h - ch)
                out[:, 1] = np.minimum((u[:, 1] * (w - cw + 1)).astype(np.int64), w - cw)
            else:
                out[:, 0], out[:, 1] = (h - ch) // 2, (w - cw) // 2
        out[:, 2], out[:, 3] = ch, cw
        out[:, 4] = (u[:, 2] < 0.5) if self.train and self.flip else 0
        return out

    @staticmethod
    def apply(sym: np.ndarray, mask: np.ndarray | None, p) -> tuple[np.ndarray, np.ndarray | None]:
        """One sample: (C, h, w) symbols and its (8h, 8w) mask (or None), cropped and flipped by one params row."""
        y, x, ch, cw, flip = (int(v) for v in p)
        sym = sym[:, y: y + ch, x: x + cw]
        if mask is not None:  # masks live at 8x the latent resolution
            mask = mask[y * 8: (y + ch) * 8, x * 8: (x + cw) * 8]
        if flip:
            sym = sym[:, :, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        return np.ascontiguousarray(sym), (np.ascontiguousarray(mask) if mask is not None else None)

    @staticmethod
    def apply_batch(syms: np.ndarray, p: np.ndarray) -> np.ndarray:
        """(B, C, h, w) -> (B, C, ch, cw): every sample's crop and flip into one array (crops share a size).
        Slices per sample: a 4-index fancy gather was slower than the whole decode."""
        ch, cw = int(p[0, 2]), int(p[0, 3])
        out = np.empty((len(p), syms.shape[1], ch, cw), syms.dtype)
        for k, (y, x, _, _, flip) in enumerate(p.tolist()):
            src = syms[k, :, y: y + ch, x: x + cw]
            out[k] = src[:, :, ::-1] if flip else src
        return out


class LatentMapDataset(Dataset):
    """Random access to a store's samples. Index with an int, or (index, epoch) from EpochSampler."""

    def __init__(self, path: str, train: bool = True, crop: int | None = 28, output: str = "symbols",
                 seed: int = 0, flip: bool = True, skip_corrupt: bool = False):
        if output not in ("symbols", "float", "payload"):
            raise ValueError("output must be 'symbols', 'float' or 'payload' (compressed bytes, decoded on the GPU)")
        self.path, self.output, self.seed = path, output, seed
        self.skip_corrupt = skip_corrupt  # leave corrupt samples out of their batch (marked), instead of raising
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

    def _params(self, idx: list[int], epoch: int, shape: tuple[int, int]) -> np.ndarray:
        return self.augment.params(*shape, self.seed, epoch, idx)  # a sample's draws depend on nothing else

    def _sample(self, i: int, sym: np.ndarray, mask: np.ndarray | None, label: int) -> dict:
        s = self.store
        out = {"latent": torch.from_numpy(s.dequantize(sym)) if self.output == "float" else torch.from_numpy(sym),
               "label": label, "index": i}
        if mask is not None:
            out["mask"] = torch.from_numpy(mask)
        return out

    def sample(self, i: int, epoch: int = 0) -> dict:
        return self.samples([i], epoch)[0]

    def samples(self, indices, epoch: int = 0) -> list[dict]:
        """A batch of samples, decoded in one call where the store allows (Zarr, bitstream v2), and cropped and
        flipped in one gather where the store has no masks. A corrupt sample raises CorruptSampleError; with
        skip_corrupt the batch is read again one sample at a time and each corrupt one becomes a marker
        {"corrupt": index, "error": its one line} (collate gathers them), at no cost while nothing is corrupt."""
        try:
            return self._samples(indices, epoch)
        except CorruptSampleError:
            if not self.skip_corrupt:
                raise
        out = []
        for i in indices:
            try:
                out += self._samples([i], epoch)
            except CorruptSampleError as e:
                out.append({"corrupt": int(i), "error": str(e)})
        return out

    def _samples(self, indices, epoch: int) -> list[dict]:
        s = self.store
        idx = [int(i) for i in indices]
        labels = s.labels[np.asarray(idx, dtype=np.int64)].tolist()
        if self.output == "payload":
            p = self._params(idx, epoch, s.latent_shape[1:])
            return [{"payload": torch.frombuffer(bytearray(pl), dtype=torch.uint8), "augment": torch.from_numpy(p[k]),
                     "label": labels[k], "index": i} for k, (i, pl) in enumerate(zip(idx, s.payloads(idx)))]
        if s.mode == "fixed":
            syms = s.read_batch(idx)
            p = self._params(idx, epoch, syms.shape[2:])
            if not s.schema.has_masks:
                crops = self.augment.apply_batch(syms, p)
                return [self._sample(i, crops[k], None, labels[k]) for k, i in enumerate(idx)]
            pairs = [self.augment.apply(syms[k], s.mask(i), p[k]) for k, i in enumerate(idx)]
        else:  # native size: every sample its own shape
            pairs = []
            for i in idx:
                sym = s.symbols(i)
                pairs.append(self.augment.apply(sym, s.mask(i), self._params([i], epoch, sym.shape[1:])[0]))
        return [self._sample(i, sym, mask, labels[k]) for k, (i, (sym, mask)) in enumerate(zip(idx, pairs))]

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
    lengths become one uint8 tensor plus (B+1,) offsets: the GPU decoder's input. Markers of samples skipped as
    corrupt become `corrupt` (their indices) and `corrupt_errors`; a batch of nothing but those has no data keys."""
    out = {}
    bad = [s for s in samples if "corrupt" in s]
    if bad:
        samples = [s for s in samples if "corrupt" not in s]
        out["corrupt"] = torch.tensor([s["corrupt"] for s in bad], dtype=torch.int64)
        out["corrupt_errors"] = [s["error"] for s in bad]
    for k, v in (samples[0].items() if samples else ()):
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
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True, drop_last: bool = False,
                 skip_corrupt: bool = False):
        self.ds = LatentMapDataset(path, train, crop, output, seed, skip_corrupt=skip_corrupt)
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


def worker_context(dataset):
    """The DataLoader's multiprocessing context for a dataset: 'forkserver' when it reads an object store
    (obstore does not survive fork(), store/remote/location.py), else the platform's default."""
    from ..store.remote import is_remote
    path = getattr(dataset, "path", None) or getattr(getattr(dataset, "ds", None), "path", None)
    if not is_remote(path):
        return None
    import multiprocessing
    ctx = multiprocessing.get_context("forkserver")
    # the server imports the readers once; each worker forks from it with them loaded (not a fresh torch import)
    ctx.set_forkserver_preload(["latentstore.data.datasets", "latentstore.store.remote.blobs"])
    return ctx


class ResumableLoader:
    """A DataLoader that knows where it is in the epoch: state_dict()/load_state_dict() resume exactly."""

    def __init__(self, dataset, batch_size: int, num_workers: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True, pin_memory: bool = False, persistent_workers: bool = False):
        self.dataset, self.batch_size = dataset, batch_size
        self.kw = dict(num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=persistent_workers and num_workers > 0,
                       multiprocessing_context=worker_context(dataset) if num_workers > 0 else None)
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

    def epoch_samples(self) -> int:
        """Samples one epoch reads on this rank (the share the corrupt-sample fraction is measured against)."""
        if self.stream:
            d = self.dataset
            return len(epoch_indices(d.ds.n, 0, d.seed, d.rank, d.world, False))
        return len(epoch_indices(self.sampler.n, 0, 0, self.sampler.rank, self.sampler.world, False))

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
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except LatentstoreError as e:  # from a worker, torch wraps it in its traceback: one line again
                raise one_line(e) from None
            self.batches_done += 1
            yield batch
        self.epoch, self.batches_done = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.batches_done = int(d["epoch"]), int(d["batches_done"])


def one_line(e: LatentstoreError) -> LatentstoreError:
    """Our error as raised in a DataLoader worker: torch re-raises it in the main process with the worker's
    traceback in its message ("Caught X in DataLoader worker 0. Original Traceback ... pkg.X: message");
    the same error with its own one line."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("Caught "):
        return e
    msg = lines[-1].split(f"{type(e).__name__}: ", 1)[-1]
    try:
        return type(e)(msg)
    except TypeError:
        return LatentstoreError(msg)


def dequantize_on(symbols: torch.Tensor, centres, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 symbols -> centre values on `device` (ship uint8 over PCIe, expand on the GPU)."""
    c = torch.as_tensor(np.asarray(centres), dtype=dtype, device=device)
    return c[symbols.to(device, non_blocking=True).long()]
