"""The service's options, one typed dataclass (the CLI's flags are these fields), checked in full by `check()`
before anything is created: a bad value is one line (UsageError, exit 2) and no store folder appears."""
from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass

from ..errors import UsageError

MAX_SIDE = 4096  # --size above this would make the warm-up alone encode a > 16-Mpx image
MAX_UPLOAD_MB = 1024.0  # a body is held in memory whole; more than this per upload is a typo, not a photo


@dataclass
class ServeConfig:
    store: str = ""  # the store: created when absent (fixed-size Zarr, bitstream v2), reopened when present
    codec: str = "ls-c16"  # operating point name or codec file; must be the store's codec
    classifier: str | None = None  # a classify run (--input latent) whose cResNet predicts top-5 labels
    host: str = "127.0.0.1"  # address to bind; anything but loopback needs --token-file
    port: int = 8000  # TCP port (0: any free port, printed when ready)
    token_file: str | None = None  # lines "TOKEN read|write" (mode 0600, tokens >= 16 chars); none: no token asked
    max_batch: int = 16  # uploads per encode batch at most; 1 = one request at a time
    max_delay_ms: float = 5.0  # a batch waits this long to fill, only while the model was busy
    queue: int = 64  # uploads waiting at most: queue + max_batch in flight (decoding, queued, running); more get 503
    max_upload_mb: float = 32.0  # bodies over this are refused with 413 before they are read whole
    max_pixels: int = 40_000_000  # pixels an upload may have, decoded and after each resize (bombs, thin images: 422)
    size: int = 256  # side S of a new store (uploads are fitted to S x S); an existing store keeps its own
    native: bool = False  # a new store keeps each photo at its own size (S: the classifier's view); existing: its own
    shard_size: int = 256  # samples per store shard of a new store
    device: str = "auto"  # auto | cpu | cuda: where the encoder and classifier run
    decode_threads: int = 4  # threads decoding uploads (and hashing, reconstructing)
    seal_interval_s: float = 1.0  # the sealer runs at least this often
    seal_batch: int = 256  # ... and as soon as this many wait in the intake (a shard: a round rewrites its open shard whole)
    workers: int = 1  # uvicorn worker processes sharing the store (one of them seals)
    drain_wait_s: float = 10.0  # at shutdown the sealer waits this long at most for other workers' last records
    header_timeout_s: float = 10.0  # a request's headers must arrive within this; else the connection is dropped
    body_timeout_s: float = 60.0  # ... and its body within this after the headers (slow or half-sent: dropped)

    def check(self) -> "ServeConfig":
        """Every field in range, the token file readable and private: one line each, nothing created yet."""
        if not self.store:
            raise UsageError("STORE is required")
        if os.path.exists(self.store) and not os.path.isdir(self.store):
            raise UsageError(f"{self.store}: is a file, not a store folder")
        for flag, v, lo, hi in (("--max-batch", self.max_batch, 1, 4096), ("--queue", self.queue, 1, 1_000_000),
                                ("--workers", self.workers, 1, 256), ("--shard-size", self.shard_size, 1, 1 << 20),
                                ("--port", self.port, 0, 65535), ("--size", self.size, 8, MAX_SIDE),
                                ("max_pixels", self.max_pixels, 64, 1 << 31),
                                ("decode_threads", self.decode_threads, 1, 256),
                                ("seal_batch", self.seal_batch, 1, 1 << 20)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UsageError(f"{flag} must be an integer in [{lo}, {hi}] (got {v!r})")
        if self.size % 8:
            raise UsageError(f"--size must be a multiple of 8 (got {self.size})")
        for flag, v, lo, hi, open_lo in (("--max-upload-mb", self.max_upload_mb, 0.0, MAX_UPLOAD_MB, True),
                                         ("--max-delay-ms", self.max_delay_ms, 0.0, 60_000.0, False),
                                         ("seal_interval_s", self.seal_interval_s, 0.0, 3600.0, True),
                                         ("drain_wait_s", self.drain_wait_s, 0.0, 3600.0, False),
                                         ("--header-timeout", self.header_timeout_s, 0.0, 3600.0, True),
                                         ("--body-timeout", self.body_timeout_s, 0.0, 86_400.0, True)):
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (lo < v if open_lo else lo <= v) and v <= hi
            if not ok:
                raise UsageError(f"{flag} must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}] (got {v!r})")
        if self.max_upload_bytes < 1:
            raise UsageError(f"--max-upload-mb {self.max_upload_mb} is under one byte")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda (got {self.device!r})")
        if not self.token_file and not is_loopback(self.host):
            raise UsageError(f"refusing to serve on {self.host} without --token-file: without tokens only "
                             "loopback (127.0.0.1, ::1, localhost) is allowed")
        if self.token_file:
            from .auth import load_tokens
            load_tokens(self.token_file)  # private, UTF-8, long tokens: or one line now, before the store exists
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
