"""compress(image) -> bytes and decompress(bytes) -> image, on top of a loaded codec."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BitstreamError
from . import bitstream as bs
from .zoo import LoadedCodec, find_codec_by_hash, load_codec


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def tensor_to_rgb(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    x = x.squeeze(0) if x.dim() == 4 else x
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def image_symbols(codec: LoadedCodec, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, ceil(H/8), ceil(W/8)) uint8 symbols."""
    dev = next(codec.model.parameters()).device
    z = codec.model.encode(rgb_to_tensor(rgb).to(dev))
    return codec.model.quantizer.symbols(z)["symbols"][0].cpu().numpy()


def symbols_to_bytes(codec: LoadedCodec, symbols: np.ndarray, size: tuple[int, int]) -> bytes:
    """Entropy-code (C, h, w) symbols of an image of `size` (H, W) into a complete bitstream."""
    C, h, w = symbols.shape
    header = bs.Header(codec.name, codec.hash, C, codec.cfg.L, h, w, int(size[0]), int(size[1]))
    return bs.pack(header, bs.encode_symbols(symbols, codec.freqs))


def compress(rgb: np.ndarray, codec: LoadedCodec | str) -> bytes:
    codec = load_codec(codec) if isinstance(codec, str) else codec
    return symbols_to_bytes(codec, image_symbols(codec, rgb), rgb.shape[:2])


def bytes_to_symbols(data: bytes, codec: LoadedCodec | None = None) -> tuple[bs.Header, np.ndarray, LoadedCodec]:
    """Parse, check the codec identity and decode the symbols. With no codec given, the shipped one named in the header."""
    header, words = bs.unpack(data)
    if codec is None:
        codec = find_codec_by_hash(header.codec_id, header.weights_hash)
        if codec is None:
            raise BitstreamError(f"bitstream was made by codec {header.codec_id!r} (weights {header.weights_hash}), "
                                 "which is not available here")
    elif (header.codec_id, header.weights_hash) != (codec.name, codec.hash):
        raise BitstreamError(f"bitstream was made by codec {header.codec_id!r} (weights {header.weights_hash}), "
                             f"not {codec.name!r} (weights {codec.hash})")
    if (header.C, header.L) != (codec.cfg.C, codec.cfg.L):
        raise BitstreamError("bitstream header is corrupt (C or L differs from the codec's)")
    symbols = bs.decode_symbols(words, codec.freqs, (header.C, header.h, header.w))
    if symbols.max(initial=0) >= codec.cfg.L:
        raise BitstreamError("bitstream decoded to out-of-range symbols (corrupt)")
    return header, symbols, codec


@torch.no_grad()
def symbols_to_rgb(codec: LoadedCodec, symbols: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    dev = next(codec.model.parameters()).device
    s = torch.from_numpy(np.ascontiguousarray(symbols)).unsqueeze(0).to(dev)
    x = codec.model.decode(codec.model.quantizer.dequantize(s), size)
    return tensor_to_rgb(x)


def decompress(data: bytes, codec: LoadedCodec | str | None = None) -> np.ndarray:
    codec = load_codec(codec) if isinstance(codec, str) else codec
    header, symbols, codec = bytes_to_symbols(data, codec)
    return symbols_to_rgb(codec, symbols, (header.H, header.W))
