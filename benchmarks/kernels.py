"""Kernel benchmark: the fused Triton quantizer against the PyTorch reference (eager and torch.compile).

    python benchmarks/kernels.py            # CUDA GPU, all sections: benchmarks/results/kernels-<gpu>-<date>.{csv,md}
    python benchmarks/kernels.py --smoke    # CPU, tiny shapes, TRITON_INTERPRET=1: checks the script, writes nothing
    python benchmarks/kernels.py --sass     # no GPU needed: ptxas (sm_90) registers and instructions per element
                                            # of each kernel and the instruction-issue ceiling they imply

Sections (all in one run, one GPU):
  kernels  forward, backward (alone) and conversion (symbols + histogram) at training sizes (batch 64 of
           256x256 crops -> z 64x32x32x32, L=6 and 16, fp32 and bf16) and at a conversion size: median
           time (triton.testing.do_bench, L2 flushed), GB/s over the minimum bytes each kernel must move
           (the NOTES in kernels/), as % of the device-to-device copy bandwidth measured in the same run
           (1 GiB, and a copy of the kernel's own byte count), speed-up over eager and over torch.compile
           of the reference. Variants: the tuned configuration (the number that counts), the untuned
           default (LATENTSTORE_AUTOTUNE=0) and the atomic histograms (LATENTSTORE_HIST=atomic).
  memory   peak CUDA memory (max_memory_allocated above the inputs) of the fused path against the
           reference: forward, and forward + backward.
  step     whole codec training steps (LatentCodec, C=32, bf16 autocast, Adam), batch 16 and 64 of
           256x256 crops: steps/s with LATENTSTORE_KERNELS=triton against =reference, interleaved rounds,
           and each path's peak memory. This is the number a user feels.
  sass     (with --sass, or appended on a GPU run) the static instruction counts behind the ceilings.
Targets (issue #12) are checked at the end and written to the .md.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")

# name -> (B, C, h, w) of z. 256x256 crops -> 32x32 latents (the encoder downsamples by 8).
SIZES = {"train-b64": (64, 32, 32, 32), "conversion-b512": (512, 32, 32, 32)}
LS = (6, 16)
SMOKE_SIZES = {"smoke": (3, 4, 5, 7)}
SMOKE_LS = (6,)
TARGET_SIZE = "train-b64"  # the acceptance size of issue #12
STEP_BATCHES = (16, 64)
STEP_CROP = 256


def _pin_environment(smoke: bool, sass: bool) -> None:
    """Before any kernel module is imported: Triton decides interpretation when a kernel is defined."""
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif sass:
        os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, os.path.dirname(HERE))


# ------------------------------------------------------------------------------------- timing
def bench(fn, smoke: bool) -> float:
    """Median milliseconds (GPU: triton.testing.do_bench, L2 flushed between runs)."""
    if smoke:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def copy_gbs(nbytes: int, device: str, smoke: bool) -> float:
    """Device-to-device copy of nbytes/2 read + nbytes/2 written, GB/s (read + write)."""
    import torch
    n = max(1024, nbytes // 8)  # fp32 elements per buffer: reads n*4 and writes n*4 bytes
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), smoke)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------ kernels
def kernel_cases(shape, L: int, dtype, device: str, smoke: bool, with_compile: bool = True):
    """[(kernel, bytes, {variant: fn}, eager_fn, compiled_fn or None)] for one size."""
    import torch
    import latentstore_kernels as K
    from latentstore_kernels._tuning import default_config, sm_count, tuned_config
    from latentstore_kernels.fused_quantize import quantize_backward, quantize_forward
    from latentstore_kernels.fused_symbols import symbols_fused

    torch.manual_seed(0)
    B, C, h, w = shape
    z = (torch.randn(shape, device=device) * 1.5).to(dtype)
    c = torch.linspace(-2, 2, L, device=device)
    bias = torch.randn(C, device=device)
    gy = torch.randn_like(z)
    gH = torch.randn(C, L, device=device) * 1e-3
    es, n = z.element_size(), z.numel()
    compile_kw = {"backend": "eager"} if smoke else {}  # smoke: check the wiring, not inductor's C++ build
    c_fwd = torch.compile(K.quantize_reference, **compile_kw)
    c_sym = torch.compile(K.symbols_reference, **compile_kw)

    def graph(fwd):
        zr = z.detach().requires_grad_(True)
        cr = c.detach().requires_grad_(True)
        out = fwd(zr, cr, 2.0)
        return zr, cr, out

    def backward_only(fwd):
        """Times the backward alone: the graph is built on the first call and kept (retain_graph)."""
        held = []

        def run():
            if not held:
                held.append(graph(fwd))
            zr, cr, out = held[0]
            return torch.autograd.grad([out["z_q"], out["soft_hist"]], [zr, cr], [gy, gH], retain_graph=True)
        return run

    def variants(launch, kind):
        """tuned: what a caller gets (the tuner picks once per shape bucket); default: the untuned
        heuristic (LATENTSTORE_AUTOTUNE=0); atomic: the tuned configuration with LATENTSTORE_HIST=atomic."""
        d = default_config(kind, L, B, C, h * w, es, sm_count(z.device))

        def atomic():
            cfg = tuned_config(kind, z, L, run=None)  # cached by the "tuned" variant, which runs first
            with env(LATENTSTORE_HIST="atomic"):
                return launch(config=cfg)
        return {"tuned": launch, "default": lambda: launch(config=d), "atomic": atomic}

    fwd = variants(lambda config=None: quantize_forward(z, c, 2.0, config=config), "forward")
    bwd = variants(lambda config=None: quantize_backward(z, c, 2.0, gy, gH, config=config), "backward")
    sym = variants(lambda config=None: symbols_fused(z, c, bias, config=config), "symbols")
    def fwd_bwd(fwd):
        def run():
            zr, cr, out = graph(fwd)
            return torch.autograd.grad([out["z_q"], out["soft_hist"]], [zr, cr], [gy, gH])
        return run

    cw = with_compile or None
    # (kernel, bytes, fused variants, eager, compiled, compiled fallback: (a, b) timed as a - b)
    return [
        ("forward", n * (2 * es + 1), fwd, lambda: K.quantize_reference(z, c, 2.0), cw and (lambda: c_fwd(z, c, 2.0)),
         None),
        ("backward", n * 3 * es, bwd, backward_only(K.quantize_reference), cw and backward_only(c_fwd),
         cw and (fwd_bwd(c_fwd), lambda: c_fwd(z, c, 2.0))),  # if a compiled graph refuses retain_graph
        ("conversion", n * (es + 1), sym, lambda: K.symbols_reference(z, c, bias), cw and (lambda: c_sym(z, c, bias)),
         None),
    ]


def run_kernels(sizes, Ls, dtypes, device, smoke, copy_big, log):
    import torch
    from latentstore_kernels._tuning import tuned_configs
    rows = []
    log(f"{'size':16} {'dtype':8} {'L':>2} {'kernel':10} {'variant':8} {'ms':>8} {'GB/s':>7} {'%copy':>6} "
        f"{'%same':>6} {'x eager':>8} {'x compile':>9}")
    for name, shape in sizes.items():
        for L in Ls:
            for dtype in dtypes:
                cases = kernel_cases(shape, L, dtype, device, smoke, with_compile=smoke or name == TARGET_SIZE)
                for kname, nbytes, fused, eager, compiled, fallback in cases:
                    te = bench(eager, smoke)
                    tc = float("nan")  # torch.compile only at the acceptance size (each shape is a recompile)
                    if compiled is not None:
                        try:
                            tc = bench(compiled, smoke)
                        except Exception as e:  # a compile failure is a result, not a crash
                            log(f"  torch.compile {kname}: {type(e).__name__}: {e}"[:200])
                            if fallback is not None:
                                tc = bench(fallback[0], smoke) - bench(fallback[1], smoke)
                                log(f"  torch.compile {kname}: timed as (forward+backward) - forward instead")
                    same = copy_gbs(nbytes, device, smoke)
                    for variant, fn in fused.items():
                        tf = bench(fn, smoke)
                        gbs = nbytes / (tf * 1e-3) / 1e9
                        row = {"section": "kernels", "size": name, "shape": "x".join(map(str, shape)),
                               "dtype": str(dtype).split(".")[-1], "L": L, "kernel": kname, "variant": variant,
                               "ms": tf, "eager_ms": te, "compile_ms": tc, "x_eager": te / tf, "x_compile": tc / tf,
                               "gbs": gbs, "copy_gbs": copy_big, "pct_copy": 100 * gbs / copy_big,
                               "same_size_copy_gbs": same, "pct_same_size_copy": 100 * gbs / same}
                        rows.append(row)
                        log(f"{name:16} {row['dtype']:8} {L:2d} {kname:10} {variant:8} {tf:8.4f} {gbs:7.0f} "
                            f"{row['pct_copy']:5.1f}% {row['pct_same_size_copy']:5.1f}% {te / tf:8.2f} {tc / tf:9.2f}")
                    if device == "cuda":
                        torch.cuda.empty_cache()
    for key, cfg in tuned_configs().items():
        kind, L, dt, C, B2, HW2, mode = key[:7]
        rows.append({"section": "tuned", "kernel": kind, "L": L, "dtype": str(dt).split(".")[-1],
                     "shape": f"B<={B2} C={C} HW<={HW2}", "variant": mode,
                     "config": f"BLOCK={cfg.BLOCK} ROWS={cfg.ROWS} num_warps={cfg.num_warps}"})
    return rows


# ------------------------------------------------------------------------------------- memory
def peak_bytes(fn, device: str):
    """Peak allocated bytes above what was allocated before fn(); None off CUDA (smoke runs fn only)."""
    import torch
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def run_memory(shape, Ls, dtypes, device, log):
    import torch
    import latentstore_kernels as K
    from latentstore_kernels.fused_quantize import quantize_fused
    rows = []
    log(f"{'shape':14} {'dtype':8} {'L':>2} {'pass':9} {'fused MiB':>10} {'reference MiB':>14} {'ratio':>6}")
    for L in Ls:
        for dtype in dtypes:
            torch.manual_seed(0)
            z = (torch.randn(shape, device=device) * 1.5).to(dtype)
            c = torch.linspace(-2, 2, L, device=device)
            gy = torch.randn_like(z)
            gH = torch.randn(shape[1], L, device=device) * 1e-3

            def fwd(q):
                def run():
                    with torch.no_grad():
                        return q(z, c, 2.0)
                return run

            def fwd_bwd(q):
                def run():
                    zr = z.detach().requires_grad_(True)
                    cr = c.detach().requires_grad_(True)
                    out = q(zr, cr, 2.0)
                    torch.autograd.backward([out["z_q"], out["soft_hist"]], [gy, gH], inputs=[zr, cr])
                    return zr.grad, cr.grad
                return run

            for pas, make in (("forward", fwd), ("fwd+bwd", fwd_bwd)):
                pf = peak_bytes(make(quantize_fused), device)
                pr = peak_bytes(make(K.quantize_reference), device)
                ratio = pf / pr if pf is not None and pr else float("nan")
                rows.append({"section": "memory", "shape": "x".join(map(str, shape)),
                             "dtype": str(dtype).split(".")[-1], "L": L, "kernel": pas, "fused_peak_bytes": pf,
                             "reference_peak_bytes": pr, "peak_ratio": ratio})
                mib = (lambda b: f"{b / 2**20:10.1f}" if b is not None else "       n/a")
                log(f"{'x'.join(map(str, shape)):14} {rows[-1]['dtype']:8} {L:2d} {pas:9} {mib(pf)} {mib(pr):>14} "
                    f"{ratio:6.3f}")
    return rows


# --------------------------------------------------------------------------------------- step
def _codec_imports():
    """The codec and its training loss; grep for them if a restructure moved them."""
    from latentstore.codec.model import CodecConfig, LatentCodec
    from latentstore_train.codec import loss_terms
    return CodecConfig, LatentCodec, loss_terms


def run_step(batches, crop, device, smoke, log, profile=False):
    """Codec training steps/s, kernels vs reference: same model, same batch, rounds interleaved."""
    import torch
    CodecConfig, LatentCodec, loss_terms = _codec_imports()
    rows = []
    for b in batches:
        torch.manual_seed(0)
        model = LatentCodec(CodecConfig(C=32)).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        x = torch.rand(b, 3, crop, crop, device=device)
        ac = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

        def step():
            with ac:
                t = loss_terms(model, x)
            opt.zero_grad(set_to_none=True)
            t["loss"].backward()
            opt.step()

        def timed(n):
            if device != "cuda":
                t = time.perf_counter()
                for _ in range(n):
                    step()
                return (time.perf_counter() - t) * 1e3 / n
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(n):
                step()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e) / n

        backends = ("triton", "reference")
        peaks, per = {}, {k: [] for k in backends}
        warm, rounds, n = (1, 1, 1) if smoke else (5, 7, 10)
        for be in backends:  # warm-up (JIT, autotuning, cuDNN) and the peak memory of each path
            with env(LATENTSTORE_KERNELS=be):
                for _ in range(warm):
                    step()
                peaks[be] = peak_bytes(lambda: timed(1), device)
        for _ in range(rounds):
            for be in backends:
                with env(LATENTSTORE_KERNELS=be):
                    per[be].append(timed(n))
        mk, mr = statistics.median(per["triton"]), statistics.median(per["reference"])
        rows.append({"section": "step", "size": f"batch {b}, {crop}x{crop} crops, C=32, bf16 autocast",
                     "shape": f"{b}x3x{crop}x{crop}", "kernel": "train step", "kernels_ms": mk, "reference_ms": mr,
                     "kernels_steps_s": 1e3 / mk, "reference_steps_s": 1e3 / mr, "step_speedup": mr / mk,
                     "kernels_peak_bytes": peaks["triton"], "reference_peak_bytes": peaks["reference"]})
        pk = f"{peaks['triton'] / 2**20:.0f}" if peaks["triton"] is not None else "n/a"
        pr = f"{peaks['reference'] / 2**20:.0f}" if peaks["reference"] is not None else "n/a"
        log(f"batch {b:3d} {crop}x{crop}: kernels {mk:8.3f} ms ({1e3 / mk:7.1f} steps/s), reference {mr:8.3f} ms "
            f"({1e3 / mr:7.1f} steps/s): {mr / mk:.2f}x; peak MiB kernels {pk}, reference {pr}")
        if profile and device == "cuda":
            for be in backends:
                with env(LATENTSTORE_KERNELS=be):
                    log(f"-- top CUDA kernels of one step, {be} path, batch {b} --")
                    log(profile_step(step))
        del model, opt, x
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def profile_step(step, top: int = 12) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_device_time_total", row_limit=top)


# --------------------------------------------------------------------------------------- sass
def run_sass(log, clock_ghz: float, sms: int, copy: float | None, device: str | None = None):
    """Compiles each kernel for sm_90 with ptxas (no GPU needed) at the default configuration for the
    acceptance size and counts SASS: registers, spills, instructions per element in the row loop, and
    the per-program fixed part; then the ceiling that instruction issue alone puts on throughput:
    elements/s <= SMs * 4 schedulers * clock * 32 lanes / (instructions per element)."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from latentstore_kernels import _common as cm
    from latentstore_kernels import fused_quantize as fq
    from latentstore_kernels import fused_symbols as fs
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    B, C, h, w = SIZES[TARGET_SIZE]
    HW = h * w
    rows = []

    def compile_sass(fn, sig, consts, nw):
        names = fn.arg_names
        attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, v in sig.items()
                 if v.startswith("*") or k in ("B", "C", "HW", "CHW")}
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw})
        import tempfile
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        try:
            txt = subprocess.check_output([os.path.join(bindir, "cuobjdump"), "-sass", f.name], text=True)
            res = subprocess.check_output([os.path.join(bindir, "cuobjdump"), "-res-usage", f.name], text=True)
        finally:
            os.unlink(f.name)
        lines = []
        for line in txt.splitlines():
            m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m and not m.group(2).strip().startswith("NOP"):
                lines.append((int(m.group(1), 16), m.group(2)))
        loops = []
        for addr, ins in lines:
            m = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ins)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))
        body = 0
        if loops:
            lo, hi = max(loops, key=lambda t: t[1] - t[0])
            body = sum(1 for a, _ in lines if lo <= a <= hi)
        return (len(lines), body, int(re.search(r"REG:(\d+)", res).group(1)),
                int(re.search(r"STACK:(\d+)", res).group(1)))

    for dt, es in (("bf16", 2), ("fp32", 4)):
        for L in LS:
            for kname, kind, fn, nbytes in (("forward", "forward", fq._quantize_fwd_kernel, 2 * es + 1),
                                            ("backward", "backward", fq._quantize_bwd_kernel, 3 * es),
                                            ("conversion", "symbols", fs._symbols_kernel, es + 1)):
                cfgs = {"default": cm.default_config(kind, L, B, C, HW, es, sms)}
                tuned = cm.tuned_configs().get((kind, L, {2: torch.bfloat16, 4: torch.float32}[es], C,
                                                triton.next_power_of_2(B), triton.next_power_of_2(HW), "partial",
                                                device)) if device else None
                if tuned is not None and tuned != cfgs["default"]:
                    cfgs["tuned"] = tuned
                ints = dict(B="i32", C="i32", HW="i32", CHW="i32", NHB="i32", NBG="i32")
                if kind == "forward":
                    sig = dict(z_ptr=f"*{dt}", c_ptr="*fp32", zq_ptr=f"*{dt}", sym_ptr="*u8", soft_ptr="*fp32",
                               hard_ptr="*i32", **ints, s2="fp32")
                elif kind == "backward":
                    sig = dict(z_ptr=f"*{dt}", c_ptr="*fp32", gzq_ptr=f"*{dt}", gsoft_ptr="*fp32", gz_ptr=f"*{dt}",
                               gc_ptr="*fp32", **ints, s2="fp32", two_sigma="fp32")
                else:
                    sig = dict(z_ptr=f"*{dt}", c_ptr="*fp32", bias_ptr="*fp32", sym_ptr="*u8", hard_ptr="*i32", **ints)
                for which, cfg in cfgs.items():
                    consts = dict(L=L, LP=triton.next_power_of_2(L), BLOCK=cfg.BLOCK, ATOMIC=False)
                    if kind in ("forward", "backward"):
                        consts["APPROX"] = cm.FDIV_APPROX
                    if kind in ("forward", "symbols"):
                        consts["V"] = cm.pack_width(cfg, HW, es)
                    if kind == "symbols":
                        consts["HAS_BIAS"] = True
                    total, body, regs, stack = compile_sass(fn, sig, {**consts, "ROWS": cfg.ROWS}, cfg.num_warps)
                    one, _, _, _ = compile_sass(fn, sig, {**consts, "ROWS": 1}, cfg.num_warps)
                    per_thread = cfg.BLOCK // (32 * cfg.num_warps)
                    per_elem = body / per_thread
                    fixed = max(0, one - body)  # ROWS=1 is straight-line: the fixed part plus one loop body
                    eff = per_elem + fixed / (per_thread * cfg.ROWS)
                    elems_s = sms * 4 * clock_ghz * 1e9 * 32 / eff
                    ceiling = elems_s * nbytes / 1e9
                    row = {"section": "sass", "size": TARGET_SIZE, "dtype": dt, "L": L, "kernel": kname,
                           "variant": which, "config": f"BLOCK={cfg.BLOCK} ROWS={cfg.ROWS} num_warps={cfg.num_warps}",
                           "regs": regs, "stack_bytes": stack, "instr_per_element": round(per_elem, 1),
                           "fixed_instr_per_program_thread": fixed, "instr_per_element_amortised": round(eff, 1),
                           "issue_bound_gbs": round(ceiling), "bytes_per_element": nbytes}
                    if copy:
                        row["issue_bound_pct_copy"] = round(100 * ceiling / copy, 1)
                    rows.append(row)
                    pct = f" = {100 * ceiling / copy:5.1f}% of copy" if copy else ""
                    log(f"{dt:4} L={L:2d} {kname:10} {which:7} {row['config']:31} regs {regs:3d} stack {stack:3d} "
                        f"instr/elem {per_elem:6.1f} (+{fixed} per program-thread -> {eff:6.1f}) "
                        f"issue ceiling {ceiling:6.0f} GB/s{pct}")
    return rows


