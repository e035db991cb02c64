"""`latentstore info`: what a store holds, what it costs on disk, and what ImageNet would cost at its rate."""
from __future__ import annotations

import os

from .backends import store_coder
from .lock import LOCK_DIR
from .reader import open_store
from .schema import CODEC_FILE

IMAGENET_TRAIN_IMAGES = 1_281_167
PAPER_GB_AT_0635 = 24.8  # Torfason et al.: ImageNet train at 0.635 bpp
PAPER_JPEG_GB = 144.0
PAPER_PIXELS_PER_IMAGE = PAPER_GB_AT_0635 * 1e9 * 8 / (0.635 * IMAGENET_TRAIN_IMAGES)  # ~ 244k px


def dir_bytes(path: str) -> int:
    from .remote import is_remote, location_for
    if is_remote(path):  # one listing of the prefix
        loc = location_for(path)
        if getattr(loc, "http", False):  # no listing: the objects the schema names, and the schema object
            from .schema import read_schema
            names = set(read_schema(path).checksums) | ({"zarr.json"} if loc.exists("zarr.json") else {"schema.json"})
            return sum(loc.size(n) or 0 for n in names)
        return sum(v for k, v in loc.list().items() if not k.startswith(LOCK_DIR + "/"))
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != LOCK_DIR]  # a writer's lock is not part of the store
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def info(path: str) -> dict:
    """What the store holds and where its bytes go: entropy-coded payload, per-sample containers, shard
    index, embedded codec and metadata. Rates and the ImageNet projection use the payload plus the
    per-sample container, the same way for every layout."""
    store = open_store(path, allow_incomplete=True)
    s = store.schema
    t = s.totals
    n = max(s.num_samples, 1)
    on_disk = dir_bytes(path)
    latent = t.get("latent_bytes", 0)
    payload = t.get("entropy_payload_bytes")  # absent in stores written before 0.2
    from .remote import location_for
    codec_bytes = location_for(path).size(CODEC_FILE) or 0
    px = t.get("stored_pixels", 0)
    out = {
        "path": path, "format": s.kind, "schema_version": s.schema_version, "complete": s.complete,
        "codec": {k: s.codec[k] for k in ("id", "weights_hash", "C", "L")},
        "coder": store_coder(s),  # the latents' entropy coder: latentstore.ans (v1), .rans (v2), .rans3 (v3)
        "mode": s.policy["mode"], "size": s.policy.get("size"),
        "num_samples": s.num_samples, "num_rejected": s.num_rejected, "num_classes": len(s.label_names),
        "class_names": list(s.label_names),
        "bytes_on_disk": on_disk, "source_bytes": t.get("source_bytes", 0),
        "bytes": {"latent_files": latent, "payload": payload, "index": t.get("index_bytes"),
                  "container": latent - payload - t.get("index_bytes", 0) if payload is not None else None,
                  "codec": codec_bytes, "metadata": on_disk - latent - codec_bytes},
        "latent_bytes": latent,
        "bpp_payload": payload * 8 / px if payload is not None and px else None,
        "bpp_stored": latent * 8 / px if px else None,  # payload + containers + index, per stored pixel
        "bpp_source": latent * 8 / t["source_pixels"] if t.get("source_pixels") else None,
        "bpp_entropy_estimate": t.get("entropy_bits", 0) / px if px else None,
        "ratio_to_source": t.get("source_bytes", 0) / on_disk if on_disk else None,
        # the embedded codec is paid once per store: at 20 images it is most of the bytes, at dataset scale nothing
        "ratio_to_source_without_codec": t.get("source_bytes", 0) / (on_disk - codec_bytes)
        if on_disk > codec_bytes else None,
        "ratio_latents_to_source": t.get("source_bytes", 0) / latent if latent else None,
        "codec_share": codec_bytes / on_disk if on_disk else None,
        "codec_file_bytes": codec_bytes,
    }
    if px:
        bpp = out["bpp_payload"] if out["bpp_payload"] is not None else out["bpp_stored"]
        overhead = (latent - payload) / n if payload is not None else 0.0
        out["imagenet_projection"] = imagenet_projection(bpp, overhead)
    return out


