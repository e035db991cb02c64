"""Segmentation from latents or pixels: dilated (c)ResNets with a DeepLab-v2 ASPP head (Torfason et al. 2018, Sec. 5).

cResNet-d: the cResNets with conv4_x/conv5_x atrous instead of strided, so the feature map keeps the
latent's spatial size (output stride 1 relative to the latent, i.e. 8 relative to the image).
ResNet-d: the ResNets at output stride 8. Both give a (H/8, W/8) map for an (H, W) image, so the two
are compared at equal resolution, as in the paper.

The head is DeepLab-v2's ASPP-L (Chen et al. 2018): four parallel 3x3 convolutions with dilation
{6, 12, 18, 24}, each predicting num_classes logits, summed. The logits are upsampled bilinearly to
the image size (for latents: 8x the latent size) and trained with pixel-wise cross-entropy.

Note on the rates: at 224-256 px the map is 28-32 cells wide, so a rate-24 (or even rate-18) tap
mostly lands in the zero padding and that branch degenerates towards a 1x1 convolution near the
borders. The paper keeps DeepLab's rates (tuned for 41x41 maps of 321 px crops) and so do we.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .resnet import ARCHS, ResNet, build

LATENT_STRIDE = 8  # one latent cell covers 8x8 image pixels (the codec's downsampling)

# segmentation name -> (classification backbone, output stride of the backbone relative to its input)
SEG_ARCHS = {
    "cresnet39d": ("cresnet39", 1),
    "cresnet51d": ("cresnet51", 1),
    "cresnet72d": ("cresnet72", 1),
    "resnet50d": ("resnet50", 8),
    "resnet71d": ("resnet71", 8),
}


@dataclass
class SegNetConfig:
    name: str = "cresnet51d"  # one of SEG_ARCHS
    in_channels: int | None = None  # latent channels C (cResNet-d) or 3 (ResNet-d); None: 32 or 3
    num_classes: int = 21  # including background; VOC: 20 objects + background
    width: int = 64  # the backbone's base width (64 = the paper's)
    depth_scale: float = 1.0  # scales the backbone's block counts, as for classification
    rates: list = field(default_factory=lambda: [6, 12, 18, 24])  # ASPP dilation rates (DeepLab-v2)


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: parallel dilated 3x3 classifiers, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.rates = tuple(rates)
        # padding = rate keeps the map's size whatever the rate, also when rate > the map (zeros beyond it)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)  # DeepLab's init for the new classifier layers
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, F, h, w) -> each branch (B, K, h, w) -> sum (B, K, h, w)
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class SegNet(nn.Module):
    """Dilated backbone + ASPP + bilinear upsampling to the image size: (B, Cin, h, w) -> (B, K, H, W)."""

    def __init__(self, cfg: SegNetConfig):
        super().__init__()
        if cfg.name not in SEG_ARCHS:
            raise ValueError(f"unknown segmentation model {cfg.name!r} (known: {', '.join(SEG_ARCHS)})")
        self.cfg = cfg
        backbone_name, output_stride = SEG_ARCHS[cfg.name]
        self.backbone_name = backbone_name
        self.compressed = ARCHS[backbone_name]["compressed"]
        self.backbone: ResNet = build(backbone_name, in_channels=cfg.in_channels, width=cfg.width,
                                      depth_scale=cfg.depth_scale, output_stride=output_stride)
        # the classifier head is replaced by ASPP; dropping it (not leaving it unused) keeps DDP from
        # needing find_unused_parameters and keeps the head's weights out of the checkpoints
        self.backbone.head = nn.Identity()
        self.aspp = ASPP(self.backbone.num_features, cfg.num_classes, cfg.rates)
        # logits are at 1/8 of the image for both families; latents are themselves at 1/8 of the image
        self.upsample = LATENT_STRIDE if self.compressed else 1

    def output_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The image size the logits are upsampled to: the input's for RGB, 8x the latent's for latents."""
        return input_hw[0] * self.upsample, input_hw[1] * self.upsample

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the feature resolution: (B, Cin, h, w) -> (B, K, H/8, W/8) of the image."""
        f = self.backbone.forward_features(x)  # cResNet-d: (B, 32w, h, w) for h = H/8; ResNet-d: (B, 32w, H/8, W/8)
        return self.aspp(f)  # (B, K, H/8, W/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(x)  # (B, K, H/8, W/8)
        size = self.output_size(tuple(x.shape[-2:]))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)


def build_seg(name: str, in_channels: int | None = None, num_classes: int = 21, width: int = 64,
              depth_scale: float = 1.0, rates=(6, 12, 18, 24)) -> SegNet:
    """A named segmentation network: cresnet39d | cresnet51d | cresnet72d | resnet50d | resnet71d."""
    return SegNet(SegNetConfig(name=name, in_channels=in_channels, num_classes=num_classes, width=width,
                               depth_scale=depth_scale, rates=list(rates)))


@dataclass
class BackboneLoad:
    """What `load_backbone_weights` did, for the run's log."""
    path: str  # the safetensors file read
    loaded: int  # backbone tensors copied
    skipped_head: list  # the classifier's head.* keys, not used
    missing: list  # backbone keys the checkpoint did not have (left at their initialisation)
    unexpected: list  # checkpoint keys the backbone does not have
    mismatched: list  # "key: checkpoint shape vs backbone shape"

    def summary(self) -> str:
        s = f"{self.path}: {self.loaded} backbone tensors loaded, {len(self.skipped_head)} head tensors skipped"
        for what in ("missing", "unexpected", "mismatched"):
            if getattr(self, what):
                s += f"; {what}: {_shorten(getattr(self, what))}"
        return s


