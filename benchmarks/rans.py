"""rANS v2 vs constriction ANS v1 on real latents: bytes, overheads, lane count K, CPU decode speed.

    .venv/bin/python benchmarks/rans.py [--crops 384] [--codecs ls-c8,ls-c16,ls-c32] [--quick] [--decoders]
    .venv/bin/python benchmarks/rans.py --v3 [--codecs ...] [--rounds 15]

--decoders: only decode ns/symbol of every CPU decoder, side by side in one run: the numba kernel
(before) and each path of the SIMD extension this CPU runs (avx512, avx2, scalar; rans_simd.py).
--loader DIR: benchmarks/loader.py's sources (a) (the Zarr v2 store, numba and SIMD decode) and (c)
(JPEG + Pillow) on the stores loader.py built under DIR (its --work), one core, in CPU time (process_time),
interleaved rounds: a per-core ratio that the other processes on a shared machine disturb less than
loader.py's wall-clock one (loader.py stays the reference; this is its cross-check).
--v3: v2 vs v3 (`latentstore.rans3`, rans_v3.py) side by side in one run, on the shipped codecs' symbols of the
validation photos at 256 and 512 px, with the codec files' tables (what `latentstore compress` uses; both fitted on
the training photos) and, as a check, both coders' tables refitted here on the training photos' symbols: payload
bytes and v3/v2; then encode ns/symbol (numba) and decode ns/symbol of every path (avx512, avx2, scalar, numba),
one thread, interleaved v2/v3 rounds, on a batch of fixed-size samples (every 256-px crop of those photos).
Writes benchmarks/results/rans3.{md,csv}. Everything below describes the other modes.

Real symbols: random 256x256 crops (seeded) of every photo latentstore.data.photos finds
(scikit-image, scikit-learn, matplotlib, and Debian's wallpapers / opencv-doc when installed),
after scaling the shorter side to 512 when larger; encoded by each shipped codec and cached
under /tmp. Tables are fitted on the crops of even-numbered photos and measured on the others
(the split is by photo, so no test photo is seen by the fit). v1 = the shipped codec's per-channel
counts through constriction (payload words x 4 bytes); neither side counts the outer bitstream
header (the same ~40 bytes for both).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from latentstore.codec.entropy import rans_v2 as r  # noqa: E402

CACHE = "/tmp/latentstore_rans_bench"


def _photos():
    try:
        from latentstore.data.photos import all_photos, resize_shorter
    except ImportError:  # before the package restructure
        from latentstore.photos import all_photos, resize_shorter
    return all_photos(), resize_shorter


def _codec(name):
    from latentstore.codec.zoo import load_codec
    return load_codec(name)


def _symbols_of(codec, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, h, w) symbols, whichever codec API this checkout has."""
    from latentstore.codec.api import image_symbols
    return image_symbols(codec, rgb)


def _v1_freqs(codec) -> np.ndarray:
    return np.asarray(codec.freqs)


