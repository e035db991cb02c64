"""One image as a numpy array in, bytes out, and back: the convenience layer over LatentCodec."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BitstreamError
from . import bitstream as bs
from .model import DEFAULT_CODER, LatentCodec
from .zoo import find_codec_by_hash, load_codec


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def tensor_to_rgb(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    x = x.squeeze(0) if x.dim() == 4 else x
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def image_symbols(codec: LatentCodec, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, ceil(H/8), ceil(W/8)) uint8 symbols."""
    return codec.symbols(rgb_to_tensor(rgb).to(codec.device))["symbols"][0].cpu().numpy()


def compress(rgb: np.ndarray, codec: LatentCodec | str, coder: str = DEFAULT_CODER) -> bytes:
    codec = load_codec(codec) if isinstance(codec, str) else codec
    return codec.pack(image_symbols(codec, rgb), rgb.shape[:2], coder)


def codec_for(data: bytes, codec: LatentCodec | str | None = None) -> LatentCodec:
    """The codec to decode `data`: the one given, or the shipped one its header names."""
    if isinstance(codec, str):
        return load_codec(codec)
    if codec is not None:
        return codec
    header, _ = bs.unpack(data)
    found = find_codec_by_hash(header.codec_id, header.weights_hash)
    if found is None:
        raise BitstreamError(f"bitstream was made by codec {header.codec_id!r} (weights {header.weights_hash}), "
                             "which is not available here")
    return found


def symbols_to_rgb(codec: LatentCodec, symbols: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return tensor_to_rgb(codec.reconstruct(torch.from_numpy(np.ascontiguousarray(symbols)).unsqueeze(0), size))


def decompress(data: bytes, codec: LatentCodec | str | None = None) -> np.ndarray:
    codec = codec_for(data, codec)
    header, symbols = codec.parse(data)
    return symbols_to_rgb(codec, symbols, (header.H, header.W))
