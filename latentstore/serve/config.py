"""The service's options, one typed dataclass (the CLI's flags are these fields)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class ServeConfig:
    store: str = ""  # the store: created when absent (fixed-size Zarr, bitstream v2), reopened when present
    codec: str = "ls-c16"  # operating point name or codec file; must be the store's codec
    classifier: str | None = None  # a classify run (--input latent) whose cResNet predicts top-5 labels
    host: str = "127.0.0.1"  # address to bind; anything but loopback needs --token-file
    port: int = 8000  # TCP port (0: any free port, printed when ready)
    token_file: str | None = None  # lines "TOKEN read|write"; without it no token is asked (loopback only)
    max_batch: int = 16  # uploads per encode batch at most; 1 = one request at a time
    max_delay_ms: float = 5.0  # a batch waits this long to fill, only while the model was busy
    queue: int = 64  # uploads waiting at most: queue + max_batch in flight (decoding, queued, running); more get 503
    max_upload_mb: float = 32.0  # bodies over this are refused with 413 before they are read whole
    max_pixels: int = 40_000_000  # decoded pixels an upload may have (decompression bombs: 422)
    size: int = 256  # side S of a new store (uploads are fitted to S x S); an existing store keeps its own
    shard_size: int = 256  # samples per store shard of a new store
    device: str = "auto"  # auto | cpu | cuda: where the encoder and classifier run
    decode_threads: int = 4  # threads decoding uploads (and hashing, reconstructing)
    seal_interval_s: float = 1.0  # the sealer runs at least this often
    seal_batch: int = 64  # ... and as soon as this many uploads wait in the intake log
    workers: int = 1  # uvicorn worker processes sharing the store (one of them seals)
    drain_wait_s: float = 10.0  # at shutdown the sealer waits this long at most for other workers' last records

    def check(self) -> "ServeConfig":
        if not self.store:
            raise UsageError("STORE is required")
        if os.path.exists(self.store) and not os.path.isdir(self.store):
            raise UsageError(f"{self.store}: is a file, not a store folder")
        if self.max_batch < 1 or self.queue < 1 or self.max_delay_ms < 0 or self.workers < 1:
            raise UsageError("--max-batch, --queue and --workers must be >= 1 and --max-delay-ms >= 0")
        if not self.max_upload_mb > 0:
            raise UsageError(f"--max-upload-mb must be > 0 (got {self.max_upload_mb})")
        if self.size < 8 or self.size % 8:
            raise UsageError(f"--size must be a positive multiple of 8 (got {self.size})")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in [0, 65535] (got {self.port})")
        if not self.token_file and not is_loopback(self.host):
            raise UsageError(f"refusing to serve on {self.host} without --token-file: without tokens only "
                             "loopback (127.0.0.1, ::1, localhost) is allowed")
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
