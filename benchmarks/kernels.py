"""Kernel benchmark: fused Triton quantizer vs the PyTorch reference (eager and torch.compile).

    python benchmarks/kernels.py            # on a CUDA GPU: table + a CSV row per case
    python benchmarks/kernels.py --smoke    # CPU, tiny shapes, TRITON_INTERPRET=1: checks the script, reports nothing

Sizes from real use: an ImageNet training batch (256 x 32 x 28 x 28), a codec training batch of
latents (64 x 32 x 64 x 64) and a conversion batch (512 x 32 x 32 x 32). For each of forward,
backward and conversion: median time (triton.testing.do_bench), speed-up over eager and over
torch.compile, and achieved GB/s against the device-to-device copy bandwidth measured in the
same run. Bytes counted are the minimum each kernel must move (see the NOTES in kernels/).
Also a whole codec training step (batch 16, 256 x 256, C=32) with the kernels and with the reference.
Results append to benchmarks/results/kernels.csv with the GPU name, date and commit.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "kernels.csv")
SIZES = {"imagenet-batch": (256, 32, 28, 28), "codec-train": (64, 32, 64, 64), "conversion": (512, 32, 32, 32)}
SMOKE_SIZES = {"smoke": (2, 4, 6, 7)}


def bench(fn, smoke: bool) -> float:
    """Median milliseconds."""
    if smoke:
        import time
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def copy_bandwidth_gbs(device: str, smoke: bool) -> float:
    n = (1 << 16) if smoke else (1 << 28)  # 1 GiB of fp32 on a GPU: far past L2
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), smoke)
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e9


def cases(shape, dtype, device):
    import latentstore_kernels as K
    from latentstore_kernels.fused_quantize import quantize_backward, quantize_forward
    from latentstore_kernels.fused_symbols import symbols_fused
    torch.manual_seed(0)
    z = (torch.randn(shape, device=device) * 1.5).to(dtype)
    c = torch.linspace(-2, 2, 6, device=device)
    bias = torch.randn(shape[1], device=device)
    gy = torch.randn_like(z)
    gH = torch.randn(shape[1], 6, device=device) * 1e-3
    es = z.element_size()
    n = z.numel()

    def ref_fwd():
        return K.quantize_reference(z, c, 2.0)

    def ref_bwd_setup():
        zr = z.detach().requires_grad_(True)
        cr = c.detach().requires_grad_(True)
        out = K.quantize_reference(zr, cr, 2.0)
        return zr, cr, out

    def ref_bwd():
        zr, cr, out = ref_bwd_setup()
        torch.autograd.backward([out["z_q"], out["soft_hist"]], [gy, gH], inputs=[zr, cr])

    compiled_fwd = torch.compile(K.quantize_reference)
    compiled_sym = torch.compile(K.symbols_reference)

    def compiled_bwd():
        zr = z.detach().requires_grad_(True)
        cr = c.detach().requires_grad_(True)
        out = compiled_fwd(zr, cr, 2.0)
        torch.autograd.backward([out["z_q"], out["soft_hist"]], [gy, gH], inputs=[zr, cr])

    return [
        # name, fused, eager, compiled, minimum bytes moved
        ("forward", lambda: quantize_forward(z, c, 2.0), ref_fwd, lambda: compiled_fwd(z, c, 2.0), n * (2 * es + 1)),
        ("backward", lambda: quantize_backward(z, c, 2.0, gy, gH), ref_bwd, compiled_bwd, n * 3 * es),
        ("conversion", lambda: symbols_fused(z, c, bias), lambda: K.symbols_reference(z, c, bias),
         lambda: compiled_sym(z, c, bias), n * (es + 1)),
    ]


def training_step_ratio(device: str, smoke: bool) -> tuple[float, float]:
    """A whole codec training step (batch 16, 256x256, C=32): kernels vs reference, ms each."""
    from latentstore.codec.model import CodecConfig, LatentCodec
    from latentstore_train.codec import CodecTrainConfig, loss_terms
    b, s = (2, 16) if smoke else (16, 256)
    model = LatentCodec(CodecConfig(C=32)).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(b, 3, s, s, device=device)
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with ac:
            t = loss_terms(model, x)
        opt.zero_grad()
        t["loss"].backward()
        opt.step()

    times = {}
    for backend in ("triton", "reference"):
        os.environ["LATENTSTORE_KERNELS"] = backend
        times[backend] = bench(step, smoke)
    os.environ.pop("LATENTSTORE_KERNELS")
    return times["triton"], times["reference"]


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run through the Triton interpreter; writes nothing")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    a = ap.parse_args(argv)
    if a.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device, sizes = "cpu", SMOKE_SIZES
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: the kernel benchmark needs one (use --smoke to check the script on CPU).")
        return 0
    else:
        device, sizes = "cuda", SIZES
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    copy = copy_bandwidth_gbs(device, a.smoke)
    print(f"device: {gpu}; device-to-device copy: {copy:.0f} GB/s (read + write)")
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[a.dtype]
    rows = []
    hdr = f"{'size':15} {'dtype':5} {'kernel':10} {'fused ms':>9} {'eager ms':>9} {'compile ms':>10} {'x eager':>8} {'x compile':>9} {'GB/s':>7} {'% copy':>7}"
    print(hdr)
    for name, shape in sizes.items():
        for dtype in dtypes:
            for kname, fused, eager, compiled, nbytes in cases(shape, dtype, device):
                tf, te, tc = bench(fused, a.smoke), bench(eager, a.smoke), bench(compiled, a.smoke)
                gbs = nbytes / (tf * 1e-3) / 1e9
                row = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "gpu": gpu,
                       "size": name, "shape": "x".join(map(str, shape)), "dtype": str(dtype).split(".")[-1],
                       "kernel": kname, "fused_ms": tf, "eager_ms": te, "compile_ms": tc, "speedup_eager": te / tf,
                       "speedup_compile": tc / tf, "gbs": gbs, "copy_gbs": copy, "pct_copy": 100 * gbs / copy}
                rows.append(row)
                print(f"{name:15} {row['dtype']:5} {kname:10} {tf:9.3f} {te:9.3f} {tc:10.3f} {te / tf:8.2f} "
                      f"{tc / tf:9.2f} {gbs:7.0f} {row['pct_copy']:6.1f}%")
    tk, tr = training_step_ratio(device, a.smoke)
    print(f"codec training step (batch 16, 256x256, C=32): kernels {tk:.2f} ms, reference {tr:.2f} ms, "
          f"ratio {tr / tk:.2f}x")
    if a.smoke:
        print("smoke run: nothing written (CPU interpreter timings mean nothing)")
        return 0
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["train_step_kernels_ms", "train_step_reference_ms"])
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**r, "train_step_kernels_ms": tk, "train_step_reference_ms": tr})
    print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))
    sys.exit(main())