def _v1_encode(symbols: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    try:
        from latentstore.codec.entropy.ans_v1 import encode_words
    except ImportError:
        from latentstore.codec.bitstream import encode_symbols as encode_words
    return encode_words(symbols, freqs)


def _v1_decode(words, freqs, shape):
    try:
        from latentstore.codec.entropy.ans_v1 import decode_words
    except ImportError:
        from latentstore.codec.bitstream import decode_symbols as decode_words
    return decode_words(words, freqs, shape)


def crops(n_crops: int, size: int = 256, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Seeded random crops of every photo; returns the crops and each crop's photo index."""
    photos, resize_shorter = _photos()
    rng = np.random.default_rng(seed)
    per = max(1, n_crops // len(photos))
    out, owner = [], []
    for i, p in enumerate(photos):
        rgb = resize_shorter(p.load(), 512)
        H, W = rgb.shape[:2]
        if min(H, W) < size:
            continue
        for _ in range(per):
            y, x = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
            out.append(np.ascontiguousarray(rgb[y:y + size, x:x + size]))
            owner.append(i)
    return out, np.array(owner)


def real_symbols(name: str, n_crops: int) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(CACHE, f"{name}-{n_crops}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return z["symbols"], z["owner"]
    os.makedirs(CACHE, exist_ok=True)
    codec = _codec(name)
    imgs, owner = crops(n_crops)
    with torch.no_grad():
        sym = np.stack([_symbols_of(codec, im) for im in imgs])
    np.savez(path, symbols=sym, owner=owner)
    return sym, owner


def split(sym: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fit = owner % 2 == 0
    return sym[fit], sym[~fit]


def timed(fn, repeat: int = 5, clock=time.process_time) -> float:
    """Best time of `repeat` calls after a warm-up. Single-threaded runs use CPU time (process_time):
    on a shared machine it excludes the time other processes hold the core; threaded runs pass
    clock=time.perf_counter (wall time, so they are pessimistic when the machine is busy)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def index_and_slack(p: bytes) -> tuple[int, float]:
    """Bytes of a payload's lane index, and bits of its final states left unused (32 - log2 state)."""
    K, pos, counts = p[0], 1, []
    for _ in range(K):
        v, shift = 0, 0
        while True:
            v, pos, shift = v | (p[pos] & 0x7F) << shift, pos + 1, shift + 7
            if p[pos - 1] < 0x80:
                break
        counts.append(v if not counts else counts[-1] + ((v >> 1) ^ -(v & 1)))
    slack, at = 0.0, pos
    for m in counts:
        slack += 32 - np.log2(max(int.from_bytes(p[at:at + 4], "little"), 1))
        at += 4 + 2 * m
    return pos, slack


def report_bytes(name: str, train: np.ndarray, test: np.ndarray, freqs: np.ndarray, L: int) -> np.ndarray:
    tables = r.fit_tables(train, L)
    payloads = r.encode_batch(test, tables)
    v2 = np.array([len(p) for p in payloads])
    v1 = np.array([4 * len(_v1_encode(s, freqs)) for s in test])
    ideal = np.array([r.ideal_bits(s, tables) / 8 for s in test])
    index, slack = np.array([index_and_slack(p) for p in payloads]).T.mean(1)
    K = r.default_lanes(*test.shape[1:])
    print(f"{name}: {len(train)} fit / {len(test)} test crops, shape {test.shape[1:]}, K={K}\n"
          f"  bytes/image: v1 {v1.mean():.0f}  v2 {v2.mean():.0f}  ideal(v2 tables) {ideal.mean():.0f}\n"
          f"  v2/v1 = {v2.sum() / v1.sum():.3f}   v2/ideal = {v2.sum() / ideal.sum():.4f} "
          f"(worst image {np.max(v2 / ideal):.4f});  per image: index {index:.1f} B, unused final-state "
          f"bits {slack / 8:.1f} B, coding loss {v2.mean() - ideal.mean() - index - slack / 8:.1f} B")
    return tables


def context_bits(train: np.ndarray, test: np.ndarray, L: int, kind: str) -> float:
    """Held-out ideal bytes/image of richer contexts (the format codes 'above'; the others are what-ifs).
    'above+above2' needs nothing new from the lanes (the lane's own symbol two rows up); 'left' would
    need a wavefront across lanes."""
    def ctx(s):
        s = s.astype(np.int64)
        def shifted(dy=0, dx=0, dc=0):
            out = np.full(s.shape, L, np.int64)
            dst, src = [slice(None)] * 4, [slice(None)] * 4
            for ax, d in ((1, dc), (2, dy), (3, dx)):
                if d:
                    dst[ax], src[ax] = slice(d, None), slice(None, -d)
            out[tuple(dst)] = s[tuple(src)]
            return out
        M = L + 1
        a = shifted(dy=1)
        return {"above": a, "above+above2": a * M + shifted(dy=2), "above+prev channel": a * M + shifted(dc=1),
                "above+left": a * M + shifted(dx=1),
                "above+left+above-left": (a * M + shifted(dx=1)) * M + shifted(dy=1, dx=1)}[kind]
    C = train.shape[1]
    ct, ce = ctx(train), ctx(test)
    ch = lambda s: np.broadcast_to(np.arange(C)[None, :, None, None], s.shape)  # noqa: E731
    counts = np.zeros((C, int(max(ct.max(), ce.max())) + 1, L))
    np.add.at(counts, (ch(train), ct, train), 1)
    marg = counts.sum(1, keepdims=True) + 1e-9
    p = counts + marg / marg.sum(-1, keepdims=True)  # the same prior as fit_tables
    p /= p.sum(-1, keepdims=True)
    return float(-np.log2(p[ch(test), ce, test]).sum() / 8 / len(test))


def report_contexts(name: str, train: np.ndarray, test: np.ndarray, freqs: np.ndarray) -> None:
    f = freqs / freqs.sum(1, keepdims=True)
    v1 = -np.log2(f[np.arange(test.shape[1])[None, :, None, None], test]).sum() / 8 / len(test)
    kinds = ("above", "above+above2", "above+prev channel", "above+left", "above+left+above-left")
    print(f"  contexts ({name}), held-out ideal bytes vs v1's ideal: " +
          "  ".join(f"{k} {context_bits(train, test, f.shape[1], k) / v1:.3f}" for k in kinds))


def report_lanes(name: str, test: np.ndarray, tables: np.ndarray, Ks=(1, 2, 4, 8, 16, 32)) -> None:
    ideal = sum(r.ideal_bits(s, tables) for s in test) / 8
    print(f"  K sweep ({name}): K, bytes/ideal, decode us/sample (1 thread)")
    for K in Ks:
        if K > test.shape[1] * test.shape[3]:
            continue
        payloads = r.encode_batch(test, tables, K)
        t = timed(lambda: r.decode_batch(payloads, tables, test.shape[1:]))
        print(f"    K={K:<3d} {sum(map(len, payloads)) / ideal:.4f}   {1e6 * t / len(test):7.1f} us")


def report_speed(name: str, test: np.ndarray, tables: np.ndarray, freqs: np.ndarray) -> None:
    shape = test.shape[1:]
    payloads = r.encode_batch(test, tables)
    words = [_v1_encode(s, freqs) for s in test]
    n = len(test)
    t1 = timed(lambda: r.decode_batch(payloads, tables, shape))
    t2 = timed(lambda: r.decode_batch(payloads, tables, shape, threads=os.cpu_count()), clock=time.perf_counter)
    tv1 = timed(lambda: [_v1_decode(w, freqs, shape) for w in words], repeat=2)
    te = timed(lambda: r.encode_batch(test, tables), repeat=2)
    te1 = timed(lambda: [_v1_encode(s, freqs) for s in test], repeat=2)
    print(f"  decode {name}: v2 {1e6 * t1 / n:.1f} us/sample ({n / t1:.0f}/s) 1 thread, "
          f"{n / t2:.0f}/s {os.cpu_count()} threads;  v1 constriction {1e6 * tv1 / n:.1f} us/sample "
          f"({n / tv1:.0f}/s) -> v2 is {tv1 / t1:.1f}x faster;  encode: v2 {1e6 * te / n:.1f}, v1 {1e6 * te1 / n:.1f} us/sample")


def report_decoders(name: str, test: np.ndarray, tables: np.ndarray, rounds: int = 9) -> None:
    """Decode ns/symbol, one thread, numba vs the SIMD paths: interleaved rounds (each round runs every
    decoder once on the same payloads), best of `rounds` CPU times (process_time); every output checked."""
    from latentstore.codec.entropy import rans_simd
    shape = test.shape[1:]
    payloads = r.encode_batch(test, tables)
    paths = ["numba"] + rans_simd.supported_isas()
    best = dict.fromkeys(paths, float("inf"))
    saved = os.environ.get(rans_simd.ENV)
    try:
        for _ in range(rounds + 1):  # the first round warms up (numba's compile cache, the table cache)
            for p in paths:
                os.environ[rans_simd.ENV] = p
                t = time.process_time()
                out = r.decode_batch(payloads, tables, shape)
                best[p] = min(best[p], time.process_time() - t) if _ else float("inf")
                assert np.array_equal(out, test), f"{p} decoded other symbols"
    finally:
        os.environ.pop(rans_simd.ENV, None) if saved is None else os.environ.__setitem__(rans_simd.ENV, saved)
    ns = {p: 1e9 * best[p] / test.size for p in paths}
    top = min(paths, key=ns.get)
    bits = 8 * sum(map(len, payloads)) / test.size
    print(f"  decoders {name} (1 thread, {len(test)} images {shape}, {bits:.2f} bits/symbol): ns/symbol " +
          "  ".join(f"{p} {ns[p]:.2f}" for p in paths) + f"  ->  {top} is {ns['numba'] / ns[top]:.1f}x numba",
          flush=True)


def report_loader(work: str, codec: str, rounds: int = 3) -> None:
    """Samples/s per core in CPU time: loader.py's (a) with numba and with SIMD decode, and (c) Pillow."""
    from latentstore.codec.entropy import rans_simd
    from latentstore.data.datasets import LatentMapDataset
    from latentstore.data.rgb import ImageFolderDataset
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loader import torch_loader  # benchmarks/loader.py: the same DataLoader setup, not a copy
    store = os.path.join(work, f"{codec}-zarr-v2")
    if not os.path.isdir(store):
        raise SystemExit(f"error: {store} does not exist: run benchmarks/loader.py --codec {codec} --work {work} first")
    latents = torch_loader(LatentMapDataset(store, crop=28), 0)
    pillow = torch_loader(ImageFolderDataset(os.path.join(work, "jpeg"), 224, True), 0)
    paths = {"numba": latents, rans_simd.chosen_isa(): latents, "pillow": pillow}
    best = dict.fromkeys(paths, 0.0)
    saved = os.environ.get(rans_simd.ENV)
    try:
        for rnd in range(rounds + 1):  # round 0 warms up
            for p, it in paths.items():
                os.environ[rans_simd.ENV] = "numba" if p in ("numba", "pillow") else p
                t, n = time.process_time(), 0
                while n == 0 or time.process_time() - t < (0.5 if p != "pillow" else 0.0):
                    n += sum(len(b) for b in it())
                if rnd:
                    best[p] = max(best[p], n / (time.process_time() - t))
    finally:
        os.environ.pop(rans_simd.ENV, None) if saved is None else os.environ.__setitem__(rans_simd.ENV, saved)
    print(f"loader {codec}, 1 core, CPU time, best of {rounds} rounds: samples/s " +
          "  ".join(f"{p} {v:.0f}" for p, v in best.items()) + "  ->  x Pillow per core: " +
          "  ".join(f"{p} {v / best['pillow']:.1f}x" for p, v in best.items() if p != "pillow"), flush=True)


def report_zstd(name: str, tables: np.ndarray) -> None:
    """zstd -19 on the payload of one large smooth photo, coded whole: an entropy coder's leftovers."""
    try:
        import zstandard
    except ImportError:
        print("  (zstandard not installed: skipped the zstd check)")
        return
    photos, _ = _photos()
    pick = [p for p in photos if p.name.startswith("plasma:")] or [p for p in photos if p.name == "skimage:astronaut"]
    p = pick[0]
    sym = _symbols_of(_codec(name), p.load())
    payload = r.encode(sym, tables)
    z = zstandard.ZstdCompressor(level=19).compress(payload)
    ratio = 8 * len(payload) / r.ideal_bits(sym, tables)
    print(f"  zstd -19 on the v2 payload of {p.name} {sym.shape}: {len(payload)} -> {len(z)} bytes "
          f"({100 * (1 - len(z) / len(payload)):+.2f}% saved), payload/ideal {ratio:.4f}")


# ------------------------------------------------------------------------------------------ --v3
V3_SIDES = (256, 512)
V3_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rans3")


def _v3_symbols(codec, split: str, side: int) -> list[tuple[str, np.ndarray, int]]:
    """(photo name, (C, h, w) symbols, pixels) of every photo of `split` with the shorter side scaled to `side` (never
    up), as `latentstore compress` codes them (image_symbols); cached under CACHE by the codec's weights hash."""
    from latentstore.codec.api import image_symbols
    from latentstore.data.photos import available_photos, resize_shorter
    photos = available_photos(split)
    path = os.path.join(CACHE, f"v3-{codec.name}-{codec.hash}-{split}-{side}.npz")
    if os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        names = [str(n) for n in z["names"]]
        if names == [p.name for p in photos]:
            return [(n, z[f"s{i}"], int(z["pixels"][i])) for i, n in enumerate(names)]
    os.makedirs(CACHE, exist_ok=True)
    out = []
    with torch.no_grad():
        for p in photos:
            rgb = resize_shorter(p.load(), side)
            out.append((p.name, image_symbols(codec, rgb), rgb.shape[0] * rgb.shape[1]))
    np.savez(path, names=np.array([n for n, _, _ in out]), pixels=np.array([n for _, _, n in out]),
             **{f"s{i}": s for i, (_, s, _) in enumerate(out)})
    return out


def _v3_refit(train: list[np.ndarray], L: int) -> tuple[np.ndarray, np.ndarray]:
    """v2's and v3's tables fitted here on the training photos' symbols: the rule refit_tables applies to a codec
    file (counts summed over whole photos, then each coder's tables_from_counts)."""
    from latentstore.codec.entropy import rans_v3 as r3
    c2 = sum(r.context_counts(s[None], L) for s in train)
    c3 = sum(r3.context_counts(s[None], L) for s in train)
    return r.tables_from_counts(c2), r3.tables_from_counts(c3)


def _v3_windows(photos: list[np.ndarray], n: int = 32) -> np.ndarray:
    """Every non-overlapping n x n latent window (a 256-px crop at n = 32) of each photo: the (N, C, n, n)
    batch of fixed-size samples a store's loader decodes."""
    return np.stack([s[:, y:y + n, x:x + n] for s in photos
                     for y in range(0, s.shape[1] - n + 1, n) for x in range(0, s.shape[2] - n + 1, n)])


def _swap_env(var: str, value: str | None) -> None:
    os.environ.pop(var, None) if value is None else os.environ.__setitem__(var, value)


def _v3_timings(batch: np.ndarray, t2: np.ndarray, t3: np.ndarray, rounds: int, enc_rounds: int) -> dict:
    """ns/symbol, one thread, CPU time (process_time), best of `rounds`: encode (numba, both coders) and decode on
    every path, v2 and v3 interleaved (each round runs every path of both coders on the same payloads, v2 first
    in even rounds and v3 first in odd ones, so machine noise hits both); every decoded batch checked."""
    from latentstore.codec.entropy import rans_simd
    from latentstore.codec.entropy import rans_v3 as r3
    coders = {"v2": (r, t2), "v3": (r3, t3)}
    shape = batch.shape[1:]
    payloads = {v: m.encode_batch(batch, t) for v, (m, t) in coders.items()}
    paths = rans_simd.supported_isas() + ["numba"]
    best = {(v, p): float("inf") for v in coders for p in ["encode"] + paths}
    saved = os.environ.get(rans_simd.ENV)
    try:
        for rnd in range(rounds + 1):  # round 0 warms up (numba's compile cache, the table caches)
            for p in (["encode"] if rnd <= enc_rounds else []) + paths:
                for v in (("v2", "v3") if rnd % 2 == 0 else ("v3", "v2")):
                    m, t = coders[v]
                    if p == "encode":
                        c = time.process_time()
                        out = m.encode_batch(batch, t)
                        dt = time.process_time() - c
                        ok = out == payloads[v]
                    else:
                        os.environ[rans_simd.ENV] = p  # the same switch picks v2's and v3's path
                        c = time.process_time()
                        out = m.decode_batch(payloads[v], t, shape)
                        dt = time.process_time() - c
                        ok = np.array_equal(out, batch)
                    if not ok:
                        raise SystemExit(f"error: {v} {p} did not reproduce its payloads / symbols")
                    if rnd:
                        best[v, p] = min(best[v, p], dt)
    finally:
        _swap_env(rans_simd.ENV, saved)
    bits = {v: 8 * sum(map(len, payloads[v])) / batch.size for v in coders}
    return {"ns": {k: 1e9 * t / batch.size for k, t in best.items()}, "paths": ["encode"] + paths, "bits": bits}


def _machine() -> str:
    import platform
    from latentstore.codec.entropy import rans3_simd
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}; SIMD paths this CPU runs: "
            f"{', '.join(rans3_simd.supported_isas()) or 'none'}")


def report_v3(codecs: list[str], rounds: int = 15, enc_rounds: int = 5, out: str = V3_OUT) -> None:
    """v2 (`latentstore.rans`) vs v3 (`latentstore.rans3`) on the shipped codecs' symbols of the validation photos:
    payload bytes per photo at 256 and 512 px, then encode and per-path decode ns/symbol on a batch of fixed-size
    samples (every 256-px crop of those photos), side by side in one run. Writes `out`.md and `out`.csv."""
    import datetime
    import shlex
    from latentstore.codec.entropy import rans_v3 as r3
    torch.set_num_threads(os.cpu_count())
    started, load0, t_start = datetime.datetime.now(), os.getloadavg(), time.perf_counter()
    bytes_rows, speed_rows = [], []
    for name in codecs:
        codec = _codec(name)
        L = codec.cfg.L
        if L > r3.MAX_L:
            print(f"{name}: L = {L} > {r3.MAX_L}: v3 does not code it, skipped", flush=True)
            continue
        file_tables = (codec.entropy.tables("latentstore.rans"), codec.entropy.tables("latentstore.rans3"))
        refit = _v3_refit([s for _, s, _ in _v3_symbols(codec, "train", 512)], L)
        val, pix = {}, {}
        for side in V3_SIDES:
            got = _v3_symbols(codec, "val", side)
            val[side], pix[side] = [s for _, s, _ in got], sum(n for _, _, n in got)
        for side in V3_SIDES:
            for tname, (t2, t3) in (("codec file", file_tables), ("refit here", refit)):
                p2 = [len(r.encode_batch(s[None], t2)[0]) for s in val[side]]
                p3 = [len(r3.encode_batch(s[None], t3)[0]) for s in val[side]]
                i2 = sum(r.ideal_bits(s, t2) for s in val[side]) / 8
                i3 = sum(r3.ideal_bits(s, t3) for s in val[side]) / 8
                n_sym = sum(s.size for s in val[side])
                pixels = pix[side]
                row = dict(codec=name, side=side, tables=tname, photos=len(val[side]), symbols=n_sym,
                           v2_bytes=sum(p2), v3_bytes=sum(p3), v3_over_v2=sum(p3) / sum(p2),
                           v2_bpp=8 * sum(p2) / pixels, v3_bpp=8 * sum(p3) / pixels,
                           v3_over_v2_worst_photo=max(b / a for a, b in zip(p2, p3)),
                           v3_over_v2_best_photo=min(b / a for a, b in zip(p2, p3)),
                           v2_over_ideal=sum(p2) / i2, v3_over_ideal=sum(p3) / i3)
                bytes_rows.append(row)
                print(f"{name} {side:>3d} px, {tname:10s}: {row['photos']} photos, {n_sym:,} symbols: v2 "
                      f"{row['v2_bytes']:,} B ({row['v2_bpp']:.4f} bpp)  v3 {row['v3_bytes']:,} B "
                      f"({row['v3_bpp']:.4f} bpp)  v3/v2 {row['v3_over_v2']:.3f} (photos "
                      f"{row['v3_over_v2_best_photo']:.3f}-{row['v3_over_v2_worst_photo']:.3f});  payload/ideal "
                      f"v2 {row['v2_over_ideal']:.4f} v3 {row['v3_over_ideal']:.4f}", flush=True)
        batch = _v3_windows(val[256] + val[512])
        tm = _v3_timings(batch, *file_tables, rounds=rounds, enc_rounds=enc_rounds)
        print(f"{name}: speed on {len(batch)} samples {batch.shape[1:]} (every 256-px crop of the validation photos "
              f"at 256 and 512 px), codec-file tables, {tm['bits']['v2']:.3f} / {tm['bits']['v3']:.3f} bits/symbol "
              f"v2 / v3; 1 thread, CPU time, best of {rounds} interleaved rounds ({enc_rounds} for encode):", flush=True)
        for p in tm["paths"]:
            a, b = tm["ns"]["v2", p], tm["ns"]["v3", p]
            speed_rows.append(dict(codec=name, samples=len(batch), sample_shape="x".join(map(str, batch.shape[1:])),
                                   v2_bits_per_symbol=tm["bits"]["v2"], v3_bits_per_symbol=tm["bits"]["v3"],
                                   op="encode (numba)" if p == "encode" else f"decode {p}",
                                   v2_ns_per_symbol=a, v3_ns_per_symbol=b, v3_over_v2=b / a))
            print(f"  {speed_rows[-1]['op']:15s} v2 {a:6.2f}  v3 {b:6.2f} ns/symbol   v3/v2 {b / a:.2f}x", flush=True)
    wall = time.perf_counter() - t_start
    _write_v3(out, bytes_rows, speed_rows, started, load0, os.getloadavg(), wall, rounds, enc_rounds,
              "python benchmarks/rans.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]))


def _span(v: list[float]) -> str:
    return f"{min(v):.2f}" if f"{min(v):.2f}" == f"{max(v):.2f}" else f"{min(v):.2f}-{max(v):.2f}"


def _write_v3(out, bytes_rows, speed_rows, started, load0, load1, wall, rounds, enc_rounds, command) -> None:
    import csv
    keys = list(dict.fromkeys([*bytes_rows[0], *speed_rows[0]]))
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["kind", *keys])
        w.writeheader()
        for kind, rows in (("bytes", bytes_rows), ("speed", speed_rows)):
            for row in rows:
                w.writerow({"kind": kind, **{k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()}})
    fb = [b for b in bytes_rows if b["tables"] == "codec file"]
    lines = [
        "# Bitstream v3 (`latentstore.rans3`) vs v2 (`latentstore.rans`) on real latents: bytes, encode, decode",
        "",
        f"Command: `{command}` (run at `nice -n 5`). Date: {started:%Y-%m-%d %H:%M}, {wall:.0f} s wall. "
        f"Machine: {_machine()}. Load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end (the codec "
        "training job ran at nice 19 throughout).",
        "",
        "Symbols: the shipped codecs' (`load_codec`, `image_symbols`, as `latentstore compress` makes them) of the "
        "12 validation photos (`available_photos(\"val\")`) with the shorter side scaled to 256 and to 512 px. "
        "Tables: the codec file's (`codec.entropy.tables(...)`: what `latentstore compress` codes with, both fitted "
        "on the 38 training photos at 512 px by `refit_tables`), and as a check both refitted here the same way "
        "(`rans_v2` / `rans_v3` `tables_from_counts(context_counts)` summed over the training photos at 512 px). "
        "Bytes are payloads only (the container header is the same size for v2 and v3); bpp = payload bits per "
        "pixel of the scaled photo; default lanes (K = C/2) for both.",
        "",
        "## Bytes (validation photos, payload totals)",
        "",
        "| codec | side | tables | photos | symbols | v2 bytes | v3 bytes | **v3 / v2** | per photo | v2 bpp | v3 bpp "
        "| payload / ideal v2, v3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in bytes_rows:
        lines.append(f"| {b['codec']} | {b['side']} | {b['tables']} | {b['photos']} | {b['symbols']:,} | "
                     f"{b['v2_bytes']:,} | {b['v3_bytes']:,} | **{b['v3_over_v2']:.3f}** | "
                     f"{b['v3_over_v2_best_photo']:.3f}-{b['v3_over_v2_worst_photo']:.3f} | {b['v2_bpp']:.4f} | "
                     f"{b['v3_bpp']:.4f} | {b['v2_over_ideal']:.4f}, {b['v3_over_ideal']:.4f} |")
    lines += [
        "",
        "## Speed (one thread, ns per symbol, CPU time)",
        "",
        "Batch: every non-overlapping 32 x 32 latent window (a 256-px crop) of the validation photos' symbols at "
        f"256 and 512 px, as one `decode_batch` call of fixed-size samples (what a store's loader does); the "
        f"codec file's tables. Best of {rounds} rounds after a warm-up round ({enc_rounds} for encode); each round "
        "runs every path of both coders on the same payloads, v2 first in even rounds and v3 first in odd ones, so "
        "noise from the other jobs lands on both; every round's output is checked against the symbols (decode) "
        "or the first payloads (encode). Decode paths by `LATENTSTORE_RANS_ISA` (the same switch for v2's "
        "`rans_simd` and v3's `rans3_simd`); encode is numba for both coders.",
        "",
        "| codec | samples | bits/symbol v2, v3 | op | v2 ns/symbol | v3 ns/symbol | **v3 / v2** |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in speed_rows:
        lines.append(f"| {s['codec']} | {s['samples']} x ({s['sample_shape'].replace('x', ', ')}) | "
                     f"{s['v2_bits_per_symbol']:.3f}, {s['v3_bits_per_symbol']:.3f} | {s['op']} | "
                     f"{s['v2_ns_per_symbol']:.2f} | {s['v3_ns_per_symbol']:.2f} | **{s['v3_over_v2']:.2f}x** |")
    dec = {p: [s["v3_over_v2"] for s in speed_rows if s["op"] == p] for p in dict.fromkeys(s["op"] for s in speed_rows)}
    best_path = min((s for s in speed_rows if s["op"].startswith("decode")), key=lambda s: s["v3_ns_per_symbol"])
    lines += [
        "",
        "## Summary (figures filled in by the run)",
        "",
        f"With the codec files' tables v3's payloads are {min(b['v3_over_v2'] for b in fb):.3f}-"
        f"{max(b['v3_over_v2'] for b in fb):.3f}x v2's on the same symbols ("
        + ", ".join(f"{b['codec']} {b['side']} px {1 - b['v3_over_v2']:.1%} smaller" for b in fb)
        + "); the tables refitted here give "
        + ", ".join(f"{b['v3_over_v2']:.3f}" for b in bytes_rows if b["tables"] == "refit here")
        + " in the same order. v3 / v2 time per symbol: "
        + "; ".join(f"{p} {_span(v)}x" for p, v in dec.items())
        + f" (over the codecs). The fastest v3 decoder here is {best_path['op'].split()[1]} at "
        f"{best_path['v3_ns_per_symbol']:.2f} ns/symbol ({best_path['codec']}).",
        "",
    ]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {out}.md and {out}.csv ({wall:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", type=int, default=384)
    ap.add_argument("--codecs", default="ls-c8,ls-c16,ls-c32")
    ap.add_argument("--quick", action="store_true", help="skip the K sweep, the context what-ifs and zstd")
    ap.add_argument("--decoders", action="store_true", help="only decode ns/symbol: numba vs the SIMD paths")
    ap.add_argument("--loader", metavar="DIR", help="only loader.py's (a) and (c) in CPU time, on its stores in DIR")
    ap.add_argument("--v3", action="store_true", help="only v2 vs v3 (latentstore.rans3): bytes on the validation "
                    "photos at 256 and 512 px, encode and per-path decode ns/symbol; writes results/rans3.{md,csv}")
    ap.add_argument("--rounds", type=int, default=15, help="--v3: decode rounds (best of)")
    a = ap.parse_args()
    if a.v3:
        report_v3(a.codecs.split(","), a.rounds)
        return
    if a.loader:
        for name in a.codecs.split(","):
            report_loader(a.loader, name)
        return
    torch.set_num_threads(os.cpu_count())
    for name in a.codecs.split(","):
        sym, owner = real_symbols(name, a.crops)
        train, test = split(sym, owner)
        freqs = _v1_freqs(_codec(name))
        L = freqs.shape[1]
        if a.decoders:
            report_decoders(name, test, r.fit_tables(train, L))
            continue
        tables = report_bytes(name, train, test, freqs, L)
        report_speed(name, test, tables, freqs)
        report_decoders(name, test, tables)
        if not a.quick:
            report_lanes(name, test, tables)
            report_contexts(name, train, test, freqs)
            report_zstd(name, tables)


if __name__ == "__main__":
    main()
