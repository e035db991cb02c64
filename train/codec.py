"""Train a codec operating point: latentstore train codec --name ls-c16 --out runs/ls-c16
(also: python -m latentstore_train.codec ...)

Data: random crops of the offline photos' training split (latentstore.data.photos), flips included.
Loss (Torfason et al. eq. 1): MSE(x, x_hat) on the 0..255 scale + beta * max(H_soft - H_t, 0),
with H_t = target_bpp * 64 / C bits per symbol (latentstore_train.codec_loss).
Sigma schedule: the soft assignment's sharpness rises geometrically from `sigma` to `sigma_final`
over the run, so the soft histogram (the rate term) tracks the hard one ever more closely (`sigma_hold_from`
stops it rising from a step on).
Learning rate: `lr`, divided by 10 for the last 20% of steps (or a cosine schedule).
Precision: bf16 autocast (channels_last) on CUDA and on CPUs with native bf16 (AVX512_BF16 / AMX), fp32
elsewhere; the loss (MSE, MS-SSIM, the rate hinge) is always computed in fp32, outside autocast.
Finetuning: `init_from` starts from a shipped codec's weights (a fresh optimizer), e.g. a longer-trained
ls-c32. `max_minutes` / `max_cpu_seconds` bound one invocation's wall / training CPU time, and SIGTERM / SIGINT stop
it after the current step: each checkpointed (run again to resume). Checkpoints (every ckpt_every steps and every
ckpt_minutes) resume exactly (latentstore_train.checkpoint); the log goes to log.csv, one row per log_every steps,
and validation over training to val.csv (latentstore_train.codec_progress). The long CPU programme that trains
every point round-robin is latentstore_train.codec_programme.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from latentstore.codec.model import CodecConfig, LatentCodec
from latentstore.codec.entropy.rans_v2 import tables_from_counts
from latentstore.codec.zoo import OPERATING_POINTS, save_codec
from latentstore_train import codec_data
from latentstore_train.codec_data import symbol_counts
from latentstore_train.codec_loss import compression_loss, loss_terms  # noqa: F401 (benchmarks, tests)
from latentstore.device import resolve_device
from latentstore.errors import UsageError
from latentstore_train.checkpoint import StopSignals, has_checkpoint, load_checkpoint, save_checkpoint
from latentstore_train.codec_progress import StepLog, Validator, plot_log
from latentstore_train.ema import WeightEMA
from latentstore_train.precision import cpu_has_native_bf16, resolve_precision, train_autocast  # noqa: F401


@dataclass
class CodecTrainConfig:
    codec: CodecConfig = field(default_factory=CodecConfig)  # the operating point being trained
    steps: int = 6000  # optimizer steps (these defaults are the "cpu" recipe)
    batch_size: int = 8  # crops per step
    crop: int = 128  # crop side in pixels (multiple of 8)
    lr: float = 3e-4  # Adam learning rate
    lr_schedule: str = "step"  # step: x0.1 for the last 20% of steps | cosine: warmup, then cosine to lr/100
    warmup: int = 0  # linear warmup steps (cosine schedule)
    sigma_final: float = 8.0  # sigma at the last step; starts at codec.sigma
    photo_side: int = 512  # shorter side photos are downscaled to (0: full resolution, with min_scale < 1)
    min_scale: float = 1.0  # multi-scale crops: a crop covers crop/s photo pixels, s log-uniform in [min_scale, 1]
    distortion: str = "mse"  # mse (the paper's operating points) | msssim (the -msssim variants)
    msssim_weight: float = 3000.0  # weight of (1 - MS-SSIM) in the msssim loss (MSE on 0..255 is ~10^2)
    seed: int = 0  # seeds the crop sampler and the initialisation
    ckpt_every: int = 200  # steps between checkpoints
    device: str = "auto"  # auto | cpu | cuda
    max_photos: int = 0  # 0 = all training photos; >0 = the first N (tests)
    stop_at: int = 0  # stop this invocation after this step, schedule unchanged (0 = run to `steps`); resume tests
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 | fp32 | bf16
    channels_last: bool = True  # NHWC activations under bf16 (what oneDNN's and the tensor cores' kernels want)
    init_from: str = ""  # start from this codec's weights (zoo name or .safetensors file): finetune, not from scratch
    sigma_start: float = 0.0  # the soft assignment's sharpness at step 0 (0: the codec config's sigma)
    mse_weight: float = 0.0  # msssim distortion: weight of MSE (0..255 scale) added to it (keeps PSNR from sagging)
    extra_photos: bool = False  # also train on the extra offline photos of codec_data.EXTRA_PHOTOS
    max_minutes: float = 0.0  # stop this invocation after this many wall-clock minutes, checkpointed (0 = no limit)
    threads: int = 0  # torch CPU threads (0: torch's default)
    max_cpu_seconds: float = 0.0  # stop this invocation after this much training CPU time, all threads (0: none)
    ckpt_minutes: float = 5.0  # also checkpoint every this many wall-clock minutes (0: by ckpt_every steps only)
    log_every: int = 100  # steps per row of log.csv (means over the window): the log stays small over long runs
    val_cpu_minutes: float = 0.0  # validate (real bytes, PSNR, MS-SSIM) every this many training CPU-minutes (0: never)
    results_dir: str = ""  # also write the validation curve there, as <name>-val.csv and <name>-val.png
    rate_scale: float = 1.0  # H_t = rate_scale * target_bpp * 64 / C (> 1: the v2 coder delivers below H_soft)
    freeze_centres_at: int = 0  # from this step the quantizer's centres stop moving (0: never): stops two centres merging
    ema_decay: float = 0.0  # keep an EMA of the weights (0: none): validation measures it and an export installs it
    sigma_hold_from: int = 0  # from this step sigma stays at its value there (0: it anneals to the last step)
    cooldown_from: int = 0  # from this step lr falls linearly to lr/100 over cooldown_steps (0: none): ends a
    cooldown_steps: int = 10000  # long schedule early when the budget won't reach its end (sigma keeps its own)


# Training recipes: what `latentstore train codec --all --recipe R` uses for every operating point.
RECIPES = {
    # what the shipped CPU-trained codecs used (~40 CPU-minutes each)
    "cpu": dict(N=64, steps=6000, batch_size=8, crop=128, photo_side=512, min_scale=1.0, lr=3e-4, lr_schedule="step"),
    # a GPU (one at a time: two trainings on one GPU ran 8x slower each): the paper's N=128 trunk, 256-px
    # multi-scale crops of the full-resolution photos, a long cosine schedule; bf16 and the fused kernels on CUDA
    "gpu": dict(N=128, steps=40000, batch_size=16, crop=256, photo_side=0, min_scale=0.25, lr=2e-4,
                lr_schedule="cosine", warmup=1000),
    # seconds on a CPU: checks the whole path (tests, a quick look)
    # finetune a shipped codec on the CPU in bf16 for MS-SSIM (+ half-weight MSE), 192-px crops of 47 photos
    # (extras included): issue 22's ls-c32 ran it twice (benchmarks/results/codec_training/ls-c32-finetune.md)
    "cpu-finetune": dict(N=64, steps=3000, batch_size=4, crop=192, photo_side=768, min_scale=0.5, lr=1e-4,
                         lr_schedule="cosine", warmup=100, sigma_start=8.0, sigma_final=8.0, distortion="msssim",
                         mse_weight=0.5, extra_photos=True, ckpt_every=100, init_from="{name}"),
    # the long CPU programme (issue 29; latentstore_train.codec_programme runs the three points): picked by
    # benchmarks/codec_pilots.py at 200 training CPU-s each on ls-c16 (results/codec_training/pilots.md): bf16 ran
    # 3.1x the fp32 steps per CPU-second, 128 px x 8 beat 192 px x 4 on validation, 2 threads in one process ran
    # 10x fewer steps per CPU-second than 1 on the shared machine (so: one thread a process, --workers 2), N=128
    # makes a 30-MB checkpoint. H_t x rate_scale: the shipped codecs delivered 67% / 69% / 74% of the target rate
    # (the v2 context coder codes below the soft entropy the hinge sees), so the hinge aims that much higher.
    # 200k steps was planned as ~4.4 CPU-hours a point at the pilots' 12.6 steps per CPU-second (bf16, AVX-512);
    # in fp32 on an AVX2-only machine (~1.5 steps per CPU-second) it is ~36 CPU-hours, so issue 29's budget ended
    # mid-schedule (README, "Training the codecs"); a cool-down from there (cooldown_from) gained nothing
    # (results/codec_training/cooldown-pilot-2026-12-07/).
    # Changed mid-run: results/codec_training/<point>-events.csv has each change at its step (train() records
    # them at resume), programme-NOTES.md the measurements and why (rate_scale from v3's bytes; ls-c8's rollback;
    # ls-c8's lr / 3 from step 128,606, after two branches at 3e-4 degraded from ~136k: ls-c8-pilots-128k.md).
    "cpu-long": dict(N=64, steps=200000, batch_size=8, crop=128, photo_side=512, min_scale=1.0,
                     lr={"ls-c8": 1e-4, "ls-c16": 3e-4, "ls-c32": 3e-4},
                     lr_schedule="cosine", warmup=500, extra_photos=True, threads=1, ckpt_minutes=5.0,
                     ckpt_every=10 ** 9, log_every=100, val_cpu_minutes=10.0,
                     rate_scale={"ls-c8": 1.80, "ls-c16": 1.59, "ls-c32": 1.58},
                     freeze_centres_at={"ls-c8": 120561, "ls-c16": 0, "ls-c32": 0}, ema_decay=0.999),
    "smoke": dict(N=16, steps=8, batch_size=2, crop=64, photo_side=256, min_scale=0.5, lr=3e-4, lr_schedule="cosine",
                  warmup=2, max_photos=3, ckpt_every=4),
}
FAMILIES = {"mse": "", "msssim": "-msssim"}  # distortion -> zoo-name suffix (CompressAI's zoo offers both)


def codec_config_for(name: str, beta: float | None = None, N: int | None = None) -> CodecConfig:
    """The config of a named operating point (C and target bpp from the paper; an -msssim name is the same
    point trained for MS-SSIM), with optional overrides."""
    base = name[: -len("-msssim")] if name.endswith("-msssim") else name
    if base not in OPERATING_POINTS:
        raise UsageError(f"unknown operating point {name!r} (known: {', '.join(OPERATING_POINTS)}, "
                         "each also as NAME-msssim)")
    C, bpp = OPERATING_POINTS[base]
    cfg = CodecConfig(name=name, C=C, target_bpp=bpp)
    if beta is not None:
        cfg.beta = beta
    if N is not None:
        cfg.N = N
    return cfg


def recipe_config(name: str, recipe: str, **overrides) -> CodecTrainConfig:
    """The training config of operating point `name` under a recipe (overrides win)."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    base = name[: -len("-msssim")] if name.endswith("-msssim") else name
    r = {k: v[base] if isinstance(v, dict) else v for k, v in RECIPES[recipe].items()}  # per-point values
    r.update({k: v for k, v in overrides.items() if v is not None})
    if "init_from" in r:
        r["init_from"] = r["init_from"].format(name=name)
    codec = codec_config_for(name, N=r.pop("N"))
    if name.endswith("-msssim") or "distortion" not in r:  # a recipe or an override may finetune for MS-SSIM
        r["distortion"] = "msssim" if name.endswith("-msssim") else "mse"
    return CodecTrainConfig(codec=codec, **r)


