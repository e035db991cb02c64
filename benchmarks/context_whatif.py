"""What does a richer context than v2's save? Ideal bits of candidate models, and the real v3 coder's bytes.

    nice -n 10 python -m benchmarks.context_whatif [--codecs ls-c8,ls-c16,ls-c32 | PATH.safetensors,...]

For each shipped codec: the symbols of the training photos (tables are fitted there, as an export fits v2's) and
of the validation photos (measured there), both at 512 px. Each context model is a static table per (channel,
context), counts plus one pseudo-count spread like the channel's histogram (what rans_v2.tables_from_counts does
before its 12-bit rounding), and the figure is the ideal code length -sum log2 p of the validation symbols:
v1 (no context), v2 (the symbol above), and the candidates the lockstep lanes could use (above + left, + the
previous channel, + above-right). The v2 line is checked against the real v2 coder's bytes on the same symbols, and
the above + left + above-right line against the real v3 coder's (`latentstore.rans3`: the same context within
each lane's rows, its tables fitted on the training photos the same way).
Writes benchmarks/results/codec_training/context_whatif.{md,csv}.
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np
import torch

from latentstore.codec.api import image_symbols
from latentstore.codec.entropy import rans_v2, rans_v3
from latentstore.codec.zoo import load_codec, load_codec_file
from latentstore.data.photos import available_photos, resize_shorter

OUT = os.path.join(os.path.dirname(__file__), "results", "codec_training")


def neighbours(s: np.ndarray, L: int) -> dict[str, np.ndarray]:
    """(C, h, w) symbols -> each neighbour's symbol, L where it falls outside (the image or channel 0's 'previous')."""
    C, h, w = s.shape
    out = {k: np.full(s.shape, L, np.int64) for k in ("above", "left", "above_right", "prev_channel")}
    out["above"][:, 1:, :] = s[:, :-1, :]
    out["left"][:, :, 1:] = s[:, :, :-1]
    out["above_right"][:, 1:, :-1] = s[:, :-1, 1:]
    out["prev_channel"][1:] = s[:-1]
    return out


MODELS = {"v1 (none)": (), "v2 (above)": ("above",), "above + left": ("above", "left"),
          "above + left + previous channel": ("above", "left", "prev_channel"),
          "above + left + above-right": ("above", "left", "above_right")}


def context_index(s: np.ndarray, keys, L: int) -> np.ndarray:
    nb = neighbours(s, L)
    idx = np.zeros(s.shape, np.int64)
    for k in keys:
        idx = idx * (L + 1) + nb[k]
    return idx


def ideal_bits(train: list[np.ndarray], val: list[np.ndarray], keys, L: int) -> float:
    C = train[0].shape[0]
    n_ctx = (L + 1) ** len(keys)
    counts = np.zeros((C, n_ctx, L))
    ch = np.arange(C)[:, None, None]
    for s in train:
        np.add.at(counts, (np.broadcast_to(ch, s.shape), context_index(s, keys, L), s.astype(np.int64)), 1)
    marg = counts.sum(1, keepdims=True) + 1e-9
    p = counts + marg / marg.sum(-1, keepdims=True)
    p /= p.sum(-1, keepdims=True)
    return float(sum(-np.log2(p[np.broadcast_to(ch, s.shape), context_index(s, keys, L), s.astype(np.int64)]).sum()
                     for s in val))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default="ls-c8,ls-c16,ls-c32")
    ap.add_argument("--out", default="context_whatif", help="results file name (.md and .csv) under " + OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    train_rgb = [resize_shorter(p.load(), 512) for p in available_photos("train")]
    val_rgb = [resize_shorter(p.load(), 512) for p in available_photos("val")]
    rows = []
    for name in a.codecs.split(","):
        codec = load_codec_file(name) if name.endswith(".safetensors") else load_codec(name)
        L = codec.cfg.L
        tr = [image_symbols(codec, x) for x in train_rgb]
        va = [image_symbols(codec, x) for x in val_rgb]
        pixels = sum(x.shape[0] * x.shape[1] for x in val_rgb)
        tables = rans_v2.tables_from_counts(sum(rans_v2.context_counts(s, L) for s in tr))
        real = sum(len(rans_v2.encode(s, tables)) for s in va)  # the real coder, v2 tables fitted on train
        tables3 = rans_v3.tables_from_counts(sum(rans_v3.context_counts(s, L) for s in tr))
        real3 = sum(len(rans_v3.encode(s, tables3)) for s in va)
        bits = {m: ideal_bits(tr, va, keys, L) for m, keys in MODELS.items()}
        for m, b in bits.items():
            rows.append({"codec": name, "context": m, "bpp": round(b / pixels, 5),
                         "vs_v1": round(b / bits["v1 (none)"] - 1, 4), "vs_v2": round(b / bits["v2 (above)"] - 1, 4),
                         "real_v2_bpp": round(8 * real / pixels, 5), "real_v3_bpp": round(8 * real3 / pixels, 5),
                         "real_v3_vs_v2": round(real3 / real - 1, 4)})
        for r in rows[-len(bits):]:
            r["codec"] = os.path.basename(name).replace(".safetensors", "")
        print(rows[-len(bits):], flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, a.out + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# What a richer context would save (ideal bits, validation photos at 512 px, tables fitted on the "
             "training photos)", "", f"Command: `nice -n 10 python -m benchmarks.context_whatif --codecs {a.codecs} --out {a.out}`. The real v2 coder's "
             "bytes on the same symbols are beside the v2 ideal, and the real v3 coder's (above + left + above-right, "
             "lanes of whole rows) beside that candidate (payloads only, no header).", "",
             "| codec | context | ideal bpp | vs v1 | vs v2 | real v2 bpp | real v3 bpp | real v3 vs real v2 |",
             "|---|---|---|---|---|---|---|---|"]
    v3 = "above + left + above-right"
    lines += [f"| {r['codec']} | {r['context']} | {r['bpp']:.4f} | {100 * r['vs_v1']:+.1f}% | {100 * r['vs_v2']:+.1f}% "
              f"| {r['real_v2_bpp']:.4f} | " + (f"{r['real_v3_bpp']:.4f} | {100 * r['real_v3_vs_v2']:+.1f}% |"
                                                if r["context"] == v3 else " | |") for r in rows]
    with open(os.path.join(OUT, a.out + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
