"""One image in, bytes out, and back: the convenience layer over LatentCodec.

Images are (H, W, 3) uint8 numpy arrays or PIL images (any mode: converted as data.imageio.to_rgb8
does for files). Large images are coded in tiles (codec/tiling.py): the same symbols and bytes as
whole-image coding, in memory that scales with the tile, not the image.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BitstreamError, UsageError
from . import bitstream as bs
from . import tiling
from .model import DEFAULT_CODER, LatentCodec
from .zoo import find_codec_by_hash, load_codec


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def tensor_to_rgb(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    x = x.squeeze(0) if x.dim() == 4 else x
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def image_symbols(codec: LatentCodec, rgb: np.ndarray, tile: int | None = None, progress: bool = False,
                  precision: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, ceil(H/8), ceil(W/8)) uint8 symbols (large images tile by tile, never whole as floats).
    precision: auto | bf16 | fp32 (None: LATENTSTORE_PRECISION, else auto; see latentstore/device.py)."""
    return tiling.rgb_symbols(codec, rgb, tile, progress, policy=codec.policy(precision))


def compress(rgb, codec: LatentCodec | str, coder: str | None = DEFAULT_CODER, tile: int | None = None,
             progress: bool = False, precision: str | None = None) -> bytes:
    """One image (uint8 array or PIL image) -> a complete bitstream. `tile`: see codec/tiling.py; `precision`:
    see image_symbols."""
    codec = load_codec(codec) if isinstance(codec, str) else codec
    rgb = tiling.as_rgb8(rgb)
    return codec.pack(image_symbols(codec, rgb, tile, progress, precision), rgb.shape[:2], coder)


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


def symbols_to_rgb(codec: LatentCodec, symbols: np.ndarray, size: tuple[int, int], tile: int | None = None,
                   progress: bool = False, precision: str | None = None) -> np.ndarray:
    """(C, h, w) uint8 symbols -> (H, W, 3) uint8 pixels (large images tile by tile, never whole as floats).
    precision: as in image_symbols (bf16: the decoder's trunk in bf16, its last convolution in fp32)."""
    return tiling.symbols_rgb(codec, symbols, size, tile, progress, policy=codec.policy(precision))


def decompress(data: bytes, codec: LatentCodec | str | None = None, tile: int | None = None,
               progress: bool = False, precision: str | None = None) -> np.ndarray:
    """A bitstream -> (H, W, 3) uint8, by the codec given or the shipped one its header names."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"expected the bytes of a bitstream, got {type(data).__name__}")
    data = bytes(data)
    codec = codec_for(data, codec)
    header, symbols = codec.parse(data)
    return symbols_to_rgb(codec, symbols, (header.H, header.W), tile, progress, precision)
