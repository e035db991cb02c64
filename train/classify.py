"""Classification from latents (cResNet) or from RGB (ResNet on originals or on reconstructions).

    latentstore train classify --input latent --train STORE --val STORE --model cresnet51 --out runs/x
    torchrun --nproc_per_node 8 -m latentstore.cli train classify ...        # DDP, one node
    (python -m latentstore_train.classify takes the same options)

Inputs: `latent` (a latent store), `recon` (a latent store decoded to RGB by its embedded codec),
`rgb` (an image folder, or an .npz of images+labels). SGD with momentum and weight decay, linear
warmup then cosine; bf16 autocast and channels_last on CUDA; top-1/top-5 on centre crops.
Checkpoints (model, optimizer, loader position) resume exactly; the resolved config sits beside
them; log.csv and curves.png record the run.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentstore.data.datasets import LatentMapDataset, ResumableLoader
from latentstore.device import autocast_for, resolve_device
from latentstore.errors import UsageError
from latentstore.models.resnet import build
from latentstore_train.common import CorruptCount, batch_input, init_dist as _dist, run_epochs  # shared with seg


@dataclass
class ClassifyConfig:
    input: str = "latent"  # latent | recon | rgb
    train: str = ""  # training data: a store (latent, recon), or an image folder / .npz (rgb)
    val: str = ""  # validation data, same kind
    model: str = "cresnet51"  # resnet50 | resnet71 | cresnet39 | cresnet51 | cresnet72
    width: int = 64  # base width (64 = the paper's); smaller for CPU-sized experiments
    depth_scale: float = 1.0  # scales every stage's block count
    epochs: int = 10  # passes over the training data
    batch_size: int = 128  # per process
    lr: float = 0.1  # peak learning rate for batch 256 (scaled linearly by the global batch)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 on every weight
    warmup_epochs: float = 0.5  # linear warmup, then cosine to zero
    crop: int = 0  # latent crop side (0: no crop); RGB crop side for image folders (0: 224)
    seed: int = 0  # init and data order
    num_workers: int = 2  # DataLoader workers
    ckpt_every: int = 0  # also checkpoint every N steps (0: once per epoch)
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs); tests and smoke runs
    device: str = "auto"  # auto | cpu | cuda
    decode_on: str = "cpu"  # cpu: loader workers decode; gpu: workers only read bytes, the GPU decodes (v2 stores)
    cache_dir: str = ""  # remote (s3://) stores: a local read-through cache of their shards (LATENTSTORE_CACHE_DIR)
    skip_corrupt: bool = False  # skip (and count) latent samples that fail their checksum or decode, not stop
    max_corrupt_fraction: float = 0.001  # with --skip-corrupt: fail once one epoch skipped more than this share


def make_dataset(kind: str, path: str, train: bool, crop: int, seed: int, decode_on: str = "cpu",
                 skip_corrupt: bool = False):
    """-> (dataset, num_classes, in_channels, centres): centres (L,) for latent stores, else None."""
    from latentstore.store.remote import is_remote
    if not path or not (os.path.exists(path) or (kind != "rgb" and is_remote(path))):  # a usage error (exit 2)
        what = "store" if kind in ("latent", "recon") else "image folder or .npz"
        raise UsageError(f"--{'train' if train else 'val'} {path or '(empty)'}: no such {what}")
    if kind == "latent":
        ds = LatentMapDataset(path, train=train, crop=crop or None, seed=seed,
                              output="payload" if decode_on == "gpu" else "symbols", skip_corrupt=skip_corrupt)
        s = ds.store.schema
        return ds, len(s.label_names), s.codec["C"], ds.store.centres
    from latentstore.data.rgb import ArrayImageDataset, ImageFolderDataset
    if kind == "recon" or path.endswith(".npz"):
        if kind == "recon":
            from latentstore_train.data import decoded_store
            images, labels, n_classes = decoded_store(path)
        else:
            z = np.load(path, allow_pickle=False)
            images, labels, n_classes = z["images"], z["labels"], int(z["num_classes"])
        return ArrayImageDataset(images, labels, train, seed), n_classes, 3, None
    ds = ImageFolderDataset(path, crop or 224, train, seed)
    return ds, len(ds.label_names), 3, None


UNLABELLED = -1  # the label of a sample stored without one (an upload sent with no label)


def check_labels(cfg: ClassifyConfig, train_ds, n_classes: int) -> int:
    """The number of unlabelled training samples (skipped by the loss, said once); none labelled is a usage error."""
    labels = train_ds.store.labels if hasattr(train_ds, "store") else None
    n_unlabelled = int((np.asarray(labels) == UNLABELLED).sum()) if labels is not None else 0
    if n_classes == 0 or (labels is not None and n_unlabelled == len(labels)):
        raise UsageError(f"--train {cfg.train}: no labelled samples; store labels (class folders, or label= on "
                         "upload) to train a classifier")
    if n_unlabelled:
        print(f"--train {cfg.train}: {n_unlabelled} of {len(labels)} samples have no label and are skipped",
              file=sys.stderr)
    return n_unlabelled


def gpu_decoders(cfg: ClassifyConfig, device: str, train_ds, val_ds) -> tuple:
    """(train, val) DeviceDecoders for decode_on="gpu", else (None, None)."""
    if cfg.decode_on == "cpu":
        return None, None
    if cfg.decode_on != "gpu" or cfg.input != "latent":
        raise UsageError("--decode-on is cpu or gpu, and gpu decodes latent stores (--input latent) only")
    if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("--decode-on gpu needs a CUDA device (the decoder is a Triton kernel)")
    from latentstore.data.gpu_decode import DeviceDecoder
    return DeviceDecoder(train_ds.store, device), DeviceDecoder(val_ds.store, device)


def check_same_codec(cfg: ClassifyConfig, train_schema, val_schema) -> None:
    """A cResNet learns one codec's latents: validating it on another's (other C, other centres, other
    features) is meaningless, and crashed only when the first validation ran. Refuse it up front."""
    a, b = train_schema.codec, val_schema.codec
    if (a["weights_hash"], a["C"]) != (b["weights_hash"], b["C"]):
        raise UsageError(f"--train {cfg.train} holds latents of codec {a['id']} (C={a['C']}, weights {a['weights_hash']}) "
                         f"but --val {cfg.val} holds {b['id']} (C={b['C']}, weights {b['weights_hash']}): "
                         "convert both with the same codec")
    tn, vn = list(train_schema.label_names), list(val_schema.label_names)
    if vn != tn[: len(vn)]:  # val may lack trailing classes; label i must mean the same class in both
        raise UsageError(f"--val {cfg.val} labels its {len(vn)} classes differently from --train {cfg.train} "
                         f"({len(tn)} classes): label i must mean the same class in both")


@torch.no_grad()
def evaluate(model, loader, centres, device: str, decoder=None, corrupt: CorruptCount | None = None) -> dict:
    """Loss, top-1 and top-5 on `loader`; `corrupt` counts the samples it skipped as corrupt (skip_corrupt)."""
    model.eval()
    n = top1 = top5 = unlabelled = 0
    loss = 0.0
    for b in loader:
        if corrupt is not None and corrupt.add(b) and "index" not in b:
            continue
        x = batch_input(b, centres, device, decoder)
        y = b["label"].to(device)
        with autocast_for(device):
            logits = model(x).float()
        keep = y != UNLABELLED
        unlabelled += int((~keep).sum())
        logits, y = logits[keep], y[keep]
        if not len(y):
            continue
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, 1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(1).sum().item()
        n += len(y)
    model.train()
    out = {"val_loss": loss / max(n, 1), "top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "n": n,
           "val_unlabelled": unlabelled}
    return {**out, "val_skipped_corrupt": corrupt.end_epoch()} if corrupt is not None else out


def train(cfg: ClassifyConfig, out_dir: str, progress: bool = True) -> dict:
    device = resolve_device(cfg.device)
    rank, world, local = _dist(device)
    if device == "cuda":
        torch.cuda.set_device(local)
    os.makedirs(out_dir, exist_ok=True)
    if cfg.cache_dir:  # read by every loader worker's shard cache (store/remote/blobs.py); bounded by LATENTSTORE_CACHE_DIR_MB
        os.environ["LATENTSTORE_CACHE_DIR"] = os.path.abspath(cfg.cache_dir)
    if cfg.skip_corrupt and cfg.input != "latent":
        raise UsageError("--skip-corrupt reads latent stores (--input latent); other inputs stop at a corrupt sample")
    train_ds, n_classes, cin, centres = make_dataset(cfg.input, cfg.train, True, cfg.crop, cfg.seed, cfg.decode_on,
                                                     cfg.skip_corrupt)
    val_ds, _, _, _ = make_dataset(cfg.input, cfg.val, False, cfg.crop, cfg.seed, cfg.decode_on, cfg.skip_corrupt)
    unlabelled = check_labels(cfg, train_ds, n_classes)
    decoders = gpu_decoders(cfg, device, train_ds, val_ds)
    if cfg.input == "latent":
        check_same_codec(cfg, train_ds.store.schema, val_ds.store.schema)  # before any step, not after an epoch
    torch.manual_seed(cfg.seed)  # here, not earlier: loading data may build (and so seed-consume) a codec
    model = build(cfg.model, in_channels=cin, num_classes=n_classes, width=cfg.width, depth_scale=cfg.depth_scale)
    model = model.to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device == "cuda" else None) \
        if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases: no weight decay
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    loader = ResumableLoader(train_ds, cfg.batch_size, cfg.num_workers, cfg.seed, rank, world,
                             pin_memory=device == "cuda")
    val_loader = ResumableLoader(val_ds, 256, cfg.num_workers, cfg.seed, rank=0, world=1, shuffle=False)
    resolved = {**asdict(cfg), "device_resolved": device, "world_size": world, "num_classes": n_classes,
                "train_unlabelled": unlabelled,
                "in_channels": cin, "train_samples": len(train_ds), "val_samples": len(val_ds)}

    def step_loss(b):
        x = batch_input(b, centres, device, decoders[0])
        y = b["label"].to(device, non_blocking=True)
        with autocast_for(device):
            logits = ddp_model(x).float()
        if (y >= 0).any():  # unlabelled samples (label -1, e.g. uploads sent without a label) carry no loss
            return F.cross_entropy(logits, y, ignore_index=UNLABELLED)
        return logits.sum() * 0.0  # a batch with no label at all: a zero step that keeps DDP's ranks in lockstep

    val_corrupt = CorruptCount(cfg, val_loader.epoch_samples(), "validation") if cfg.skip_corrupt else None

    def end_epoch(epoch, train_s):
        return evaluate(model, val_loader, centres, device, decoders[1], val_corrupt) if rank == 0 else {}

    run = run_epochs(cfg, out_dir, model, opt, loader, resolved, step_loss, end_epoch, rank, world, progress)
    return {**run, "config": resolved}


if __name__ == "__main__":  # python -m latentstore_train.classify: the same options as `latentstore train classify`
    import sys

    from latentstore.cli import main
    main(["train", "classify", *sys.argv[1:]], prog_name="latentstore")