# ----------------------------------------------------------------------------------- targets
def check_targets(rows) -> list[str]:
    """Issue #12's numbers, at the acceptance size, from this run's rows."""
    out = []
    k = [r for r in rows if r.get("section") == "kernels" and r.get("size") == TARGET_SIZE and r["variant"] == "tuned"]
    for r in k:
        ok_bw = r["pct_copy"] >= 70
        ok_c = r["x_compile"] >= 2
        out.append(f"{r['kernel']:10} {r['dtype']:8} L={r['L']:2d}: {r['pct_copy']:5.1f}% of copy "
                   f"({'ok' if ok_bw else 'MISSED'} >= 70%, goal 85%), {r['x_compile']:.2f}x compile "
                   f"({'ok' if ok_c else 'MISSED'} >= 2x)")
    for r in (r for r in rows if r.get("section") == "step"):
        out.append(f"step {r['shape']}: {r['step_speedup']:.2f}x reference "
                   f"({'ok' if r['step_speedup'] >= 1.3 else 'MISSED'} >= 1.3x)")
        if r.get("kernels_peak_bytes") and r.get("reference_peak_bytes"):
            ratio = r["kernels_peak_bytes"] / r["reference_peak_bytes"]
            out.append(f"step {r['shape']}: peak memory {ratio:.3f} x reference "
                       f"({'ok' if ratio <= 1 else 'MISSED'} <= 1)")
    for r in (r for r in rows if r.get("section") == "memory" and r.get("peak_ratio") == r.get("peak_ratio")):
        out.append(f"peak memory {r['kernel']:8} {r['dtype']:8} L={r['L']:2d}: {r['peak_ratio']:.3f} x reference "
                   f"({'ok' if r['peak_ratio'] <= 1 else 'MISSED'} <= 1)")
    return out


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:
        return "unknown"