def train_all(out_root: str, recipe: str = "gpu", families=("mse",), install: bool = False, progress: bool = True,
              **overrides) -> list[dict]:
    """Every operating point of every family, one after the other (one process on a GPU at a time)."""
    results = []
    for fam in families:
        for op in OPERATING_POINTS:
            name = op + FAMILIES[fam]
            cfg = recipe_config(name, recipe, **overrides)
            r = train(cfg, os.path.join(out_root, name), progress=progress, install_as=name if install else None)
            results.append({"name": name, **r})
    return results


def sigma_at(cfg: CodecTrainConfig, step: int) -> float:
    if cfg.sigma_hold_from:
        step = min(step, cfg.sigma_hold_from)
    t = min(1.0, step / max(1, cfg.steps))
    start = cfg.sigma_start or cfg.codec.sigma
    return start * (cfg.sigma_final / start) ** t


def lr_at(cfg: CodecTrainConfig, step: int) -> float:
    if cfg.cooldown_from and step >= cfg.cooldown_from:  # from the schedule's value there, continuously
        start = lr_at(replace(cfg, cooldown_from=0), cfg.cooldown_from)
        return start + (cfg.lr / 100 - start) * min(1.0, (step - cfg.cooldown_from) / max(1, cfg.cooldown_steps))
    if cfg.lr_schedule == "cosine":
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    return cfg.lr * (0.1 if step >= 0.8 * cfg.steps else 1.0)


