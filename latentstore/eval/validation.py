"""The validation photos, and the figures `latentstore codecs` reports for each codec.

Measuring a codec (compress, decompress from the real bytes, PSNR, MS-SSIM on every validation photo)
takes seconds, so the figures are cached, keyed by the codec's weights hash, the photo side and the
metric version: a codec's figures change only when its weights do. Lookup order:
1. the user cache, `$LATENTSTORE_CACHE/measurements.json` (default `~/.cache/latentstore/`), which
   `latentstore codecs --measure` (re)writes with figures measured on this machine's photos;
2. the figures shipped beside the weights (`latentstore/weights/measurements.json`), written by
   `python -m latentstore.eval.validation` (the file records that command, the date and the photos);
3. otherwise the codec is measured now, and the result cached.
Every row says where it came from (`source`) and which photos it was measured on (`photos`).
"""
from __future__ import annotations

import datetime
import json
import os

import numpy as np

from ..codec.api import compress, decompress
from ..codec.zoo import WEIGHTS_DIR, available_codecs, load_codec
from ..data.imageio import load_image
from ..data.photos import available_photos, resize_shorter
from .metrics import bpp, msssim_batch, psnr

CACHE_FORMAT = "latentstore.measurements/1"
METRICS_VERSION = 3  # bump when PSNR/MS-SSIM, the photo pipeline or the default coder change (3: bitstream v3)
SHIPPED_FILE = os.path.join(WEIGHTS_DIR, "measurements.json")
SHIPPED_COMMAND = "python -m latentstore.eval.validation"


def load_photos(paths, max_side: int = 512) -> list[tuple[str, np.ndarray]]:
    """Files given on the command line, or the validation split when none are given."""
    if paths:
        items = [(os.path.basename(p), load_image(p)) for p in paths]
    else:
        items = [(p.name, p.load()) for p in available_photos("val")]
    return [(n, resize_shorter(a, max_side) if max_side else a) for n, a in items]


def measure_codecs(names: list, max_side: int = 512, device: str | None = None,
                   photos: list[tuple[str, np.ndarray]] | None = None, coder: str | None = None,
                   also: tuple[str, ...] = ()) -> list[dict]:
    """Measure codecs (zoo names, codec files, or LatentCodec objects, e.g. a training's copy) on the validation
    photos, loaded once for all codecs. coder: the entropy coder whose bytes are counted (None: compress's
    default, model.default_coder); `also`: other coders whose bytes for the same symbols are reported too, as
    "bpp_by_coder" {coder id: bpp}."""
    from ..device import resolve_device
    device = resolve_device(device or "auto")  # the GPU when there is one: codecs and MS-SSIM alike
    codecs = [load_codec(n, device) if isinstance(n, str) else n for n in names]
    names = [n if isinstance(n, str) else n.name for n in names]
    photos = load_photos([], max_side) if photos is None else photos
    per = [{"rates": [], "psnr": [], "msssim": [], **{a: [] for a in also}} for _ in codecs]
    for _, rgb in photos:
        recs = []
        for c, acc in zip(codecs, per):
            data = compress(rgb, c, coder)
            rec = decompress(data, c)  # from the real bytes
            acc["rates"].append(bpp(len(data), rgb.shape))
            if also:
                sym = c.parse(data)[1]
                for a in also:
                    acc[a].append(bpp(len(c.pack(sym, rgb.shape[:2], a)), rgb.shape))
            acc["psnr"].append(psnr(rgb, rec))
            recs.append(rec)
        for acc, m in zip(per, msssim_batch(rgb, recs, device)):  # all codecs' reconstructions in one call
            acc["msssim"].append(float(m))
    today = datetime.date.today().isoformat()

    def mean(v):
        return float(np.mean(v)) if v else float("nan")
    return [{"name": n, "C": c.cfg.C, "L": c.cfg.L,
             "target_bpp": c.cfg.target_bpp, "bpp": mean(acc["rates"]), "psnr": mean(acc["psnr"]),
             "msssim": mean(acc["msssim"]), "bpp_by_coder": {a: mean(acc[a]) for a in also},
             "n_photos": len(photos), "photos": [p for p, _ in photos],
             "max_side": max_side, "weights_hash": c.hash, "trained_on": c.meta.get("device_name", "?"),
             "train_seconds": c.meta.get("train_seconds"), "measured": today, "metrics_version": METRICS_VERSION}
            for n, c, acc in zip(names, codecs, per)]


