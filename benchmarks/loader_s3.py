"""`benchmarks/loader.py --store s3://BUCKET/PREFIX [--moto]`: the loader reading stores (a) Zarr and (b)
WebDataset from object storage, against the very same stores on local disk, in one run.

The local stores are uploaded byte for byte (latentstore.store.remote.commit.upload_store) under PREFIX;
both are then read by the same loaders (LatentMapDataset / LatentBatchStream, uint8 symbols, random 28x28
crop + flip), one core and every core. Requests per sample: the shard GETs the reader sent, per sample
delivered, in the cold first pass (every shard fetched once) and in the timed passes after it (shards
then come from the per-process memory cache, LATENTSTORE_REMOTE_CACHE_MB); plus a run whose memory
cache holds about one shard, where shards are fetched again and again (a store much bigger than memory,
without --cache-dir). A control row reads the local store with forkserver workers, the start method remote
stores need (obstore does not survive fork), to separate that cost from the object store's. Counted in the one-core runs (the counter lives in the process that reads).
With --moto the S3 server is moto's, a separate process on 127.0.0.1 (threads in this process would
compete with the loader for the GIL). Results: benchmarks/results/loader-s3.md and .csv.
"""
from __future__ import annotations

import csv
import os
import platform
import socket
import subprocess
import sys
import time


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() - t0 > 30 or p.poll() is not None:
                p.kill()
                raise SystemExit("moto server did not start")
            time.sleep(0.1)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"})
    return p, f"http://127.0.0.1:{port}"


def _create_bucket(url: str) -> None:
    import boto3
    bucket = url[5:].split("/")[0]
    c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
    try:
        c.create_bucket(Bucket=bucket)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass


