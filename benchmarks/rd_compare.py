"""Two codecs photo by photo against JPEG at each one's own bpp, from one `latentstore eval rd` run:
    python benchmarks/rd_compare.py benchmarks/results/rd/rd_points.csv ls-c32@1 ls-c32   (markdown to stdout)
"""
import csv, sys
import numpy as np
path, old, new = sys.argv[1:4]
pts = list(csv.DictReader(open(path)))
photos = sorted({p["photo"] for p in pts})
def at(ph, method, b, key):
    c = sorted([p for p in pts if p["photo"] == ph and p["method"] == method], key=lambda p: float(p["bpp"]))
    xs = [float(p["bpp"]) for p in c]
    return float(np.interp(b, xs, [float(p[key]) for p in c])) if xs[0] <= b <= xs[-1] else float("nan")
print("| photo | old bpp | old MS-SSIM | old PSNR | new bpp | new MS-SSIM | new PSNR | JPEG MS-SSIM at new bpp | new - JPEG MS-SSIM | old - JPEG (at old bpp) | new - JPEG PSNR | old - JPEG PSNR |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
better = {"msssim": 0, "psnr": 0}
for ph in photos:
    o = [p for p in pts if p["photo"] == ph and p["method"] == old][0]
    n = [p for p in pts if p["photo"] == ph and p["method"] == new][0]
    row = []
    for key in ("msssim", "psnr"):
        go = float(o[key]) - at(ph, "JPEG", float(o["bpp"]), key)
        gn = float(n[key]) - at(ph, "JPEG", float(n["bpp"]), key)
        better[key] += gn > go
        row.append((gn, go))
    print(f"| {ph} | {float(o['bpp']):.3f} | {float(o['msssim']):.4f} | {float(o['psnr']):.2f} | {float(n['bpp']):.3f} | "
          f"{float(n['msssim']):.4f} | {float(n['psnr']):.2f} | {at(ph, 'JPEG', float(n['bpp']), 'msssim'):.4f} | "
          f"{row[0][0]:+.4f} | {row[0][1]:+.4f} | {row[1][0]:+.2f} | {row[1][1]:+.2f} |")
print(f"\nnew closer to (or further above) JPEG than old, at each one's own bpp: MS-SSIM on {better['msssim']}/{len(photos)} photos, "
      f"PSNR on {better['psnr']}/{len(photos)}")
