"""`latentstore info`: what a store holds, what it costs on disk, and what ImageNet would cost at its rate."""
from __future__ import annotations

import os

from .reader import open_store
from .schema import CODEC_FILE

IMAGENET_TRAIN_IMAGES = 1_281_167
PAPER_GB_AT_0635 = 24.8  # Torfason et al.: ImageNet train at 0.635 bpp
PAPER_JPEG_GB = 144.0
PAPER_PIXELS_PER_IMAGE = PAPER_GB_AT_0635 * 1e9 * 8 / (0.635 * IMAGENET_TRAIN_IMAGES)  # ~ 244k px


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def info(path: str) -> dict:
    store = open_store(path, allow_incomplete=True)
    s = store.schema
    t = s.totals
    on_disk = dir_bytes(path)
    latent = t.get("latent_bytes", 0)
    out = {
        "path": path, "format": s.kind, "schema_version": s.schema_version, "complete": s.complete,
        "codec": {k: s.codec[k] for k in ("id", "weights_hash", "C", "L")},
        "mode": s.policy["mode"], "size": s.policy.get("size"),
        "num_samples": s.num_samples, "num_rejected": s.num_rejected, "num_classes": len(s.label_names),
        "bytes_on_disk": on_disk, "latent_bytes": latent, "source_bytes": t.get("source_bytes", 0),
        "bpp_stored": latent * 8 / t["stored_pixels"] if t.get("stored_pixels") else None,
        "bpp_source": latent * 8 / t["source_pixels"] if t.get("source_pixels") else None,
        "bpp_entropy_estimate": t.get("entropy_bits", 0) / t["stored_pixels"] if t.get("stored_pixels") else None,
        "ratio_to_source": t.get("source_bytes", 0) / on_disk if on_disk else None,
        "ratio_latents_to_source": t.get("source_bytes", 0) / latent if latent else None,
        "other_bytes": on_disk - latent,  # embedded codec, metadata, labels, source paths, tar headers
        "codec_file_bytes": os.path.getsize(os.path.join(path, CODEC_FILE)) if os.path.exists(os.path.join(path, CODEC_FILE)) else 0,
    }
    if out["bpp_stored"]:
        out["imagenet_projection"] = imagenet_projection(out["bpp_stored"])
    return out


def imagenet_projection(bpp_stored: float) -> dict:
    """ImageNet-1k train at this store's measured bits per stored pixel."""
    gb = lambda px: IMAGENET_TRAIN_IMAGES * px * bpp_stored / 8 / 1e9  # noqa: E731
    return {"images": IMAGENET_TRAIN_IMAGES, "bpp": bpp_stored,
            "gb_at_256x256": gb(256 * 256),
            "gb_at_paper_resolution": gb(PAPER_PIXELS_PER_IMAGE), "paper_pixels_per_image": PAPER_PIXELS_PER_IMAGE,
            "paper_gb": PAPER_GB_AT_0635, "paper_jpeg_gb": PAPER_JPEG_GB}


def format_info(d: dict) -> str:
    lines = [f"store          {d['path']}  ({d['format']}, schema v{d['schema_version']}"
             f"{'' if d['complete'] else ', INCOMPLETE'})",
             f"codec          {d['codec']['id']}  C={d['codec']['C']} L={d['codec']['L']}  weights {d['codec']['weights_hash']}",
             f"mode           {d['mode']}" + (f" {d['size']}x{d['size']}" if d['size'] else ""),
             f"samples        {d['num_samples']:,} stored, {d['num_rejected']:,} rejected, {d['num_classes']} classes",
             f"bytes on disk  {d['bytes_on_disk']:,} (latents {d['latent_bytes']:,}); sources {d['source_bytes']:,}"]
    if d["bpp_stored"]:
        lines += [f"bpp            {d['bpp_stored']:.4f} actual per stored pixel, {d['bpp_entropy_estimate']:.4f} entropy "
                  f"estimate; {d['bpp_source']:.4f} per source pixel",
                  f"ratio          sources / latents = {d['ratio_latents_to_source']:.1f}x; sources / whole store = "
                  f"{d['ratio_to_source']:.2f}x (besides latents: {d['other_bytes']:,} bytes, of which the embedded "
                  f"codec is {d['codec_file_bytes']:,}; the rest is metadata, labels, source paths"
                  f"{', tar headers' if d['format'] == 'wds' else ''})"]
        p = d["imagenet_projection"]
        lines += [f"ImageNet-1k    {p['gb_at_256x256']:.1f} GB at 256x256; {p['gb_at_paper_resolution']:.1f} GB at the paper's "
                  f"~{p['paper_pixels_per_image'] / 1e3:.0f}k px/image (paper: {p['paper_gb']} GB at 0.635 bpp; "
                  f"JPEG: {p['paper_jpeg_gb']:.0f} GB)"]
    return "\n".join(lines)