def compare_remote(a, stores: dict, n: int, cores: int, results: str) -> None:
    from benchmarks.loader_common import stream_loader, torch_loader
    from latentstore.data.datasets import LatentMapDataset
    from latentstore.store.remote.blobs import RequestCounter
    from latentstore.store.remote.commit import upload_store
    from latentstore.store.info import dir_bytes
    server, endpoint = start_moto() if a.moto else (None, os.environ.get("AWS_ENDPOINT_URL", "AWS S3"))
    try:
        if a.moto:
            _create_bucket(a.store)
        base = f"{a.store.rstrip('/')}/run-{int(time.time())}"
        rows = []
        for key, fmt, mk in (("zarr", "zarr", lambda p, w: torch_loader(LatentMapDataset(p, crop=28), w)),
                             ("wds", "wds", lambda p, w: stream_loader(p, w))):
            remote = f"{base}/{os.path.basename(stores[key])}"
            upload_store(stores[key], remote)
            latent = dir_bytes(os.path.join(stores[key], "latents")) if fmt == "zarr" else \
                sum(os.path.getsize(os.path.join(stores[key], f)) for f in os.listdir(stores[key]) if f.endswith(".tar"))
            shard_mb = latent / max(1, -(-n // 256)) / 2 ** 20
            cases = [("local", stores[key], None), ("local, forkserver workers", stores[key], None),
                     ("s3", remote, None), ("s3, cache ~1 shard", remote, 1.2 * shard_mb)]
            rows += _measure_cases(fmt, cases, mk, n, cores, a.rounds)
    finally:
        if server is not None:
            server.kill()
            server.wait()
    write(a, rows, n, endpoint, results)


def _measure_cases(fmt, cases, mk, n, cores, rounds: int) -> list[dict]:
    """Every case measured in `rounds` interleaved rounds (local, remote, local, remote, ...: the machine's load
    drifts); medians, and each remote/local ratio the median of its per-round ratios. Requests: round one."""
    import statistics

    import benchmarks.loader_common as common
    from benchmarks.loader_common import measure
    from latentstore.store.remote.blobs import RequestCounter
    iters, counts, one, allc = {}, {}, {c[0]: [] for c in cases}, {c[0]: [] for c in cases}
    for r in range(rounds):
        for where, path, cache_mb in cases:
            common.FORCE_CONTEXT[:] = ["forkserver"] if "forkserver" in where else []
            if cache_mb is not None:  # read by the reader's shard cache when it is first used (round one)
                os.environ["LATENTSTORE_REMOTE_CACHE_MB"] = f"{cache_mb:.4f}"
            if r == 0:
                RequestCounter.reset()
                it = mk(path, 0)  # opens the store: schema, labels; a WebDataset store's tars, to index them
                opened = RequestCounter.requests
                RequestCounter.reset()
                cold, timed = {}, {}
                one[where].append(measure(it, n, after_warmup=lambda: cold.update(r=RequestCounter.requests)
                                          or RequestCounter.reset(), stats=timed))
                counts[where] = {"shard_requests_at_open": opened, "requests_per_sample_cold": cold.get("r", 0) / n,
                                 "requests_per_sample_warm": RequestCounter.requests / timed["samples"],
                                 "bytes_fetched_per_sample_warm": RequestCounter.bytes / timed["samples"]}
                iters[where] = (it, mk(path, cores) if cache_mb is None else None)
            else:
                one[where].append(measure(iters[where][0], n))
            if iters[where][1] is not None:
                allc[where].append(measure(iters[where][1], n))
            os.environ.pop("LATENTSTORE_REMOTE_CACHE_MB", None)
            common.FORCE_CONTEXT[:] = []
    rows = []
    nan = float("nan")
    for where, _, _ in cases:
        ratio = lambda d: statistics.median(x / y for x, y in zip(d[where], d["local"])) if d[where] else nan  # noqa: E731
        row = {"store": fmt, "read from": where, "sps_1_core": statistics.median(one[where]),
               "sps_all_cores": statistics.median(allc[where]) if allc[where] else nan, "cores": cores,
               "ratio_1_core": ratio(one), "ratio_all_cores": ratio(allc), "rounds": rounds, **counts[where]}
        rows.append(row)
        print(f"{fmt:5} {where:26} 1 core {row['sps_1_core']:9.1f}/s ({row['ratio_1_core']:.2f}x)  {cores} cores "
              f"{row['sps_all_cores']:9.1f}/s ({row['ratio_all_cores']:.2f}x)  requests/sample cold "
              f"{row['requests_per_sample_cold']:.4f} warm {row['requests_per_sample_warm']:.4f}", flush=True)
    return rows


def write(a, rows: list[dict], n: int, endpoint: str, results: str) -> None:
    cmd = f"python benchmarks/loader.py --images {n} --codec {a.codec} --store {a.store}" + (" --moto" if a.moto else "")
    lines = [f"# Loader throughput from object storage vs local disk, {n} images, codec {a.codec} at 256x256, crop 28", "",
             f"Command: `{cmd}`; endpoint {'moto on 127.0.0.1 (loopback, a separate process)' if a.moto else endpoint}; "
             f"{platform.machine()} CPU, {rows[0]['cores']} cores, {time.strftime('%Y-%m-%d')}; every row measured "
             f"in one run, each remote row against the same store on local disk (uploaded byte for byte); "
             f"medians of {rows[0]['rounds']} interleaved rounds, each ratio the median of its per-round ratios.", "",
             "| store | read from | samples/s, 1 core | x local | samples/s, all cores | x local | shard GETs at open | "
             "requests/sample, first pass | requests/sample, after | bytes fetched/sample, after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        allc = "-" if r["sps_all_cores"] != r["sps_all_cores"] else f"{r['sps_all_cores']:.1f}"
        allx = "-" if r["ratio_all_cores"] != r["ratio_all_cores"] else f"{r['ratio_all_cores']:.2f}"
        lines.append(f"| {r['store']} | {r['read from']} | {r['sps_1_core']:.1f} | {r['ratio_1_core']:.2f} | {allc} | "
                     f"{allx} | {r['shard_requests_at_open']} | {r['requests_per_sample_cold']:.4f} | {r['requests_per_sample_warm']:.4f} | "
                     f"{r['bytes_fetched_per_sample_warm']:,.0f} |")
    lines += ["", "Requests are the reader's shard GETs (one per whole shard), counted in the one-core runs. Opening a "
              "store also reads its schema and label arrays (not counted), and a WebDataset store's tars, to index "
              "them (counted at open: those tars then serve the first pass). 'cache ~1 shard' sets "
              "LATENTSTORE_REMOTE_CACHE_MB to about one shard, as for a store far bigger than memory without "
              "--cache-dir: every batch fetches the shards it touches again (held for that batch only)."]
    os.makedirs(results, exist_ok=True)
    open(os.path.join(results, "loader-s3.md"), "w").write("\n".join(lines) + "\n")
    with open(os.path.join(results, "loader-s3.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
