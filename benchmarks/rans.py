"""rANS v2 vs constriction ANS v1 on real latents: bytes, overheads, lane count K, CPU decode speed.

    .venv/bin/python benchmarks/rans.py [--crops 384] [--codecs ls-c8,ls-c16,ls-c32] [--quick] [--decoders]

--decoders: only decode ns/symbol of every CPU decoder, side by side in one run: the numba kernel
(before) and each path of the SIMD extension this CPU runs (avx512, avx2, scalar; rans_simd.py).
--loader DIR: benchmarks/loader.py's sources (a) (the Zarr v2 store, numba and SIMD decode) and (c)
(JPEG + Pillow) on the stores loader.py built under DIR (its --work), one core, in CPU time (process_time),
interleaved rounds: a per-core ratio that the other processes on a shared machine disturb less than
loader.py's wall-clock one (loader.py stays the reference; this is its cross-check).

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", type=int, default=384)
    ap.add_argument("--codecs", default="ls-c8,ls-c16,ls-c32")
    ap.add_argument("--quick", action="store_true", help="skip the K sweep, the context what-ifs and zstd")
    ap.add_argument("--decoders", action="store_true", help="only decode ns/symbol: numba vs the SIMD paths")
    ap.add_argument("--loader", metavar="DIR", help="only loader.py's (a) and (c) in CPU time, on its stores in DIR")
    a = ap.parse_args()
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
