"""ResNets on RGB and cResNets on compressed latents (He et al. 2016; Torfason et al. 2018, Table 3).

All share one interface: `forward_features(x)` -> (B, F, h, w), then `head` (global pool + fc);
`output_stride` turns the later stages atrous (stride -> dilation) for segmentation.

Layer counting (the names' k), chosen so all five names hold and checked by a test:
  k = convolutions in the residual branches (3 per bottleneck)
      + the root convolution            (RGB ResNets only; cResNets have no root: the encoder is it)
      + the classifier                  (RGB ResNets only, as He et al. count it)
  Projection shortcuts are never counted.
  ResNet-50  = 1 + 3*(3+4+6+3)  + 1 = 50     ResNet-71  = 1 + 3*(3+4+13+3) + 1 = 71
  cResNet-39 =     3*(4+6+3)        = 39     (ResNet-50 without root, conv2_x and fc: its first 11 layers + fc)
  cResNet-51 =     3*(4+10+3)       = 51     cResNet-72 = 3*(4+17+3) = 72   (conv4_x grown to match compute)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class ResNetConfig:
    name: str = "resnet50"
    blocks: list = field(default_factory=lambda: [3, 4, 6, 3])  # bottlenecks per stage (conv2_x..conv5_x)
    compressed: bool = False  # cResNet: no root block and no conv2_x; input is C x h x w latents
    in_channels: int = 3  # 3 for RGB, C for latents
    num_classes: int = 1000
    width: int = 64  # base width (conv2_x's bottleneck); 64 in the paper, smaller for CPU-sized runs
    output_stride: int | None = None  # None: classification strides; else 8/16 (RGB) or 1/2 (cResNet) via dilation


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        cout = mid * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn3.weight)  # zero-init the last BN: each block starts as identity
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.proj is None else self.proj(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        stage_blocks = list(cfg.blocks)
        if cfg.compressed:
            assert len(stage_blocks) == 3, "a cResNet has conv3_x, conv4_x and conv5_x only"
            self.root = nn.Identity()
            mids, cin = [w * 2, w * 4, w * 8], cfg.in_channels
            strides = [1, 2, 2]  # latents are already at conv3_x's resolution (28x28 for 224 px)
        else:
            assert len(stage_blocks) == 4
            self.root = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            mids, cin = [w, w * 2, w * 4, w * 8], w
            strides = [1, 2, 2, 2]
        dilations = [1] * len(strides)
        if cfg.output_stride is not None:
            # DeepLab's atrous trick: once the running stride reaches output_stride, every later stride-2
            # becomes stride 1 and that stage (and all after it) dilates by the stride it gave up, so the
            # receptive field is unchanged and the pretrained weights still fit. Earlier stages keep
            # dilation 1. RGB at 8: conv4_x d=2, conv5_x d=4; cResNet at 1: conv4_x d=2, conv5_x d=4.
            total = 1 if cfg.compressed else 4  # the root block's stride (conv 2 x maxpool 2)
            if cfg.output_stride < total or cfg.output_stride & (cfg.output_stride - 1):
                raise ValueError(f"output_stride {cfg.output_stride} is not a power of 2 >= {total}")
            d = 1
            for i, s in enumerate(strides):
                if total * s > cfg.output_stride:
                    strides[i], d = 1, d * s
                else:
                    total *= s
                dilations[i] = d
        self.stage_strides, self.stage_dilations = list(strides), list(dilations)  # as built; read by tests
        stages = []
        for n, mid, s, d in zip(stage_blocks, mids, strides, dilations):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, mid, s if b == 0 else 1, d))
                cin = mid * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg.num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.root(x)  # RGB: (B, w, H/4, W/4); cResNet: identity on (B, C, h, w)
        # (B, 32w, H/32, W/32) at classification strides (cResNet: h/4, w/4); (B, 32w, H/os, W/os) with output_stride
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


def count_layers(model: ResNet) -> int:
    """The naming convention in this module's docstring, counted from the built modules."""
    n = 0
    for m in model.stages.modules():
        if isinstance(m, Bottleneck):
            n += 3
    if not model.cfg.compressed:
        n += 2  # the root convolution and the classifier
    return n


# The paper's five networks; `width` and `num_classes` scale them down for small experiments.
ARCHS = {
    "resnet50": dict(blocks=[3, 4, 6, 3], compressed=False),
    "resnet71": dict(blocks=[3, 4, 13, 3], compressed=False),
    "cresnet39": dict(blocks=[4, 6, 3], compressed=True),
    "cresnet51": dict(blocks=[4, 10, 3], compressed=True),
    "cresnet72": dict(blocks=[4, 17, 3], compressed=True),
}


def build(name: str, in_channels: int | None = None, num_classes: int = 1000, width: int = 64,
          depth_scale: float = 1.0, output_stride: int | None = None) -> ResNet:
    """A named network; depth_scale < 1 shrinks every stage's block count (at least 1 block each)."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(ARCHS)})")
    a = ARCHS[name]
    blocks = [max(1, round(b * depth_scale)) for b in a["blocks"]]
    cin = in_channels if in_channels is not None else (3 if not a["compressed"] else 32)
    return ResNet(ResNetConfig(name=name, blocks=blocks, compressed=a["compressed"], in_channels=cin,
                               num_classes=num_classes, width=width, output_stride=output_stride))