def measure_codec(name: str, max_side: int = 512) -> dict:
    return measure_codecs([name], max_side)[0]


# ------------------------------------------------------------------------------------ the cache
def cache_path() -> str:
    """Beside the other caches (latentstore_train.data.cache_dir): $LATENTSTORE_CACHE, else ~/.cache/latentstore."""
    root = os.environ.get("LATENTSTORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "latentstore")
    return os.path.join(root, "measurements.json")


def cache_key(weights_hash: str, max_side: int) -> str:
    return f"{weights_hash}:side{max_side}:m{METRICS_VERSION}"


def read_measurements(path: str) -> dict:
    """{key: row} from a measurements file; a missing or damaged file is an empty cache (it is only a cache)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def write_measurements(path: str, entries: dict, command: str | None = None) -> bool:
    """Write atomically; False (and nothing raised) when the cache cannot be written, e.g. a read-only home."""
    from ..atomic import write_json_atomic
    from ..errors import LatentstoreError
    doc = {"format": CACHE_FORMAT, "entries": entries}
    if command:
        doc["command"] = command
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(doc, path)
    except (OSError, LatentstoreError):
        return False
    return True


def codec_rows(names: list[str] | None = None, max_side: int = 512, measure: bool = False,
               device: str | None = None) -> list[dict]:
    """The `latentstore codecs` rows: cached or shipped figures where the weights hash matches, measured
    otherwise (or for every codec with measure=True); new measurements go to the user cache."""
    names = available_codecs() if names is None else names
    user = read_measurements(cache_path())
    shipped = read_measurements(SHIPPED_FILE)
    rows: dict[str, dict] = {}
    todo = []
    for n in names:
        key = cache_key(load_codec(n).hash, max_side)
        if not measure and key in user:
            rows[n] = {**user[key], "source": "cache"}
        elif not measure and key in shipped:
            rows[n] = {**shipped[key], "source": "shipped"}
        else:
            todo.append(n)
    if todo:
        for n, r in zip(todo, measure_codecs(todo, max_side, device)):
            rows[n] = {**r, "source": "measured now"}
            user[cache_key(r["weights_hash"], max_side)] = r
        write_measurements(cache_path(), user)
    return [rows[n] for n in names]


def format_codec_rows(rows: list[dict]) -> list[str]:
    """The `latentstore codecs` table: the bpp each codec delivers (real bytes on the validation photos) first,
    the paper's target for its operating point beside it, and how far apart they are."""
    lines = [f"{'name':8} {'C':>3} {'L':>3} {'bpp':>7} {'paper':>6} {'off':>5} {'PSNR':>6} {'MS-SSIM':>8} "
             f"{'photos':>6}  source"]
    for r in rows:
        off = f"{100 * (r['bpp'] / r['target_bpp'] - 1):+.0f}%" if r.get("target_bpp") else ""
        lines.append(f"{r['name']:8} {r['C']:>3} {r['L']:>3} {r['bpp']:>7.4f} {r['target_bpp']:>6.3f} {off:>5} "
                     f"{r['psnr']:>6.2f} {r['msssim']:>8.4f} {r['n_photos']:>6}  "
                     f"{r['source']} ({r.get('measured', '?')})")
    if rows:
        lines.append("bpp: delivered (real bytes, mean over the photos); paper: the operating point's target rate "
                     "(Torfason et al. 2018); off: how far the delivered rate is from it")
    return lines


def write_shipped(max_side: int = 512) -> str:
    """Measure every shipped codec on this machine's validation photos into latentstore/weights/measurements.json."""
    rows = measure_codecs(available_codecs(), max_side)
    entries = {cache_key(r["weights_hash"], max_side): r for r in rows}
    if not write_measurements(SHIPPED_FILE, entries, command=SHIPPED_COMMAND):
        raise OSError(f"cannot write {SHIPPED_FILE}")
    return SHIPPED_FILE


if __name__ == "__main__":  # regenerates the shipped figures: run after training or installing a codec
    print(f"wrote {write_shipped()}")
