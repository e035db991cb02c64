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
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentstore.data.datasets import LatentMapDataset, ResumableLoader
from latentstore.device import autocast_for, resolve_device
from latentstore.errors import UsageError
from latentstore.models.resnet import build
from latentstore_train.common import batch_input, init_dist as _dist, run_epochs  # shared with seg


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


def make_dataset(kind: str, path: str, train: bool, crop: int, seed: int, decode_on: str = "cpu"):
    """-> (dataset, num_classes, in_channels, centres): centres (L,) for latent stores, else None."""
    from latentstore.store.remote import is_remote
    if not path or not (os.path.exists(path) or (kind != "rgb" and is_remote(path))):  # a usage error (exit 2)
        what = "store" if kind in ("latent", "recon") else "image folder or .npz"
        raise UsageError(f"--{'train' if train else 'val'} {path or '(empty)'}: no such {what}")
    if kind == "latent":
        ds = LatentMapDataset(path, train=train, crop=crop or None, seed=seed,
                              output="payload" if decode_on == "gpu" else "symbols")
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
def evaluate(model, loader, centres, device: str, decoder=None) -> dict:
    model.eval()
    n = top1 = top5 = 0
    loss = 0.0
    for b in loader:
        x = batch_input(b, centres, device, decoder)
        y = b["label"].to(device)
        with autocast_for(device):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, 1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(1).sum().item()
        n += len(y)
    model.train()
    return {"val_loss": loss / max(n, 1), "top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "n": n}


def train(cfg: ClassifyConfig, out_dir: str, progress: bool = True) -> dict:
    device = resolve_device(cfg.device)
    rank, world, local = _dist(device)
    if device == "cuda":
        torch.cuda.set_device(local)
    os.makedirs(out_dir, exist_ok=True)
    if cfg.cache_dir:  # read by every loader worker's shard cache (store/remote/blobs.py); bounded by LATENTSTORE_CACHE_DIR_MB
        os.environ["LATENTSTORE_CACHE_DIR"] = os.path.abspath(cfg.cache_dir)
    train_ds, n_classes, cin, centres = make_dataset(cfg.input, cfg.train, True, cfg.crop, cfg.seed, cfg.decode_on)
    val_ds, _, _, _ = make_dataset(cfg.input, cfg.val, False, cfg.crop, cfg.seed, cfg.decode_on)
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
                "in_channels": cin, "train_samples": len(train_ds), "val_samples": len(val_ds)}

    def step_loss(b):
        x = batch_input(b, centres, device, decoders[0])
        y = b["label"].to(device, non_blocking=True)
        with autocast_for(device):
            return F.cross_entropy(ddp_model(x).float(), y)

    def end_epoch(epoch, train_s):
        return evaluate(model, val_loader, centres, device, decoders[1]) if rank == 0 else {}

    run = run_epochs(cfg, out_dir, model, opt, loader, resolved, step_loss, end_epoch, rank, world, progress)
    return {**run, "config": resolved}


if __name__ == "__main__":  # python -m latentstore_train.classify: the same options as `latentstore train classify`
    import sys

    from latentstore.cli import main
    main(["train", "classify", *sys.argv[1:]], prog_name="latentstore")
