"""Each codec's gain over JPEG 2000, WebP and JPEG at its own bpp, from one `latentstore eval rd` run (markdown):

    python -m benchmarks.rd_gains RUN/rd_points.csv ls-c8 ls-c16 ls-c32

The same arithmetic as `codec_finish`'s compare table (`codec_row`): per photo, the codec minus the classical codec
interpolated to the codec's bpp; averaged over the photos that classical codec reaches (their number in brackets;
n/a: it reaches none, e.g. JPEG's quality 1 is above ls-c8's rate).
"""
from __future__ import annotations

import sys

from latentstore_train.codec_finish import REFERENCES, codec_row, read_points


def gains_table(points_csv: str, codecs: list[str]) -> str:
    pts = read_points(points_csv)
    known = {p["method"] for p in pts}
    missing = [c for c in codecs if c not in known]
    if missing:
        raise SystemExit(f"error: {points_csv} has no rows for {', '.join(missing)} (it has: {', '.join(sorted(known))})")
    head = ["codec", "photos", "bpp", "PSNR", "MS-SSIM"] + [f"{k} over {r}" for r in REFERENCES for k in ("MS-SSIM", "PSNR")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in codecs:
        r = codec_row(pts, c)
        cells = [f"{r[f'msssim_over_{ref}']:+.4f} | {r[f'psnr_over_{ref}']:+.2f} dB ({r[f'{ref}_photos']})"
                 if r[f"{ref}_photos"] else "n/a | n/a (0)" for ref in REFERENCES]
        lines.append(f"| {c} | {r['photos']} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['msssim']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print(gains_table(sys.argv[1], sys.argv[2:]))
