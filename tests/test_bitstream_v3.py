"""Bitstream v3 (`latentstore.rans3`) through the codec, the CLI and the service's latent uploads; codec files and
checkpoints from before v3 keep loading, and v2 bitstreams keep decoding."""
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.codec import bitstream as bs
from latentstore.codec.api import compress, decompress, image_symbols
from latentstore.codec.entropy import rans_v2, rans_v3
from latentstore.codec.model import CodecConfig, LatentCodec, v3_tables_from_v2
from latentstore.codec.zoo import load_codec, load_codec_file
from latentstore.data.photos import available_photos, resize_shorter
from latentstore.errors import BitstreamError
from latentstore.serve.latent_ingest import LatentBounds, check_latent_upload
from latentstore.serve.uploads import Rejected

G = os.path.join(os.path.dirname(__file__), "golden")
V3 = os.path.join(G, "v3")


def golden_codec():
    return load_codec_file(os.path.join(G, "golden-c4.safetensors"))


def test_golden_v3_bitstream_still_decodes():
    codec = golden_codec()
    data = open(os.path.join(V3, "image.lsb"), "rb").read()
    header, sym = codec.parse(data)
    assert header.version == 3 and np.array_equal(sym, np.load(os.path.join(V3, "image_symbols.npy")))
    img = np.asarray(Image.open(os.path.join(G, "image.png")).convert("RGB"))
    assert decompress(data, codec).shape == img.shape
    assert compress(img, codec, "latentstore.rans3") == data  # the golden codec's v3 tables are derived: stable


def test_compress_writes_v3_by_default_and_v2_on_request_with_the_same_symbols():
    codec = golden_codec()
    img = np.asarray(Image.open(os.path.join(G, "image.png")).convert("RGB"))
    v3, v2 = compress(img, codec), compress(img, codec, "latentstore.rans")
    assert bs.unpack(v3)[0].version == 3 and bs.unpack(v2)[0].version == 2
    assert np.array_equal(codec.parse(v3)[1], codec.parse(v2)[1])
    old = open(os.path.join(G, "v2", "image.lsb"), "rb").read()  # made before v3 existed
    assert np.array_equal(codec.parse(old)[1], codec.parse(v2)[1])
    bad = bytearray(v3)
    bad[-3] ^= 0x40
    with pytest.raises(BitstreamError, match="CRC"):
        codec.parse(bytes(bad))


def test_a_state_from_before_v3_loads_with_v2s_model_spread_over_the_new_contexts():
    codec = golden_codec()
    state = {k: v for k, v in codec.state_dict().items() if k != "entropy.rans3_tables"}  # an old checkpoint
    fresh = LatentCodec(codec.cfg)
    fresh.load_state_dict(state)
    v2 = codec.entropy.tables("latentstore.rans")
    v3 = fresh.entropy.tables("latentstore.rans3")
    assert np.array_equal(v3, v3_tables_from_v2(v2)) and fresh.hash == codec.hash  # tables are not identity
    s = image_symbols(codec, np.asarray(Image.open(os.path.join(G, "image.png")).convert("RGB")))
    lanes = rans_v3.lane_rows(*s.shape[:2], rans_v3.default_lanes(*s.shape))
    assert rans_v3.ideal_bits(s, v3) >= rans_v2.ideal_bits(s, v2) - 1e-6  # v2's model, minus lane-start rows
    assert len(lanes) == rans_v3.default_lanes(*s.shape) + 1


def test_an_alphabet_over_six_symbols_stays_on_v2():
    codec = LatentCodec(CodecConfig(name="l8", C=2, N=8, L=8)).eval()
    assert codec.entropy.rans3_tables.shape == (2, 0, 8)
    img = (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)
    assert bs.unpack(compress(img, codec))[0].version == 2
    with pytest.raises(BitstreamError, match="no tables for entropy coder 'latentstore.rans3'"):
        compress(img, codec, "latentstore.rans3")


def test_shipped_codecs_code_fewer_bytes_in_v3():
    """The shipped codecs' v3 tables are fitted on the training photos (refit_tables): on a validation photo v3
    must beat v2 on the same symbols (the programme's codecs: 10-18% fewer bytes)."""
    photo = next(p for p in available_photos("val"))
    rgb = resize_shorter(photo.load(), 256)
    for name in ("ls-c8", "ls-c32"):
        codec = load_codec(name)
        assert "rans3_tables" in codec.meta, f"{name}: v3 tables not fitted (run refit_tables)"
        s = image_symbols(codec, rgb)
        v2 = len(codec.pack(s, rgb.shape[:2], "latentstore.rans"))
        v3 = len(codec.pack(s, rgb.shape[:2], "latentstore.rans3"))
        assert v3 < 0.97 * v2, (name, v3, v2)


def test_cli_compress_picks_the_bitstream(tmp_path):
    img = tmp_path / "x.png"
    Image.open(os.path.join(G, "image.png")).save(img)
    codec = os.path.join(G, "golden-c4.safetensors")
    out = {}
    for choice in ("v2", "v3", None):
        dst = tmp_path / f"{choice}.lsb"
        args = ["compress", str(img), str(dst), "--codec", codec] + (["--bitstream", choice] if choice else [])
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        out[choice] = dst.read_bytes()
        assert f"bitstream {choice or 'v3'}" in r.output
        r = CliRunner().invoke(main, ["decompress", str(dst), str(tmp_path / f"{choice}.png"), "--codec", codec])
        assert r.exit_code == 0, r.output
    assert out[None] == out["v3"] and out["v2"][2] == 2


def test_the_service_takes_a_v3_upload_and_keeps_it_as_v2():
    codec = golden_codec()
    img = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    sent = compress(img, codec)
    assert sent[2] == 3
    c = check_latent_upload(sent, codec, LatentBounds(side=32))
    assert c.recoded and c.header.version == 3 and np.array_equal(c.symbols, codec.parse(sent)[1])
    assert c.payload == rans_v2.encode(c.symbols, codec.entropy.tables("latentstore.rans"))  # the store's v2 bytes
    header, payload = bs.unpack(sent)
    bad = bytearray(payload)
    bad[-1] ^= 0x01  # under a valid CRC: the lane does not decode
    forged = bs.pack(header, bytes(bad), codec.entropy.tables("latentstore.rans3"))
    with pytest.raises(Rejected) as e:
        check_latent_upload(forged, codec, LatentBounds(side=32))
    assert e.value.code == "lane_decode"
    with pytest.raises(Rejected) as e:
        check_latent_upload(sent[:-2], codec, LatentBounds(side=32))
    assert e.value.code == "corrupt_bitstream"
    with pytest.raises(Rejected) as e:
        check_latent_upload(b"LS\x04" + sent[3:], codec, LatentBounds(side=32))
    assert e.value.code == "bad_version" and "v2 or v3" in e.value.reason


def test_refit_fills_v3_tables_without_changing_the_codec(tmp_path):
    from latentstore_train.codec import refit_tables
    path = str(tmp_path / "g.safetensors")
    with open(os.path.join(G, "golden-c4.safetensors"), "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    before = load_codec_file(path)
    refit_tables(path, max_photos=2, coders=("latentstore.rans3",))
    after = load_codec_file(path)
    assert after.hash == before.hash and "rans3_tables" in after.meta and "rans_tables" not in after.meta
    assert np.array_equal(after.entropy.tables("latentstore.rans"), before.entropy.tables("latentstore.rans"))
    assert not np.array_equal(after.entropy.tables("latentstore.rans3"), before.entropy.tables("latentstore.rans3"))
    assert torch.equal(after.entropy.freqs, before.entropy.freqs)
