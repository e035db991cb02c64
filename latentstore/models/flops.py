"""FLOP accounting with torch.utils.flop_counter (2 FLOPs per multiply-add), at the paper's sizes."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..codec.model import CodecConfig, LatentCodec
from .deeplab import SEG_ARCHS, build_seg
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


def seg_gflops(name: str, size: int, C: int = 32, num_classes: int = 21) -> float:
    """GFLOPs of a segmentation network on one size x size image (cResNet-d: its C x size/8 x size/8 latent).

    Counted on the meta device: the counter needs only shapes, and these dilated networks at full
    resolution take seconds each to run for real on a CPU. The bilinear upsampling is not counted."""
    latent = SEG_ARCHS[name][0].startswith("cresnet")
    with torch.device("meta"):
        model = build_seg(name, in_channels=C if latent else 3, num_classes=num_classes)
        x = torch.empty(1, C, size // 8, size // 8) if latent else torch.empty(1, 3, size, size)
    return gflops(model, x)


def flop_table(size: int = 224, codec_width: int = 64, seg: bool = True, seg_classes: int = 21) -> dict:
    """GFLOPs per image: encoder/decoder per C, ResNet-50/71 on RGB, cResNet-39/51/72 on latents per C;
    with seg, also the segmentation networks (ResNet-50/71-d on RGB, cResNet-39/51/72-d on latents per C)."""
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
    if seg:
        out["seg"] = {"num_classes": seg_classes,
                      "rgb": {n: seg_gflops(n, size, num_classes=seg_classes) for n in ("resnet50d", "resnet71d")},
                      "latent": {n: {C: seg_gflops(n, size, C, seg_classes) for C in (8, 16, 32)}
                                 for n in ("cresnet39d", "cresnet51d", "cresnet72d")}}
    return out


def _per_c(v: dict) -> dict:
    return {int(k): x for k, x in v.items()}  # a table read back from JSON has string keys


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
    if "seg" in t:
        sg = t["seg"]
        lines.append(f"segmentation, DeepLab-v2 ASPP, {sg['num_classes']} classes, logits at 1/8 of the image "
                     f"(upsampling not counted)")
        lines.append("  on RGB (output stride 8)")
        for n, v in sg["rgb"].items():
            lines.append(f"  {n:29}{v:9.2f}")
        lines.append("  on latents (full latent size)   C=8      C=16     C=32")
        for n, v in sg["latent"].items():
            lines.append(f"  {n:29}" + "".join(f"{_per_c(v)[C]:9.2f}" for C in (8, 16, 32)))
        lines.append("the paper's segmentation comparison: decoder + ResNet-50-d (the reconstruction) vs "
                     "cResNet-51-d (the latents)")
        codec = _per_c(t["codec"])
        for C in (8, 16, 32):
            a = codec[C]["decoder"] + sg["rgb"]["resnet50d"]
            b = _per_c(sg["latent"]["cresnet51d"])[C]
            lines.append(f"  C={C:<3} {a:7.2f} vs {b:6.2f} GFLOPs ({sg['rgb']['resnet50d']:.2f} without the decoder): "
                         f"cResNet-51-d needs {b / a:.2f}x the compute")
    return "\n".join(lines)
