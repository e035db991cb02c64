"""Loader benchmark: samples/s delivered to a training loop, all four sources measured in one run.

    python benchmarks/loader.py [--images 600] [--codec ls-c32] [--bitstream v2] [--compare v1]

(a) the Zarr latent store       LatentMapDataset: uint8 symbols, random 28x28 crop + flip (batched decode)
(a1) the same store in another bitstream (--compare; default v1, constriction ANS; v2 when --bitstream is v1)
(b) the WebDataset latent store LatentBatchStream: the same, read from the tar shards
(c) the same images as JPEG files, Pillow decode + RandomResizedCrop(224) + flip (what users do today)
(d) DALI CPU decoding of the same JPEGs: readers.file -> decoders.image -> random_resized_crop + flip
Each is measured with one core (num_workers=0 / one DALI thread) and with every core, after a
warm-up pass, over as many whole passes as fill 2 seconds. Also bytes read per sample. The images: random crops (about ImageNet's average
size, 400x350) of the offline photos, saved as JPEG q90, converted at 256x256.
Results: benchmarks/results/loader-CODEC.csv and loader-CODEC.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.loader_common import make_jpegs, measure, stream_loader, torch_loader  # noqa: E402  (re-exported)
from latentstore.store.coders import BITSTREAMS  # noqa: E402


def dali_loader(root: str, threads: int, batch: int = 64):
    from nvidia.dali import fn, pipeline_def, types
    from latentstore.convert.sources import list_inputs
    listing = list_inputs(root)
    files = [it.ref for it in listing.items]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=0)
    def pipe():
        jpegs, labels = fn.readers.file(files=files, labels=[it.label for it in listing.items], name="r",
                                        random_shuffle=True, pad_last_batch=False)
        img = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
        img = fn.resize(img, size=(224, 224))
        img = fn.flip(img, horizontal=fn.random.coin_flip())
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]), labels

    p = pipe()
    p.build()
    n = len(files)

    def it():
        got = 0
        while got < n:
            out = p.run()
            k = min(len(out[1]), n - got)
            got += k
            yield range(k)
        p.reset()

    return it


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--codec", default="ls-c32")
    ap.add_argument("--work", default="runs/loader-bench")
    ap.add_argument("--bitstream", choices=sorted(BITSTREAMS), default="v2", help="the bitstream of stores (a) and (b)")
    ap.add_argument("--compare", choices=sorted(BITSTREAMS), default=None,
                    help="the bitstream of store (a1) (default: v1, or v2 when --bitstream is v1)")
    ap.add_argument("--store", default=None, help="an s3:// prefix: measure stores (a) and (b) read from there "
                    "against the same stores on local disk (benchmarks/loader_s3.py), instead of the rows above")
    ap.add_argument("--moto", action="store_true", help="with --store: start a loopback S3 server (moto) for it")
    ap.add_argument("--rounds", type=int, default=3, help="with --store: interleaved rounds (medians are reported)")
    a = ap.parse_args(argv)
    from latentstore.convert.pipeline import ConvertOptions, convert
    from latentstore.data.rgb import ImageFolderDataset
    from latentstore.data.datasets import LatentMapDataset
    from latentstore.store.info import dir_bytes
    jpegs = make_jpegs(os.path.join(a.work, "jpeg"), a.images)
    stores = {}
    other = a.compare or ("v2" if a.bitstream == "v1" else "v1")
    for key, fmt, bits in (("zarr", "zarr", a.bitstream), ("wds", "wds", a.bitstream), ("zarr_other", "zarr", other)):
        dst = os.path.join(a.work, f"{os.path.basename(a.codec).split('.')[0]}-{fmt}-{bits}")
        if not os.path.exists(os.path.join(dst, "_parts", "INIT.json")) or not os.path.exists(
                os.path.join(dst, "zarr.json" if fmt == "zarr" else "schema.json")):
            shutil.rmtree(dst, ignore_errors=True)
            convert(jpegs, dst, ConvertOptions(codec=a.codec, fmt=fmt, size=256, shard_size=256, progress=False,
                                               bitstream=bits))
        stores[key] = dst
    n = a.images
    cores = os.cpu_count() or 1
    if a.store:
        from benchmarks.loader_s3 import compare_remote
        return compare_remote(a, stores, n, cores, os.path.join(HERE, "results"))
    jpeg_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(jpegs) for f in fs if f.endswith(".jpg"))
    per_sample = {"zarr": dir_bytes(os.path.join(stores["zarr"], "latents")) / n,
                  "zarr_other": dir_bytes(os.path.join(stores["zarr_other"], "latents")) / n,
                  "wds": sum(os.path.getsize(os.path.join(stores["wds"], f)) for f in os.listdir(stores["wds"])
                             if f.endswith(".tar")) / n,
                  "jpeg": jpeg_bytes / n}
    rows = []
    for label, mk, bytes_key in [
        (f"(a) zarr latents {a.bitstream}", lambda w: torch_loader(LatentMapDataset(stores["zarr"], crop=28), w), "zarr"),
        (f"(a1) zarr latents {other}", lambda w: torch_loader(LatentMapDataset(stores["zarr_other"], crop=28), w),
         "zarr_other"),
        (f"(b) wds latents {a.bitstream}", lambda w: stream_loader(stores["wds"], w), "wds"),
        ("(c) JPEG + Pillow RRC(224)", lambda w: torch_loader(ImageFolderDataset(jpegs, 224, True), w), "jpeg"),
        ("(d) JPEG + DALI CPU", lambda w: dali_loader(jpegs, max(1, w)), "jpeg"),
    ]:
        one = measure(mk(0), n)
        allc = measure(mk(cores), n)
        rows.append({"source": label, "per_core_sps": one, "all_cores_sps": allc, "cores": cores,
                     "bytes_per_sample": per_sample[bytes_key]})
        print(f"{label:28} 1 core {one:9.1f}/s   {cores} cores {allc:9.1f}/s   {per_sample[bytes_key]:10,.0f} B/sample",
              flush=True)
    c = rows[3]["per_core_sps"]
    lines = [f"# Loader throughput, {n} images, codec {a.codec} at 256x256 (latents 32x32, crop 28)", "",
             f"Command: `python benchmarks/loader.py --images {n} --codec {a.codec} --bitstream {a.bitstream} "
             f"--compare {other}`; "
             f"{platform.machine()} CPU, "
             f"{cores} cores, {time.strftime('%Y-%m-%d')}; all rows measured in one run.", "",
             "| source | samples/s, 1 core | samples/s, all cores | x (c), 1 core | bytes read / sample |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['per_core_sps']:.1f} | {r['all_cores_sps']:.1f} | "
                     f"{r['per_core_sps'] / c:.1f} | {r['bytes_per_sample']:,.0f} |")
    res = os.path.join(HERE, "results")
    os.makedirs(res, exist_ok=True)
    tag = os.path.basename(a.codec).split(".")[0] + ("" if a.bitstream == "v2" else f"-{a.bitstream}")
    open(os.path.join(res, f"loader-{tag}.md"), "w").write("\n".join(lines) + "\n")
    with open(os.path.join(res, f"loader-{tag}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    print(json.dumps({"per_core_ratio_vs_pillow": rows[0]["per_core_sps"] / c, "codec": a.codec,
                      "bitstream": a.bitstream, "per_core_sps": rows[0]["per_core_sps"], "pillow_per_core_sps": c,
                      "bytes_per_sample": per_sample["zarr"], "cores": cores}))


if __name__ == "__main__":
    main()
