"""The compressive autoencoder of Theis et al. (2017), as used by Torfason et al. (2018).

Encoder: 5x5/2 conv (N/2) -> 5x5/2 conv (N) -> 3 residual units -> 5x5/2 conv (C): z is (C, H/8, W/8).
Decoder: the mirror, upsampling with sub-pixel convolutions (pixel shuffle).
The model returns dicts with fixed keys, like CompressAI's.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizer import SoftToHardQuantizer


@dataclass
class CodecConfig:
    name: str = "ls-c32"  # the zoo name; also the codec id written into every bitstream
    C: int = 32  # latent channels: the rate knob (z is C x H/8 x W/8)
    L: int = 6  # quantization centres (the symbol alphabet size)
    N: int = 64  # feature width of the residual trunk (Theis et al. use 128; 64 keeps 3 codecs < 15 MB)
    target_bpp: float = 0.635  # the operating point; H_t = target_bpp * 64 / C bits per symbol
    beta: float = 600.0  # weight of the entropy hinge in MSE(0..255 scale) + beta * max(H - H_t, 0)
    sigma: float = 1.0  # initial softmax sharpness of the soft assignment (see train.codec for the schedule)
    centre_range: float = 2.0  # centres start evenly spaced in [-range, range]
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])  # fixed input normalisation, saved with the weights
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])

    @property
    def target_bits_per_symbol(self) -> float:
        return self.target_bpp * 64.0 / self.C

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CodecConfig":
        return cls(**json.loads(s))


class ResidualUnit(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        n = cfg.N
        self.conv1 = nn.Conv2d(3, n // 2, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(n // 2, n, 5, stride=2, padding=2)
        self.res = nn.Sequential(*[ResidualUnit(n) for _ in range(3)])
        self.conv3 = nn.Conv2d(n, cfg.C, 5, stride=2, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)  # (B, N/2, H/2, W/2)
        x = F.leaky_relu(self.conv2(x), 0.2)  # (B, N, H/4, W/4)
        x = self.res(x)
        return self.conv3(x)  # (B, C, H/8, W/8)

    def forward_without_last_bias(self, x: torch.Tensor) -> torch.Tensor:
        """z minus conv3's bias: the conversion kernel adds the bias while it quantizes."""
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        x = self.res(x)
        return F.conv2d(x, self.conv3.weight, None, stride=2, padding=2)


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        n = cfg.N
        self.conv1 = nn.Conv2d(cfg.C, n * 4, 3, padding=1)
        self.res = nn.Sequential(*[ResidualUnit(n) for _ in range(3)])
        self.conv2 = nn.Conv2d(n, (n // 2) * 4, 3, padding=1)
        self.conv3 = nn.Conv2d(n // 2, 3 * 4, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(self.conv1(z), 2)  # (B, N, H/4, W/4)
        x = self.res(F.leaky_relu(x, 0.2))
        x = F.leaky_relu(F.pixel_shuffle(self.conv2(x), 2), 0.2)  # (B, N/2, H/2, W/2)
        return F.pixel_shuffle(self.conv3(x), 2)  # (B, 3, H, W), normalised units


class LatentCodec(nn.Module):
    """Encoder + soft-to-hard quantizer + decoder. Images in [0, 1], any size."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = SoftToHardQuantizer(cfg.L, cfg.centre_range, cfg.sigma)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))

    # -- shape handling: reflect-pad to a multiple of 8, crop back after decoding
    @staticmethod
    def pad8(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"  # reflect needs pad < side
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def denormalise(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> z (B, C, ceil(H/8), ceil(W/8)), before quantization."""
        return self.encoder(self.normalise(self.pad8(x01)))

    def decode(self, z_q: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Quantized latents -> (B, 3, H, W) in [0, 1], cropped to `size` when given."""
        x = self.denormalise(self.decoder(z_q)).clamp(0, 1)
        if size is not None:
            x = x[..., : size[0], : size[1]]
        return x

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x01)
        q = self.quantizer(z)
        x_hat = self.denormalise(self.decoder(q["z_q"]))[..., : x01.shape[-2], : x01.shape[-1]]
        return {"x_hat": x_hat, "z": z, **q}