def load_training_photos(cfg: CodecTrainConfig, device: str = "cpu") -> list[torch.Tensor]:
    return codec_data.load_training_photos(cfg.crop, cfg.photo_side, cfg.max_photos, device, cfg.extra_photos)


def sample_batch(photos: list[torch.Tensor], cfg: CodecTrainConfig, gen: torch.Generator) -> torch.Tensor:
    return codec_data.sample_batch(photos, cfg.batch_size, cfg.crop, gen, cfg.min_scale)


def init_weights(model: LatentCodec, source: str) -> str:
    """Copy a trained codec's weights into `model` (same C, L, N); returns the source's weights hash."""
    from latentstore.codec.zoo import codec_file, load_codec_file
    src = load_codec_file(codec_file(source))
    if (src.cfg.C, src.cfg.L, src.cfg.N) != (model.cfg.C, model.cfg.L, model.cfg.N):
        raise UsageError(f"--init-from {source}: C/L/N {src.cfg.C}/{src.cfg.L}/{src.cfg.N} differ from the "
                         f"trained point's {model.cfg.C}/{model.cfg.L}/{model.cfg.N}")
    model.load_state_dict(src.state_dict())
    return src.hash


def train(cfg: CodecTrainConfig, out_dir: str, install_to: str | None = None, progress: bool = True,
          install_as: str | None = None) -> dict:
    """Train (resuming from out_dir's checkpoint), then write the codec to the file `install_to`, or into the
    zoo as `install_as` (an earlier codec of that name is kept as NAME@K). SIGTERM / SIGINT, max_minutes and
    max_cpu_seconds stop it after the current step, checkpointed; running it again continues exactly."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # a bad value fails before anything is written
    os.makedirs(out_dir, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.distortion not in ("mse", "msssim") or cfg.lr_schedule not in ("step", "cosine"):
        raise UsageError("--distortion must be mse or msssim, --lr-schedule step or cosine")
    model = LatentCodec(cfg.codec)
    resuming = has_checkpoint(out_dir)
    init_hash = init_weights(model, cfg.init_from) if cfg.init_from and not resuming else None
    nhwc = cfg.channels_last and precision == "bf16"
    model = model.to(device, memory_format=torch.channels_last) if nhwc else model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    photos = codec_data.load_training_photos(cfg.crop, cfg.photo_side, cfg.max_photos, device, cfg.extra_photos)
    resolved = {**asdict(cfg), "device_resolved": device, "precision_resolved": precision,
                "n_photos": len(photos), "init_from_hash": init_hash, "torch_threads": torch.get_num_threads()}
    meta, saved = {}, {}
    if resuming:
        meta = load_checkpoint(out_dir, model, opt, gen, saved)
        resolved["init_from_hash"] = meta.get("config", {}).get("init_from_hash")  # what the run started from
        if meta.get("config", {}).get("n_photos", len(photos)) != len(photos):  # e.g. a clone without the packages
            print(f"{out_dir}: resuming on {len(photos)} training photos, the run had "
                  f"{meta['config']['n_photos']}: it continues, but not exactly as it would have")
    step, elapsed, cpu_total = meta.get("step", 0), meta.get("elapsed", 0.0), meta.get("cpu_seconds", 0.0)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema and not ema.load(saved) and step:  # a run that gains an EMA mid-way: it averages from this step
        print(f"{out_dir}: no weights EMA in the checkpoint of step {step}: it starts from these weights")
    steplog = StepLog(os.path.join(out_dir, "log.csv"), cfg.log_every, meta.get("steplog"))
    val = Validator(out_dir, cfg.codec.name, cfg.val_cpu_minutes, cfg.results_dir, meta.get("val_next_cpu"), step)
    if resuming:  # a change of recipe, precision or device takes effect here: the validation plots mark it
        # a field the checkpoint's code did not have yet had its default then
        val.record_changes({**asdict(CodecTrainConfig(codec=cfg.codec)), **meta.get("config", {})}, resolved, step,
                           cpu_total / 3600)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=cfg.codec.name, unit="step")
    model.train()
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    started, cpu_started, val_cpu = time.time(), time.process_time(), 0.0
    last_ckpt = started
    stop = StopSignals()

    def clocks():  # (wall seconds of the whole run, training CPU seconds of the whole run, of this invocation)
        here = time.process_time() - cpu_started - val_cpu
        return elapsed + time.time() - started, cpu_total + here, here

    def checkpoint():
        wall, cpu, _ = clocks()
        extra = {"elapsed": wall, "cpu_seconds": cpu, "steplog": steplog.flush(), "val_next_cpu": val.next_cpu}
        save_checkpoint(out_dir, step, model, opt, gen, resolved, extra, addressed=True,  # crash-safe (#29)
                        extra_tensors=ema.tensors() if ema else None)
        try:
            plot_log(os.path.join(out_dir, "log.csv"), os.path.join(out_dir, "curves.png"))
        except Exception as e:  # a plot must never kill a training run
            print(f"plot skipped: {e}")

    reason = None
    with stop:
        while step < end:
            model.quantizer.sigma = sigma_at(cfg, step)
            # a frozen parameter gets no gradient, and Adam skips a parameter whose grad is None
            model.quantizer.centres.requires_grad_(not (cfg.freeze_centres_at and step >= cfg.freeze_centres_at))
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            x = sample_batch(photos, cfg, gen)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            t = loss_terms(model, x, cfg.distortion, cfg.msssim_weight, cfg.mse_weight,
                           train_autocast(precision, device), cfg.rate_scale)
            opt.zero_grad(set_to_none=True)
            t["loss"].backward()
            opt.step()
            if ema:
                ema.update(model)
            step += 1
            wall, cpu, cpu_here = clocks()
            steplog.add(step, {"loss": t["loss"].item(), "mse255": t["mse255"].item(),
                               "H_soft": t["entropy_soft"].item(), "H_hard": t["entropy_hard"].item(),
                               "bpp_est": t["entropy_hard"].item() * cfg.codec.C / 64.0},
                        {"sigma": model.quantizer.sigma, "lr": opt.param_groups[0]["lr"], "seconds": wall,
                         "cpu_seconds": cpu})
            if bar:
                bar.update(1)
                if steplog.last:
                    bar.set_postfix(psnr=f"{steplog.last['psnr']:.2f}", bpp=f"{steplog.last['bpp_est']:.3f}")
            reason = ("signal" if stop.signum else "max_minutes" if cfg.max_minutes and time.time() - started > 60 *
                      cfg.max_minutes else "max_cpu_seconds" if cfg.max_cpu_seconds and cpu_here > cfg.max_cpu_seconds
                      else None)
            if val.due(cpu) or (val.every and (reason in ("max_minutes", "max_cpu_seconds") or step == end)):
                v0 = time.process_time()
                with ema.applied(model) if ema else contextlib.nullcontext():
                    val.run(model, step, cpu, wall, weights=f"ema {cfg.ema_decay:g}" if ema else "raw")
                val_cpu += time.process_time() - v0
            timed = cfg.ckpt_minutes > 0 and time.time() - last_ckpt > 60 * cfg.ckpt_minutes
            if step % cfg.ckpt_every == 0 or step == end or reason or timed:
                checkpoint()
                last_ckpt = time.time()
            if reason:
                break
    if bar:
        bar.close()
    wall, cpu, cpu_here = clocks()
    result = {"steps": step, "train_seconds": wall, "train_cpu_seconds": cpu, "invocation_cpu_seconds": cpu_here,
              "device": device, "precision": precision, "finished": step >= cfg.steps, "stopped_by": reason}
    if stop.signum:
        result["signal"] = stop.signum
    if (install_to or install_as) and step < end:  # stopped early: resume before installing
        result["installed"] = False
    elif install_to or install_as:
        if ema:
            ema.copy_to(model)  # the averaged weights are what is installed
        model = model.to(memory_format=torch.contiguous_format)
        model.update(*symbol_counts(model, photos, device))  # the frozen entropy models, then the new hash
        meta = {**result, "seed": cfg.seed, "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "date": time.strftime("%Y-%m-%d"), "n_train_photos": len(photos), "train_config": resolved}
        if install_as:
            from latentstore.codec.zoo import install_codec
            model.cfg.name = install_as
            result["weights_hash"] = install_codec(model.cpu(), install_as, meta)
        else:
            result["weights_hash"] = save_codec(model.cpu(), install_to, meta)
    return result


def run_config(out_dir: str) -> CodecTrainConfig:
    """The training config a run recorded beside its checkpoint (config.json)."""
    import json
    with open(os.path.join(out_dir, "config.json")) as f:
        d = json.load(f)
    known = set(CodecTrainConfig.__dataclass_fields__) - {"codec"}
    return CodecTrainConfig(codec=CodecConfig(**d["codec"]), **{k: v for k, v in d.items() if k in known})


def export_run(out_dir: str, path: str) -> dict:
    """Write a run's latest checkpoint as a codec file, as it stands (e.g. stopped by max_minutes), to evaluate it
    before deciding to install it; its v2 tables are then refitted as the shipped codecs' were (refit_tables)."""
    from latentstore_train.checkpoint import has_checkpoint as _has
    if not _has(out_dir):
        raise UsageError(f"{out_dir}: no checkpoint to export")
    cfg = run_config(out_dir)
    with open(os.path.join(out_dir, "ckpt.json")) as f:
        import json
        step = json.load(f)["step"]
    # no validation and no results folder: a copy's Validator would cut the live curve there back to its step
    r = train(replace(cfg, stop_at=step, max_minutes=0.0, val_cpu_minutes=0.0, results_dir=""), out_dir,
              install_to=path, progress=False)
    refit_tables(path)
    return r


