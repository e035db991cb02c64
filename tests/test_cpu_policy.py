"""The coding policy on the CPU (latentstore/device.py): what is detected, what runs, what a store records, and
that each policy gives the same bytes run after run; bf16 symbols close to fp32's, bf16 decoding close to fp32's."""
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.codec import tiling
from latentstore.codec.api import compress, decompress, rgb_to_tensor
from latentstore.codec.zoo import available_codecs, load_codec
from latentstore.data.imageio import load_image
from latentstore.data.photos import resize_shorter, skimage_photo_path
from latentstore.device import PRECISION_ENV, CodecPolicy, codec_policy, cpu_native_bf16
from latentstore.errors import UsageError
from latentstore.eval.metrics import psnr
from latentstore.store import open_store
from tests.store_fixtures import make_store, make_tree

FP32, BF16 = CodecPolicy("cpu", "fp32"), CodecPolicy("cpu", "bf16")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("src")), with_bad=False)


@pytest.fixture(scope="module")
def real_codec(codec):
    """The shipped ls-c32 (trained weights: latents near quantization boundaries as in real use), else the test codec."""
    return load_codec("ls-c32") if "ls-c32" in available_codecs() else codec


@pytest.fixture(scope="module")
def photo256():
    return np.ascontiguousarray(resize_shorter(load_image(skimage_photo_path("astronaut")), 256)[:256, :248])


