"""The codec: quantizer math, bitstream round trips, determinism, the 2% bound, damage detection."""
import numpy as np
import pytest
import torch

import latentstore_kernels as K
from latentstore.codec.api import codec_for, compress, decompress, image_symbols
from latentstore.codec.entropy import ans_v1
from latentstore.codec.zoo import available_codecs, load_codec, load_codec_file
from latentstore.errors import BitstreamError


def test_soft_parts_gradcheck():
    """Numerical gradients of the soft path (z_soft through z_q, and the soft-histogram entropy)."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    c = torch.linspace(-2, 2, 5, dtype=torch.float64).requires_grad_(True)

    def soft(z, c):
        w, _ = K.reference.soft_assign(z, c, 1.7)
        return (w * c).sum(-1)

    def entropy(z, c):
        return K.entropy_bits(K.quantize_reference(z, c, 1.7)["soft_hist"])

    assert torch.autograd.gradcheck(soft, (z, c))
    assert torch.autograd.gradcheck(entropy, (z, c))
    # straight-through: z_q's forward value is the hard centre, its gradient is z_soft's
    q = K.quantize_reference(z, c, 1.7)
    assert torch.allclose(q["z_q"], c.detach()[q["symbols"].long()])
    gq = torch.autograd.grad(q["z_q"].sum(), [z, c])
    gs = torch.autograd.grad(soft(z, c).sum(), [z, c])
    assert all(torch.allclose(a, b) for a, b in zip(gq, gs))


def test_symbol_round_trip_exact():
    rng = np.random.default_rng(0)
    freqs = rng.integers(1, 1000, size=(16, 6))
    p = freqs / freqs.sum(1, keepdims=True)
    sym = np.stack([rng.choice(6, size=(17, 23), p=p[c]) for c in range(16)]).astype(np.uint8)
    words = ans_v1.encode_words(sym, freqs)
    assert np.array_equal(ans_v1.decode_words(words, freqs, sym.shape), sym)


def test_bitstream_within_2_percent_of_cross_entropy():
    rng = np.random.default_rng(1)
    freqs = np.array([[5000, 2000, 500, 100, 10, 1]] * 8) * rng.integers(1, 4, size=(8, 1))
    p = freqs / freqs.sum(1, keepdims=True)
    sym = np.stack([rng.choice(6, size=(64, 64), p=p[c]) for c in range(8)]).astype(np.uint8)
    words = ans_v1.encode_words(sym, freqs)
    ce = ans_v1.cross_entropy_bits(sym, freqs)
    assert len(words) * 32 <= ce * 1.02, (len(words) * 32, ce)
    assert len(words) * 32 >= ce * 0.98  # and no cheating: it cannot beat the model's own cross-entropy


@pytest.mark.skipif(not available_codecs(), reason="no shipped codecs")
@pytest.mark.parametrize("name", available_codecs())
def test_shipped_codec_bytes_within_2_percent(name):
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import skimage_photo_path
    codec = load_codec(name)
    rgb = load_image(skimage_photo_path("astronaut"))  # 512x512
    sym = image_symbols(codec, rgb)
    payload_bits = len(ans_v1.encode_words(sym, codec.freqs)) * 32
    ce = ans_v1.cross_entropy_bits(sym, codec.freqs)
    assert payload_bits <= ce * 1.02 + 64, (payload_bits, ce)  # +2 words: ANS's final state flush
    data = compress(rgb, codec)
    header, back = codec_for(data).parse(data)  # the shipped codec named in the header
    assert np.array_equal(back, sym)


def test_compress_round_trip_and_size(codec, photo):
    data = compress(photo, codec)
    header, sym = codec.parse(data)
    assert (header.H, header.W) == photo.shape[:2]
    assert np.array_equal(sym, image_symbols(codec, photo))
    rec = decompress(data, codec)
    assert rec.shape == photo.shape and rec.dtype == np.uint8


def test_identical_bytes_across_runs(codec_path, photo):
    a = compress(photo, load_codec_file(codec_path))
    b = compress(photo, load_codec_file(codec_path))
    assert a == b


def test_determinism_in_a_fresh_process(codec_path, photo, tmp_path):
    import subprocess
    import sys
    np.save(tmp_path / "p.npy", photo)
    code = ("import numpy as np,sys;from latentstore.codec.api import compress;from latentstore.codec.zoo import "
            f"load_codec_file;sys.stdout.buffer.write(compress(np.load(r'{tmp_path / 'p.npy'}'), load_codec_file(r'{codec_path}')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert out == compress(photo, load_codec_file(codec_path))


@pytest.mark.parametrize("coder", ["latentstore.ans", "latentstore.rans"])
def test_damaged_bytes_are_refused(codec, photo, tmp_path, coder):
    from tests.conftest import make_codec_file
    data = compress(photo, codec, coder)
    # v1 states its payload length; v2's payload runs to the end, so its CRC is what catches a cut
    with pytest.raises(BitstreamError, match="truncated" if coder == "latentstore.ans" else "corrupt"):
        decompress(data[:-5], codec)
    with pytest.raises(BitstreamError, match="truncated"):
        decompress(data[:10], codec)
    flipped = bytearray(data)
    flipped[-3] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupt"):
        decompress(bytes(flipped), codec)
    with pytest.raises(BitstreamError, match="magic"):
        decompress(b"\x89PNG" + data[4:], codec)
    other = load_codec_file(make_codec_file(str(tmp_path / "o.safetensors"), name="test-c8", seed=1))
    with pytest.raises(BitstreamError, match="weights"):
        decompress(data, other)
    with pytest.raises(BitstreamError, match="not available"):
        decompress(data)  # no codec given: only shipped codecs are searched


def test_odd_and_tiny_sizes_keep_their_shape(codec):
    rng = np.random.default_rng(0)
    for h, w in [(8, 8), (9, 17), (37, 53), (8, 200)]:
        rgb = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        assert decompress(compress(rgb, codec), codec).shape == (h, w, 3)