def imagenet_projection(bpp_payload: float, overhead_per_sample: float = 0.0) -> dict:
    """ImageNet-1k train: payload at this store's bits per pixel, plus its measured per-sample container."""
    gb = lambda px: IMAGENET_TRAIN_IMAGES * (px * bpp_payload / 8 + overhead_per_sample) / 1e9  # noqa: E731
    return {"images": IMAGENET_TRAIN_IMAGES, "bpp": bpp_payload, "overhead_bytes_per_sample": overhead_per_sample,
            "gb_at_256x256": gb(256 * 256),
            "gb_at_paper_resolution": gb(PAPER_PIXELS_PER_IMAGE), "paper_pixels_per_image": PAPER_PIXELS_PER_IMAGE,
            "paper_gb": PAPER_GB_AT_0635, "paper_jpeg_gb": PAPER_JPEG_GB}


def class_list(names: list, shown: int = 12) -> str:
    """The class names, index: name, the first `shown` of them (info --json lists all)."""
    head = ", ".join(f"{i}: {n}" for i, n in enumerate(names[:shown]))
    return head + (f", ... and {len(names) - shown} more (info --json lists all)" if len(names) > shown else "")


def format_info(d: dict) -> str:
    b = d["bytes"]
    lines = [f"store          {d['path']}  ({d['format']}, schema v{d['schema_version']}"
             f"{'' if d['complete'] else ', INCOMPLETE'})",
             f"codec          {d['codec']['id']}  C={d['codec']['C']} L={d['codec']['L']}  weights {d['codec']['weights_hash']}"
             + (f"  coder {d['coder']}" if d.get("coder") else ""),
             f"mode           {d['mode']}" + (f" {d['size']}x{d['size']}" if d['size'] else ""),
             f"samples        {d['num_samples']:,} stored, {d['num_rejected']:,} rejected, {d['num_classes']} classes"]
    if d.get("class_names"):
        lines.append(f"classes        {class_list(d['class_names'])}")
    if b["payload"] is not None:
        lines.append(f"bytes on disk  {d['bytes_on_disk']:,} = latent payload {b['payload']:,} + per-sample containers "
                     f"{b['container']:,}" + (f" + shard index {b['index']:,}" if b["index"] else "")
                     + f" + embedded codec {b['codec']:,} + metadata {b['metadata']:,}; sources {d['source_bytes']:,}")
    else:
        lines.append(f"bytes on disk  {d['bytes_on_disk']:,} (latent files {b['latent_files']:,}, embedded codec "
                     f"{b['codec']:,}); sources {d['source_bytes']:,}")
    if d["bpp_stored"]:
        pay = f"{d['bpp_payload']:.4f} payload, " if d["bpp_payload"] is not None else ""
        lines += [f"bpp            {pay}{d['bpp_stored']:.4f} with containers, per stored pixel; {d['bpp_entropy_estimate']:.4f} "
                  f"entropy estimate; {d['bpp_source']:.4f} per source pixel",
                  f"ratio          sources / latent files = {d['ratio_latents_to_source']:.1f}x; sources / store = "
                  + (f"{d['ratio_to_source_without_codec']:.2f}x without the embedded codec, " if
                     d.get("ratio_to_source_without_codec") else "")
                  + f"{d['ratio_to_source']:.2f}x with it"]
        if d["codec_share"] and d["codec_share"] > 0.5:
            lines.append(f"note           the embedded codec is {100 * d['codec_share']:.0f}% of this store: it is paid once "
                         "per store (so the store decodes to pixels on its own), and vanishes at dataset scale")
        p = d["imagenet_projection"]
        lines += [f"ImageNet-1k    {p['gb_at_256x256']:.2f} GB at 256x256; {p['gb_at_paper_resolution']:.2f} GB at the paper's "
                  f"~{p['paper_pixels_per_image'] / 1e3:.0f}k px/image (payload + {p['overhead_bytes_per_sample']:.0f} B/sample "
                  f"of container and index; paper: {p['paper_gb']} GB at 0.635 bpp; JPEG: {p['paper_jpeg_gb']:.0f} GB)"]
    return "\n".join(lines)