def refit_tables(name: str, max_photos: int = 0, coders=("latentstore.rans", "latentstore.rans3")) -> str:
    """Refit a codec file's coding tables (of `coders`: v2's, v3's) on the training photos, in place; the weights
    hash does not change. A shipped codec's v2 tables stay as they are (coders=("latentstore.rans3",)): a v2
    bitstream outside a store is checked against the tables it was coded with (its CRC is seeded with them)."""
    from latentstore.codec.zoo import codec_file, load_codec_file
    path = codec_file(name)
    codec = load_codec_file(path)
    photos = load_training_photos(CodecTrainConfig(codec=codec.cfg, max_photos=max_photos))
    _, _, ctx, ctx3 = symbol_counts(codec, photos, "cpu")
    before = codec.hash
    fitted = (f"fitted on {len(photos)} training photos (latentstore_train.codec.refit_tables, "
              f"{time.strftime('%Y-%m-%d')})")
    codec.meta = dict(codec.meta)
    if "latentstore.rans" in coders:
        codec.entropy.rans_tables.copy_(torch.from_numpy(tables_from_counts(ctx).astype(np.int32)))
        codec.meta["rans_tables"] = fitted
    if ctx3 is not None and "latentstore.rans3" in coders:
        from latentstore.codec.entropy import rans_v3
        codec.entropy.rans3_tables.copy_(torch.from_numpy(rans_v3.tables_from_counts(ctx3).astype(np.int32)))
        codec.meta["rans3_tables"] = fitted
    assert save_codec(codec, path) == before, "coding tables must not change a codec's identity"
    return path


if __name__ == "__main__":  # python -m latentstore_train.codec: the same options as `latentstore train codec`
    import sys

    from latentstore.cli import main
    main(["train", "codec", *sys.argv[1:]], prog_name="latentstore")
