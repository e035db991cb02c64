"""Export the programme's points, measure them beside the shipped codecs, install the better ones (issue #29).

    python -m latentstore_train.codec_finish --out runs/finish-DATE [--points ls-c8,ls-c16,ls-c32] [--install]

1. Snapshot: each point's latest checkpoint in train/programme/<point> is copied (ckpt.json, the tensors file it
   names, checked against the sha256 it records, and config.json). The programme may go on training meanwhile.
2. Export: `export_run` on the copy writes OUT/<point>.safetensors (v2 and v3 tables refitted on the training
   photos, as the shipped codecs' were).
3. Measure: `latentstore eval rd --device cpu` on the exports and the shipped codecs of the same names, in one run,
   on the validation photos at eval rd's default scale -> OUT/rd/.
4. Compare at equal rate: a codec has one point per photo, and the old and new codecs of one name sit at different
   rates. So each is compared with what JPEG 2000 (and WebP, JPEG) deliver at its own bpp on the same photo: the
   mean per-photo gain over the photos the reference reaches. An export is better when it gains more than the
   shipped codec over JPEG 2000 in MS-SSIM and in PSNR -> OUT/compare.csv and OUT/README.md.
5. --install: each better export becomes the shipped codec (the one it replaces stays loadable as NAME@K, so every
   store and bitstream it made still decodes), then latentstore/weights/measurements.json is measured again.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import time

from latentstore.errors import LatentstoreError

REFERENCES = ("JPEG2000", "WebP", "JPEG")
DECIDING = "JPEG2000"  # reaches every point's rate on most photos (JPEG does not reach ls-c8's)


def snapshot_run(run_dir: str, dst: str, tries: int = 10) -> dict:
    """Copy a run's latest checkpoint to `dst`, consistent while the run goes on: the tensors file ckpt.json names
    must match the sha256 ckpt.json records (a checkpoint written between the two reads is retried)."""
    from latentstore_train.checkpoint import META, tensors_name
    for _ in range(tries):
        try:
            with open(os.path.join(run_dir, META)) as f:
                raw = f.read()
            meta = json.loads(raw)
            name = tensors_name(meta)
            with open(os.path.join(run_dir, name), "rb") as f:
                data = f.read()
        except (OSError, ValueError):  # replaced between the two reads
            time.sleep(1.0)
            continue
        if hashlib.sha256(data).hexdigest() != meta.get("tensors_sha256"):
            time.sleep(1.0)
            continue
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        shutil.copy2(os.path.join(run_dir, "config.json"), os.path.join(dst, "config.json"))
        with open(os.path.join(dst, name), "wb") as f:
            f.write(data)
        with open(os.path.join(dst, META), "w") as f:  # last: the pair is whole before ckpt.json names it
            f.write(raw)
        return meta
    raise LatentstoreError(f"{run_dir}: no consistent checkpoint after {tries} tries")


def read_points(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "bpp": float(r["bpp"]), "psnr": float(r["psnr"]), "msssim": float(r["msssim"])}
                for r in csv.DictReader(f)]


def gain_over(points: list[dict], codec: str, ref: str, key: str, photos=None) -> tuple[float, int]:
    """Mean over photos (of `photos`; None: all) of (codec - `ref` interpolated to the codec's bpp on that photo),
    and over how many photos (those where `ref`'s qualities span the codec's rate)."""
    from latentstore.eval.rd import RDPoint, interpolate_at
    diffs = []
    for p in (p for p in points if p["method"] == codec and (photos is None or p["photo"] in photos)):
        curve = [RDPoint(q["photo"], q["method"], q["setting"], q["bpp"], q["psnr"], q["msssim"], 0)
                 for q in points if q["photo"] == p["photo"] and q["method"] == ref]
        v = interpolate_at(curve, p["bpp"], key)
        if v is not None:
            diffs.append(p[key] - v)
    return (sum(diffs) / len(diffs) if diffs else float("nan")), len(diffs)


def codec_row(points: list[dict], codec: str, photos=None) -> dict:
    mine = [p for p in points if p["method"] == codec and (photos is None or p["photo"] in photos)]
    row = {"codec": codec, "photos": len(mine)}
    for key in ("bpp", "psnr", "msssim"):
        row[key] = sum(p[key] for p in mine) / len(mine)
    for ref in REFERENCES:
        for key in ("msssim", "psnr"):
            row[f"{key}_over_{ref}"], row[f"{ref}_photos"] = gain_over(points, codec, ref, key, photos)
    return row


def common_photos(points: list[dict], codecs: list[str], ref: str = DECIDING) -> set:
    """The photos on which `ref` reaches every one of `codecs`' rates: gains over it compare only there."""
    return {ph for ph in {p["photo"] for p in points}
            if all(gain_over(points, c, ref, "psnr", {ph})[1] for c in codecs)}


def better(new: dict, old: dict) -> bool:
    """The export beats the shipped codec at equal rate: a larger gain over JPEG 2000 in MS-SSIM and in PSNR (both
    rows over the same photos: common_photos)."""
    return (new[f"msssim_over_{DECIDING}"] > old[f"msssim_over_{DECIDING}"]
            and new[f"psnr_over_{DECIDING}"] > old[f"psnr_over_{DECIDING}"])


def report(rows: list[dict], decisions: dict, basis: dict, steps: dict, out: str) -> str:
    lines = ["| codec | steps | bpp | PSNR | MS-SSIM | " + " | ".join(
        f"MS-SSIM over {r} | PSNR over {r}" for r in REFERENCES) + " |",
        "|---|---|---|---|---|" + "---|---|" * len(REFERENCES)]
    for r in rows:
        cells = " | ".join("n/a | n/a (0)" if not r[f"{ref}_photos"] else
                           f"{r[f'msssim_over_{ref}']:+.4f} | {r[f'psnr_over_{ref}']:+.2f} dB ({r[f'{ref}_photos']})"
                           for ref in REFERENCES)
        label = (f"{os.path.basename(r['codec'])[: -len('.safetensors')]} (programme)"
                 if r["codec"].endswith(".safetensors") else f"{r['codec']} (shipped)")
        lines.append(f"| {label} | {steps.get(r['codec'], '')} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
                     f"{r['msssim']:.4f} | {cells} |")
    lines += ["", "Gains: the codec minus the reference interpolated to the codec's bpp, photo by photo, averaged over "
              "the photos the reference reaches (their number in brackets; n/a: it reaches none, e.g. JPEG's "
              "quality 1 is above ls-c8's rate).", ""]
    lines += [f"- {name}: {'better: install' if ok else 'not better: keep the shipped codec'} ({basis[name]})"
              for name, ok in decisions.items()]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"# Programme exports against the shipped codecs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
                f"\n\n`python -m latentstore_train.codec_finish --out {out}`; eval rd's scale: see rd/rd_scale.txt.\n\n"
                + text)
    with open(os.path.join(out, "compare.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return text


def finish(out: str, points: list[str], root: str, install: bool = False) -> dict:
    """Steps 1-5 of the module's docstring; returns {point: better?}."""
    from latentstore.cli import main as cli
    from latentstore.codec.zoo import available_codecs, install_codec, load_codec_file
    from latentstore_train.codec import export_run
    os.makedirs(out, exist_ok=True)
    files, steps = {}, {}
    for name in points:
        run = os.path.join(out, "runs", name)
        meta = snapshot_run(os.path.join(root, name), run)
        files[name] = os.path.join(out, f"{name}.safetensors")
        steps[files[name]] = f"{meta['step']:,} ({meta.get('cpu_seconds', 0.0) / 3600:.2f} CPU-h)"
        export_run(run, files[name])
    shipped = [n for n in points if n in available_codecs()]
    args = ["eval", "rd", "--out", os.path.join(out, "rd"), "--device", "cpu"]
    for c in [*files.values(), *shipped]:
        args += ["--codec", c]
    cli(args, prog_name="latentstore", standalone_mode=False)
    pts = read_points(os.path.join(out, "rd", "rd_points.csv"))
    rows = [codec_row(pts, c) for c in [*files.values(), *shipped]]
    decisions, basis = {}, {}
    for n in points:
        if n not in shipped:
            decisions[n], basis[n] = True, "nothing shipped under this name"
            continue
        common = common_photos(pts, [files[n], n])
        new, old = codec_row(pts, files[n], common), codec_row(pts, n, common)
        decisions[n] = bool(common) and better(new, old)
        basis[n] = (f"over {DECIDING} on the {len(common)} photos it reaches at both rates: MS-SSIM "
                    f"{new[f'msssim_over_{DECIDING}']:+.4f} vs {old[f'msssim_over_{DECIDING}']:+.4f}, PSNR "
                    f"{new[f'psnr_over_{DECIDING}']:+.2f} vs {old[f'psnr_over_{DECIDING}']:+.2f} dB")
    print(report(rows, decisions, basis, steps, out))
    if install:
        for name, ok in decisions.items():
            if ok:
                codec = load_codec_file(files[name])
                codec.cfg.name = name
                h = install_codec(codec, name, {**codec.meta, "installed": time.strftime("%Y-%m-%d"),
                                                "compared": os.path.join(out, "README.md")})
                print(f"installed {name} ({h})")
        if any(decisions.values()):
            from latentstore.eval.validation import write_shipped
            print(f"wrote {write_shipped()}")
    return decisions


def main(argv=None) -> None:
    from latentstore_train.codec_programme import ROOT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="where the snapshots, exports, eval rd and the comparison go")
    ap.add_argument("--points", default="ls-c8,ls-c16,ls-c32")
    ap.add_argument("--root", default=ROOT, help="the programme's folder")
    ap.add_argument("--install", action="store_true", help="install each export that beats the shipped codec")
    a = ap.parse_args(argv)
    finish(a.out, [p for p in a.points.split(",") if p], a.root, a.install)


if __name__ == "__main__":
    main()
