"""The service's Prometheus metrics (Triton's set): requests, queue and compute time, batch sizes, queue depth,
bytes stored, rejects by status and reason. One registry per app, so several apps in one process (tests)
do not collide; GET /metrics exposes it. With several uvicorn workers each reports its own process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self, max_batch: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("latentstore_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.request_seconds = Histogram("latentstore_request_seconds", "Time to answer a request", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("latentstore_queue_seconds", "Time an upload waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("latentstore_compute_seconds", "Encode + classify time of a batch",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.wal_seconds = Histogram("latentstore_wal_fsync_seconds", "Write-ahead log append + fsync of a batch",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.seal_seconds = Histogram("latentstore_seal_seconds", "Time of one seal into store shards",
                                      buckets=LATENCY_BUCKETS, registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch})
        self.batch_size = Histogram("latentstore_batch_size", "Uploads per model batch",
                                    buckets=[s for s in sizes if s <= max_batch], registry=r)
        self.queue_depth = Gauge("latentstore_queue_depth", "Uploads waiting for the model", registry=r)
        self.in_flight = Gauge("latentstore_uploads_in_flight",
                               "Uploads admitted and not answered yet (hashing, decoding, queued, in a batch)", registry=r)
        self.bytes_stored = Counter("latentstore_bytes_stored", "Latent bitstream bytes accepted", registry=r)
        self.uploads = Counter("latentstore_uploads", "Uploads accepted (durable)", ["outcome"], registry=r)
        self.stored_samples = Gauge("latentstore_store_samples", "Samples sealed into the store (sealer process)",
                                    registry=r)
        self.seal_failures = Counter("latentstore_seal_failures", "Seal rounds that failed (the records stay in the "
                                     "intake or the journal; the next round retries)", registry=r)
        self.log_failures = Counter("latentstore_log_write_failures", "Intake log appends that failed (the batch "
                                    "answered 507)", registry=r)
        self.rejects = Counter("latentstore_rejects", "Requests refused", ["status", "reason"], registry=r)

    def on_batch(self, size: int, queue_s: list, compute_s: float) -> None:
        self.batch_size.observe(size)
        for q in queue_s:
            self.queue_seconds.observe(q)