def test_what_is_detected_and_what_runs(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    auto = codec_policy("cpu")
    assert auto.dtype == ("bf16" if cpu_native_bf16() else "fp32") and auto.layout == "channels_last"
    assert codec_policy("cuda").dtype == "bf16"  # no GPU needed to ask what it would run
    assert codec_policy("cpu", "fp32").dtype == "fp32" and codec_policy("cpu", "bf16").dtype == "bf16"
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert codec_policy("cpu").dtype == "fp32" and codec_policy("cuda").dtype == "fp32"
    assert codec_policy("cpu", "bf16").dtype == "bf16"  # the argument wins over the environment
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(UsageError, match=PRECISION_ENV):
        codec_policy("cpu")
    assert FP32.record() == {"device": "cpu", "dtype": "fp32", "layout": "channels_last", "compile": "eager"}


def test_flags_decide_native_bf16():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if flags:
        assert cpu_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("policy", [FP32, BF16], ids=["fp32", "bf16"])
def test_each_policy_gives_the_same_bytes_twice(tree, tmp_path, codec_path, policy):
    """Two conversions of one tree under one policy: byte-identical stores; the policy is in the schema."""
    a = make_store(tree, str(tmp_path / "a.zarr"), codec_path, precision=policy.dtype)
    b = make_store(tree, str(tmp_path / "b.zarr"), codec_path, precision=policy.dtype)
    assert a.stored > 0 and a.schema.checksums == b.schema.checksums and a.schema.totals == b.schema.totals
    sa, sb = open_store(a.dst), open_store(b.dst)
    assert all(np.array_equal(sa.symbols(i), sb.symbols(i)) for i in range(len(sa)))
    assert sa.schema.policy["encoder"] == policy.record()


def test_symbols_do_not_depend_on_batch_threads_or_tiles(real_codec, photo256):
    """What makes the bytes reproducible under bf16: an image's symbols are the same alone or in a batch, on 1 or
    2 threads, whole or in tiles (a channels_last network: NCHW and NHWC inputs round differently in bf16)."""
    x = rgb_to_tensor(photo256)
    batch = torch.cat([x, x.flip(-1), x.flip(-2)])
    threads = torch.get_num_threads()
    for pol in (FP32, BF16):
        alone = real_codec.symbols(x, tile=0, policy=pol)["symbols"]
        assert torch.equal(real_codec.symbols(batch, tile=0, policy=pol)["symbols"][:1], alone)
        try:
            torch.set_num_threads(1)
            assert torch.equal(real_codec.symbols(x, tile=0, policy=pol)["symbols"], alone)
        finally:
            torch.set_num_threads(threads)
        for workers in (1, 2):
            tiled = tiling.symbols_tiled(real_codec, x, 96, policy=pol, workers=workers)["symbols"]
            assert torch.equal(tiled, alone), (pol.dtype, workers)


def test_bf16_symbols_are_close_to_fp32(real_codec, photo256):
    """Most cells agree; the rest sit next to a quantization boundary and move by one centre."""
    x = rgb_to_tensor(photo256)
    s32 = real_codec.symbols(x, tile=0, policy=FP32)["symbols"]
    s16 = real_codec.symbols(x, tile=0, policy=BF16)["symbols"]
    agree = (s32 == s16).float().mean().item()
    print(f"bf16 vs fp32 symbols: {agree:.5f} of cells agree")
    assert agree > 0.99
    assert (s32.int() - s16.int()).abs().max() <= 1


def test_bf16_decoding_keeps_psnr(real_codec, photo256):
    data = compress(photo256, real_codec, precision="fp32")
    r32 = decompress(data, real_codec, precision="fp32")
    r16 = decompress(data, real_codec, precision="bf16")
    assert np.array_equal(decompress(data, real_codec, precision="bf16"), r16)  # deterministic
    loss = psnr(photo256, r32) - psnr(photo256, r16)
    print(f"decoder bf16 vs fp32: {psnr(r32, r16):.1f} dB apart; PSNR loss {loss:.4f} dB")
    assert psnr(r32, r16) > 45 and abs(loss) < 0.05


def test_compress_is_deterministic_under_each_policy(real_codec, photo256):
    for p in ("fp32", "bf16"):
        assert compress(photo256, real_codec, precision=p) == compress(photo256, real_codec, precision=p)


def test_a_resume_keeps_the_stores_policy(tree, tmp_path, codec_path, monkeypatch):
    """Begun in fp32: a resume under the default (bf16 here) continues in fp32 and equals a one-shot fp32 run;
    a resume that forces bf16 is refused with one line."""
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    one = make_store(tree, str(tmp_path / "one.zarr"), codec_path, precision="fp32")
    dst = str(tmp_path / "two.zarr")
    make_store(tree, dst, codec_path, precision="fp32", max_shards=1)
    with pytest.raises(UsageError, match="encoded in fp32"):
        make_store(tree, dst, codec_path, precision="bf16", resume=True)
    monkeypatch.delenv(PRECISION_ENV)
    two = make_store(tree, dst, codec_path, resume=True)  # auto: the store's fp32
    assert two.policy.startswith("fp32") and two.schema.checksums == one.schema.checksums


def test_cli_precision(tmp_path, photo):
    from PIL import Image
    src = str(tmp_path / "p.png")
    Image.fromarray(photo).save(src)
    r = CliRunner().invoke(main, ["compress", src, str(tmp_path / "a.lsb"), "--precision", "fp16"])
    assert r.exit_code == 2
    for p in ("fp32", "bf16"):
        r = CliRunner().invoke(main, ["compress", src, str(tmp_path / f"{p}.lsb"), "--precision", p, "--quiet"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["decompress", str(tmp_path / f"{p}.lsb"), str(tmp_path / f"{p}.png"),
                                      "--precision", p, "--quiet"])
        assert r.exit_code == 0, r.output
        assert load_image(str(tmp_path / f"{p}.png")).shape == photo.shape


def test_fit_batches_are_the_main_runs_batches():
    """The table fit's sample is made of whole conversion batches (so the main run reuses them): cut per shard
    as the main run cuts them, seeded, every input for small stores."""
    from latentstore.convert.tables import fit_batches
    assert fit_batches(10, 4, 6) == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9]]  # never across a shard
    big = fit_batches(10_000, 32, 256, n=512)
    assert len(big) == 16 and big == fit_batches(10_000, 32, 256, n=512) and big == sorted(big)
    main_run = {tuple(range(b0, min(b0 + 32, k0 + 256, 10_000))) for k0 in range(0, 10_000, 256)
                for b0 in range(k0, min(k0 + 256, 10_000), 32)}
    assert all(tuple(b) in main_run for b in big)
    assert len({b[0] // 256 for b in big}) > 8  # spread over the store, not its first shards


def test_convert_cli_precision_is_recorded_and_kept_on_resume(tree, tmp_path, codec_path):
    """`latentstore convert --precision fp32` records fp32; resuming that store with --precision bf16 is exit 2."""
    dst = str(tmp_path / "cli.zarr")
    base = ["convert", tree, dst, "--codec", codec_path, "--size", "32", "--shard-size", "4", "--quiet"]
    r = CliRunner().invoke(main, base + ["--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert open_store(dst).schema.policy["encoder"]["dtype"] == "fp32"
    r = CliRunner().invoke(main, base + ["--resume", "--precision", "bf16"])
    assert r.exit_code == 2 and "encoded in fp32" in r.output, r.output
    assert CliRunner().invoke(main, base[:-1] + ["--precision", "fp16"]).exit_code == 2
