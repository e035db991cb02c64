"""The networks of the compressive autoencoder of Theis et al. (2017), as used by Torfason et al. (2018).

Encoder: 5x5/2 conv (N/2) -> 5x5/2 conv (N) -> 3 residual units -> 5x5/2 conv (C): z is (C, H/8, W/8).
Decoder: the mirror, upsampling with sub-pixel convolutions (pixel shuffle).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualUnit(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class Encoder(nn.Module):
    def __init__(self, cfg):
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

    def forward_unbiased(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z minus the last conv's bias, that bias): the symbol kernel adds the bias while it quantizes,
        which saves a full pass over z. Only LatentCodec.symbols uses this; the bias stays in here."""
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        x = self.res(x)
        return F.conv2d(x, self.conv3.weight, None, stride=2, padding=2), self.conv3.bias


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n = cfg.N
        self.conv1 = nn.Conv2d(cfg.C, n * 4, 3, padding=1)
        self.res = nn.Sequential(*[ResidualUnit(n) for _ in range(3)])
        self.conv2 = nn.Conv2d(n, (n // 2) * 4, 3, padding=1)
        self.conv3 = nn.Conv2d(n // 2, 3 * 4, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(z))

    def trunk(self, z: torch.Tensor) -> torch.Tensor:
        """Everything but the last convolution: 96% of the decoder's FLOPs, what runs in bf16 when coding."""
        x = F.pixel_shuffle(self.conv1(z), 2)  # (B, N, H/4, W/4)
        x = self.res(F.leaky_relu(x, 0.2))
        return F.leaky_relu(F.pixel_shuffle(self.conv2(x), 2), 0.2)  # (B, N/2, H/2, W/2)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution, kept in fp32 when coding: its output is the image, and bf16's 8-bit mantissa
        would be about one uint8 level there."""
        return F.pixel_shuffle(self.conv3(x), 2)  # (B, 3, H, W), normalised units
