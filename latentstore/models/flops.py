"""FLOP accounting with torch.utils.flop_counter (2 FLOPs per multiply-add), at the paper's sizes."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..codec.model import CodecConfig, LatentCodec
from .resnet import build


def gflops(module: torch.nn.Module, x: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / 1e9


def _Enc(codec: LatentCodec) -> torch.nn.Module:
    return codec.encoder


def _Dec(codec: LatentCodec) -> torch.nn.Module:
    return codec.decoder


def flop_table(size: int = 224, codec_width: int = 64) -> dict:
    """GFLOPs per image: encoder/decoder per C, ResNet-50/71 on RGB, cResNet-39/51/72 on latents per C."""
    h = size // 8
    out = {"size": size, "codec_width": codec_width, "codec": {}, "rgb": {}, "latent": {}}
    for C in (8, 16, 32):
        codec = LatentCodec(CodecConfig(C=C, N=codec_width))
        out["codec"][C] = {"encoder": gflops(_Enc(codec), torch.randn(1, 3, size, size)),
                           "decoder": gflops(_Dec(codec), torch.randn(1, C, h, h))}
    for n in ("resnet50", "resnet71"):
        out["rgb"][n] = gflops(build(n), torch.randn(1, 3, size, size))
    for n in ("cresnet39", "cresnet51", "cresnet72"):
        out["latent"][n] = {C: gflops(build(n, in_channels=C), torch.randn(1, C, h, h)) for C in (8, 16, 32)}
    return out


def format_flop_table(t: dict) -> str:
    s = t["size"]
    lines = [f"GFLOPs per image (2 per multiply-add; torch.utils.flop_counter), {s}x{s} RGB, {s // 8}x{s // 8} latents",
             f"codec (trunk width N={t['codec_width']})      C=8      C=16     C=32"]
    for part in ("encoder", "decoder"):
        lines.append(f"  {part:29}" + "".join(f"{t['codec'][C][part]:9.2f}" for C in (8, 16, 32)))
    lines.append("RGB classifiers")
    for n, v in t["rgb"].items():
        lines.append(f"  {n:29}{v:9.2f}")
    lines.append("latent classifiers                C=8      C=16     C=32")
    for n, v in t["latent"].items():
        lines.append(f"  {n:29}" + "".join(f"{v[C]:9.2f}" for C in (8, 16, 32)))
    lines.append("the paper's comparison: decoder + ResNet-50 (classify the reconstruction) vs cResNet-51 (the latents)")
    for C in (8, 16, 32):
        a = t["codec"][C]["decoder"] + t["rgb"]["resnet50"]
        b = t["latent"]["cresnet51"][C]
        lines.append(f"  C={C:<3} {a:7.2f} vs {b:6.2f} GFLOPs: cResNet-51 needs {b / a:.2f}x the compute ({a / b:.2f}x less)")
    return "\n".join(lines)