def _shorten(keys: list) -> str:
    return ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")


def load_backbone_weights(model: SegNet, path: str, strict: bool = True) -> BackboneLoad:
    """Initialise the backbone from a `latentstore train classify` checkpoint (its run dir or ckpt.safetensors).

    Keys are `model/<param>` (train/checkpoint.py); `head.*` (the classifier) is skipped. Dilation does not
    change any weight's shape, so a classifier of the same name/width/depth/in_channels fits exactly.
    strict: any missing, unexpected or mis-shaped tensor is a UsageError (one line); else loaded partially."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "ckpt.safetensors") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UsageError(f"{file}: no classification checkpoint there (expected `latentstore train classify` output)")
    cfg_file = os.path.join(run_dir, "config.json")
    if os.path.isfile(cfg_file):  # the classifier's resolved config: name the mismatch before the shapes do
        with open(cfg_file) as f:
            ccfg = json.load(f)
        if ccfg.get("model") not in (None, model.backbone_name):
            raise UsageError(f"{file}: a {ccfg['model']} classifier; {model.cfg.name} needs a "
                             f"{model.backbone_name} one")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "ckpt.json")):
        # a run: the tensors file its ckpt.json names, checked against its sha256 (ckpt.safetensors is a link of it)
        from latentstore_train.checkpoint import read_model_weights
        tensors = {f"model/{k}": v for k, v in read_model_weights(path).items()}
    else:  # a file given by path (exported weights, or ckpt.safetensors named on its own): as it is
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as e:
            raise UsageError(f"{file}: unreadable safetensors ({e})") from None
    prefixed = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    state = prefixed if prefixed else tensors  # a bare state dict (e.g. exported weights) also works
    head = sorted(k for k in state if k.startswith("head."))
    own = model.backbone.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own and not k.startswith("head."))
    mismatched = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                        if k in state and state[k].shape != v.shape)
    report = BackboneLoad(file, 0, head, missing, unexpected, mismatched)
    if strict and (missing or unexpected or mismatched):
        why = "; ".join(f"{n} {_shorten(v)}" for n, v in
                        (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if v)
        raise UsageError(f"{file}: does not fit the {model.cfg.name} backbone (same width, depth_scale and "
                         f"input channels needed): {why}")
    fit = {k: state[k] for k, v in own.items() if k in state and state[k].shape == v.shape}
    model.backbone.load_state_dict(fit, strict=False)
    report.loaded = len(fit)
    return report