ALL_SECTIONS = "kernels,memory,step,sass"


def write_results(rows, lines, gpu: str, sections: str = ALL_SECTIONS) -> tuple[str, str]:
    """benchmarks/results/kernels-<gpu>-<date>.{csv,md}; a partial run (--sections) adds its sections."""
    date = datetime.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    part = "" if set(sections.split(",")) >= set(ALL_SECTIONS.split(",")) else "-" + sections.replace(",", "-")
    base = os.path.join(RESULTS_DIR, f"kernels-{slug}-{date}{part}")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    fields = ["date", "commit", "gpu"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"date": date, "commit": git_commit(), "gpu": gpu, **r})
    with open(base + ".md", "w") as f:
        f.write(f"# Fused quantizer kernels on {gpu}, {date} (commit {git_commit()})\n\n")
        f.write(f"Command: `python benchmarks/kernels.py --sections {sections}` (one run; every number below is "
                "from it).\n\n```\n")
        f.write("\n".join(lines))
        f.write("\n```\n")
    return base + ".csv", base + ".md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run through the Triton interpreter; writes nothing")
    ap.add_argument("--sass", action="store_true", help="only the static sm_90 instruction counts (no GPU needed)")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--sections", default=ALL_SECTIONS,
                    help="comma-separated subset of kernels,memory,step,sass (GPU run)")
    ap.add_argument("--clock-ghz", type=float, default=1.755,
                    help="SM clock for the issue ceiling (H100 SXM: ~1.755 GHz sustained)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-step CUDA kernel profile tables")
    a = ap.parse_args(argv)
    _pin_environment(a.smoke, a.sass)
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(str(s))

    if a.sass:
        run_sass(log, a.clock_ghz, 132, None)
        return 0
    import torch
    if a.smoke:
        device, sizes, Ls = "cpu", SMOKE_SIZES, SMOKE_LS
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: the kernel benchmark needs one "
              "(--smoke checks the script on CPU; --sass needs no GPU).")
        return 0
    else:
        device, sizes, Ls = "cuda", SIZES, LS
    sections = set(a.sections.split(","))
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[a.dtype]
    copy = copy_gbs(1 << 30 if not a.smoke else 1 << 20, device, a.smoke)
    log(f"device: {gpu}; torch {torch.__version__}; triton {__import__('triton').__version__}; "
        f"device-to-device copy (1 GiB): {copy:.0f} GB/s (read + write)")
    if a.smoke:
        log("smoke run: interpreter timings and CPU 'GB/s' mean nothing; this checks the script only")
    rows = []
    if "kernels" in sections:
        log("\n## kernels (median ms; GB/s of the minimum bytes; %copy: of the 1 GiB copy; %same: of a copy of "
            "the kernel's own bytes)")
        rows += run_kernels(sizes, Ls, dtypes, device, a.smoke, copy, log)
        for r in rows:
            if r["section"] == "tuned":
                log(f"tuned: {r['kernel']:8} L={r['L']:2} {r['dtype']:8} {r['shape']:24} hist={r['variant']:7} "
                    f"{r['config']}")
    if "memory" in sections:
        log("\n## peak memory above the inputs (torch.cuda.max_memory_allocated)")
        mshape = next(iter(sizes.values())) if a.smoke else SIZES[TARGET_SIZE]
        rows += run_memory(mshape, Ls, dtypes, device, log)
    if "step" in sections:
        log("\n## codec training step (LatentCodec C=32, bf16 autocast, Adam): kernels vs reference")
        if a.smoke:
            rows += run_step((2,), 16, device, True, log)
        else:
            rows += run_step(STEP_BATCHES, STEP_CROP, device, False, log, profile=not a.no_profile)
    if "sass" in sections and not a.smoke:
        log(f"\n## sm_90 SASS (ptxas), default and tuned configurations at {TARGET_SIZE}; issue ceiling at "
            f"{a.clock_ghz} GHz x {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
        try:
            rows += run_sass(log, a.clock_ghz, torch.cuda.get_device_properties(0).multi_processor_count, copy,
                             str(torch.device("cuda", torch.cuda.current_device())))
        except Exception as e:
            log(f"sass section skipped: {type(e).__name__}: {e}")
    if a.smoke:
        log("\nsmoke run: no targets checked, nothing written")
        return 0
    log("\n## targets (issue #12)")
    for t in check_targets(rows):
        log(t)
    paths = write_results(rows, lines, gpu, a.sections)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
