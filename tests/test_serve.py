"""`latentstore serve`: the app in-process (starlette's TestClient runs its lifespan) and on a real socket
(uvicorn in a thread; `latentstore serve` in a subprocess for SIGTERM), with a real codec, a real tiny
classify run, real PNG/JPEG bytes, and the store read back by open_store, LatentDataset and `verify`."""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import latentstore as ls
from latentstore.cli import main
from latentstore.codec.zoo import load_codec_file
from latentstore.serve import ServeConfig, create_app
from latentstore.store.verify import verify

READ, WRITE = "r3ad-token-for-tests", "wr1te-token-for-tests"  # >= 16 characters: shorter ones are refused


def image_bytes(i: int, fmt: str = "PNG", size=(56, 40)) -> bytes:
    """A distinct real image per i: smooth gradients plus seeded noise."""
    rng = np.random.default_rng(i)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, (i * 37) % 255)], -1)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, format=fmt)
    return b.getvalue()


@pytest.fixture(scope="module")
def classifier_run(codec_path, tmp_path_factory):
    from latentstore_train.classify import ClassifyConfig, train
    from tests.store_fixtures import make_store, make_tree
    d = tmp_path_factory.mktemp("serve_cls")
    make_store(make_tree(str(d / "src"), with_bad=False), str(d / "s.zarr"), codec_path, size=32)
    cfg = ClassifyConfig(input="latent", train=str(d / "s.zarr"), val=str(d / "s.zarr"), model="cresnet39", width=8,
                         depth_scale=0.3, batch_size=4, epochs=1, num_workers=0, max_steps=2, device="cpu")
    train(cfg, str(d / "run"), progress=False)
    return str(d / "run")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("tok") / "tokens.txt"
    p.write_text(f"# scopes\n{READ} read\n{WRITE} write\n")
    p.chmod(0o600)  # a token file others may read is refused
    return str(p)


def auth(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def post(c, data: bytes, ct="image/png", tok=WRITE, **params):
    headers = {"content-type": ct, **(auth(tok) if tok else {})}
    return c.post("/v1/images", content=data, headers=headers, params=params or None)


def wait_for(cond, timeout_s: float = 30.0) -> bool:
    t0 = time.time()
    while not cond() and time.time() - t0 < timeout_s:
        time.sleep(0.05)
    return cond()


def stored_shas(store: str) -> list[str]:
    s = ls.open_store(store)
    return [s.meta(i)["source"].removeprefix("sha256:") for i in range(len(s))]


@pytest.fixture(scope="module")
def served(codec_path, classifier_run, token_file, tmp_path_factory):
    """One in-process app with tokens and a classifier, shared by the tests that only add to it."""
    store = str(tmp_path_factory.mktemp("served") / "up.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, classifier=classifier_run, token_file=token_file, size=32,
                      shard_size=4, max_upload_mb=0.05, max_pixels=1_000_000, seal_interval_s=0.2, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        yield c, app.state.service, store


def seal(svc) -> None:
    svc.intake.rotate()
    svc.sealer.seal_once()


def test_upload_dedup_get_latent_reconstruction_search(served, codec_path):
    c, svc, store = served
    r = post(c, image_bytes(1), label="gradient")
    assert r.status_code == 200, r.text
    m = r.json()
    assert {"id", "sha256", "bytes", "bpp", "shape", "predictions", "timings_ms"} <= set(m)
    assert m["shape"] == [40, 56] and m["bytes"] > 0 and m["bpp"] == pytest.approx(8 * m["bytes"] / 32 ** 2, abs=1e-3)
    assert 1 <= len(m["predictions"]) <= 5 and all(0 <= p["score"] <= 1 for p in m["predictions"])
    scores = [p["score"] for p in m["predictions"]]
    assert scores == sorted(scores, reverse=True)
    again = post(c, image_bytes(1))  # same bytes: same id, stored once
    assert again.status_code == 200 and again.json()["id"] == m["id"] and again.json()["duplicate"] is True
    jpg = post(c, image_bytes(2, "JPEG"), ct="image/jpeg")
    webp = c.post("/v1/images", files={"file": ("x.webp", image_bytes(3, "WEBP"), "image/webp")},
                  data={"label": "multipart", "key": "k-3"}, headers=auth(WRITE))
    assert jpg.status_code == 200 and webp.status_code == 200, webp.text
    assert webp.json()["label"] == "multipart"
    assert post(c, image_bytes(3, "WEBP"), ct="image/webp").json()["id"] == webp.json()["id"]  # dedup across forms

    for sealed in (False, True):  # served from memory before the seal, from the store after it
        if sealed:
            seal(svc)
        g = c.get(f"/v1/images/{m['id']}", headers=auth(READ))
        assert g.status_code == 200 and g.json()["sha256"] == m["sha256"] and g.json()["sealed"] is sealed
        lat = c.get(f"/v1/images/{m['id']}/latent", headers=auth(READ))
        assert lat.status_code == 200 and len(lat.content) == m["bytes"]
        rgb = ls.decompress(lat.content, load_codec_file(codec_path))  # `latentstore decompress` decodes it
        assert rgb.shape == (32, 32, 3)
        png = c.get(f"/v1/images/{m['id']}/reconstruction", headers=auth(READ))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), rgb)
        top = m["predictions"][0]
        hits = c.get("/v1/search", params={"label": top["label"], "min_score": top["score"] - 1e-6},
                     headers=auth(READ)).json()
        assert m["id"] in [h["id"] for h in hits["results"]]
        none = c.get("/v1/search", params={"label": top["label"], "min_score": 1.01}, headers=auth(READ)).json()
        assert none["count"] == 0

    shas = stored_shas(store)
    assert sorted(shas) == sorted({m["sha256"], jpg.json()["sha256"], webp.json()["sha256"]})  # each once
    assert c.get("/v1/images/" + "0" * 32, headers=auth(READ)).status_code == 404


def test_status_codes_and_nothing_rejected_is_stored(served):
    c, svc, store = served
    seal(svc)
    before = len(ls.open_store(store))
    img = image_bytes(10)
    assert c.get("/healthz").status_code == 200  # the one route without a token
    r = c.post("/v1/images", content=img, headers={"content-type": "image/png"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert post(c, img, tok="nope").status_code == 401
    assert post(c, img, tok=READ).status_code == 403
    assert c.get("/metrics").status_code == 401 and c.get("/metrics", headers=auth(READ)).status_code == 200
    big = image_bytes(11, size=(400, 300))
    assert len(big) > 0.05 * (1 << 20)
    r = post(c, big)  # Content-Length over the cap: refused before the body is read
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the streaming cap
        for i in range(0, len(big), 4096):
            yield big[i: i + 4096]
    r = c.post("/v1/images", content=chunks(), headers={"content-type": "image/png", **auth(WRITE)})
    assert r.status_code == 413 and "streaming" in r.json()["error"]
    assert post(c, b"plain words", ct="text/plain").status_code == 415
    r = post(c, b"\x00not an image at all" * 10)
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, format="GIF")
    assert post(c, gif.getvalue(), ct="image/gif").status_code == 415  # JPEG, PNG and WebP only
    bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(bomb, format="PNG")  # 4 Mpx in a few kB: over the 1 Mpx limit
    r = post(c, bomb.getvalue())
    assert r.status_code == 422 and "pixel limit" in r.json()["error"]
    assert post(c, img[: len(img) // 2]).status_code == 422  # truncated
    assert post(c, image_bytes(12, size=(6, 30))).status_code == 422  # under 8 px on a side
    metrics = c.get("/metrics", headers=auth(READ)).text
    for status, reason in (("401", "unauthorized"), ("403", "forbidden"), ("413", "too_large"),
                           ("415", "not_an_image"), ("422", "pixel_limit")):
        assert f'latentstore_rejects_total{{reason="{reason}",status="{status}"}}' in metrics
    # the upload's fast path (app.IngestApp) is counted under its route, as FastAPI's routes are
    assert 'latentstore_requests_total{method="POST",route="/v1/images",status="413"} 2.0' in metrics
    assert 'route="unmatched"' not in metrics
    seal(svc)
    assert len(ls.open_store(store)) == before  # nothing of a rejected upload reached the store
    assert json.loads(c.get("/readyz", headers=auth(READ)).text)["ready"] is True


def test_store_grows_across_shards_and_reads_like_a_converted_one(served):
    c, svc, store = served
    ids = [post(c, image_bytes(100 + i), label=f"L{i % 3}").json()["id"] for i in range(9)]
    seal(svc)
    s = ls.open_store(store)
    assert s.schema.complete and s.schema.num_slots % 4 == 0 and s.schema.num_slots >= len(s) >= 9
    assert {"L0", "L1", "L2"} <= set(s.schema.label_names)
    assert s.schema.policy["encoder"]["dtype"] == svc.engine.enc.policy.dtype  # what ran, recorded as conversion does
    ds = ls.LatentDataset(store)
    lat, lab = ds[len(ds) - 1]
    assert tuple(lat.shape) == (8, 4, 4) and s.schema.label_names[lab] == "L2"
    import torch
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    assert batch[0].shape[0] == len(ds)
    rep = verify(store)
    assert rep["ok"], rep["errors"]
    assert len(set(ids)) == 9 and all(c.get(f"/v1/images/{i}", headers=auth(READ)).json()["sealed"] for i in ids)
    out = CliRunner().invoke(main, ["verify", store])
    assert out.exit_code == 0 and "ok" in out.output


def test_restart_drops_a_torn_tail_and_keeps_every_record(codec_path, tmp_path, caplog):
    store = str(tmp_path / "t.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=30, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        shas = [post(c, image_bytes(200 + i), tok=None).json()["sha256"] for i in range(6)]
        svc = app.state.service
        seal(svc)  # slots 0-5: shard 0 full, shard 1 journaled
        shas.append(post(c, image_bytes(300), tok=None).json()["sha256"])
        seg = svc.intake._path
        svc.intake._f.write(b"LSW1\x40\x00\x00\x00torn")  # a record cut short by a crash, after one good one
        svc.intake._f.flush()
        svc.stop = lambda: None  # leave as if killed: no drain, no final seal (the lock is released below)
        svc._stop.set()
        svc.batcher.drain()
        svc.sealer.close()
        svc._lock_f.close()
        svc.intake._f.close()
    assert os.path.exists(seg)
    with open(os.path.join(store, "_serve", "journal", "shard-000001.jnl"), "ab") as f:
        f.write(b"LSW1\xff")  # and a torn journal tail
    caplog.set_level("WARNING", logger="latentstore.serve")
    app = create_app(cfg)
    with TestClient(app) as c:
        c.get("/healthz")
    assert sum("torn tail" in r.message for r in caplog.records) == 2
    got = stored_shas(store)
    assert sorted(got) == sorted(shas) and len(got) == 7
    assert verify(store)["ok"]


def test_batcher_dispatches_at_once_when_idle_and_batches_while_busy():
    from latentstore.serve.batcher import BatcherConfig, DynamicBatcher, QueueFull
    gate, sizes = threading.Event(), []

    def run(xs):
        sizes.append(len(xs))
        if xs[0] == "slow":
            gate.wait(10)
        return [ValueError("bad") if x == "bad" else x * 2 for x in xs]
    b = DynamicBatcher(run, BatcherConfig(max_batch=4, max_delay_ms=60_000, queue_size=4))
    assert b.submit(21).result(timeout=30) == 42  # idle: no 60 s wait for company
    slow = b.submit("slow")
    while not sizes or sizes[-1] != 1 or len(sizes) < 2:
        time.sleep(0.01)
    futs = [b.submit(i) for i in range(3)] + [b.submit("bad")]
    with pytest.raises(QueueFull):
        b.submit(99)  # the bounded queue: 4 waiting
    futs[1].cancel()  # a caller that left: the batch still runs for the others
    gate.set()
    assert slow.result(10) == "slowslow"
    assert [futs[0].result(10), futs[2].result(10)] == [0, 4]
    with pytest.raises(ValueError):
        futs[3].result(10)  # only the failing item fails
    assert sizes[2] == 4  # everything queued while busy went in one batch
    assert b.drain(10)


def test_batcher_takes_what_is_queued_when_waiting_would_not_pay():
    """fill_pays False (a client's bitstream, no classifier): items that arrived while a batch ran go at once as
    the next batch, not after max_delay_ms waiting for company (which capped latent uploads at batch / delay).
    Seen in the batch sizes: an item sent 0.3 s later joins the waiting batch only when waiting pays."""
    from latentstore.serve.batcher import BatcherConfig, DynamicBatcher
    gate, sizes = threading.Event(), []

    def run(xs):
        sizes.append(len(xs))
        if xs[0] == "slow":
            gate.wait(10)
        return xs
    for pays, expected in ((lambda x: x != "cheap", [1, 1, 1]), (None, [1, 2])):
        sizes.clear()
        gate.clear()
        b = DynamicBatcher(run, BatcherConfig(max_batch=8, max_delay_ms=10_000, queue_size=8), fill_pays=pays)
        slow = b.submit("slow")
        while not sizes:
            time.sleep(0.01)
        cheap = b.submit("cheap")  # queued while the model is busy: the next batch
        gate.set()
        slow.result(10)
        time.sleep(0.3)
        late = b.submit("late")
        assert (cheap.result(15), late.result(15)) == ("cheap", "late")
        assert sizes == expected
        assert b.drain(10)


@pytest.fixture()
def socket_server(codec_path, tmp_path):
    """uvicorn serving the app on a free 127.0.0.1 port in a thread; its encoder slowed so the queue fills."""
    import uvicorn
    store = str(tmp_path / "sock.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, max_batch=1, queue=1,
                      seal_interval_s=0.2, device="cpu", port=0)
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t0 = time.time()
    while not server.started and time.time() - t0 < 60:
        time.sleep(0.05)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    svc = app.state.service
    real = svc.engine.run

    def slowed(images):  # the real encoder, then a pause: a model slower than the arrivals
        out = real(images)
        time.sleep(0.4)
        return out
    svc.engine.run = slowed
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    th.join(60)


def test_real_socket_full_queue_answers_503_with_retry_after(socket_server):
    url, store = socket_server
    results = []

    def one(i):
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/v1/images", content=image_bytes(400 + i), headers={"content-type": "image/png"})
            results.append((r.status_code, r.headers.get("retry-after"), r.json()))
    th = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    [t.start() for t in th]
    [t.join(60) for t in th]
    codes = sorted(r[0] for r in results)
    assert len(codes) == 6 and set(codes) <= {200, 503} and 503 in codes and 200 in codes
    assert all(r[1] and "busy" in r[2]["error"] for r in results if r[0] == 503)
    ok = {r[2]["sha256"] for r in results if r[0] == 200}
    with httpx.Client(timeout=30) as c:
        assert "latentstore_queue_depth" in c.get(url + "/metrics").text
    assert wait_for(lambda: ok <= set(stored_shas(store)))  # sealed within a few intervals


def test_admission_counts_decoding_and_queued_uploads_and_refuses_the_rest_at_once(codec_path, tmp_path):
    """queue 1 + batch 1 = 2 uploads in flight at most, decoding included: with the model blocked, 6 of 8
    concurrent uploads get 503 while it is still blocked, only the 2 admitted ones were decoded, and only
    they reach the store."""
    import uvicorn
    store = str(tmp_path / "adm.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, max_batch=1, queue=1,
                      seal_interval_s=0.2, device="cpu", port=0)
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    gate, results, decoded = threading.Event(), {}, []
    try:
        assert wait_for(lambda: server.started, 60)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        svc = app.state.service
        real_run, real_decode = svc.engine.run, svc._decode

        def blocked(images):  # the real encoder once the test opens the gate: a model slower than anything
            gate.wait(60)
            return real_run(images)

        def counted(data, *latent):
            decoded.append(data)
            return real_decode(data, *latent)
        svc.engine.run, svc._decode = blocked, counted

        def one(i):
            with httpx.Client(timeout=60) as c:
                r = c.post(url + "/v1/images", content=image_bytes(700 + i), headers={"content-type": "image/png"})
                results[i] = (r.status_code, r.headers.get("retry-after"), r.json())
        clients = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        [t.start() for t in clients]
        assert wait_for(lambda: len(results) >= 6, 30)  # answered while the model is still blocked
        early = dict(results)
        assert len(early) == 6 and all(r[0] == 503 and r[1] == "1" and "busy" in r[2]["error"] for r in early.values())
        assert svc.in_flight == 2
        assert wait_for(lambda: len(decoded) >= 2, 30)  # the second admitted one may still be hashing
        assert len(decoded) == 2  # the refused ones were never decoded (all 6 are answered: none can be late)
        with httpx.Client(timeout=30) as c:
            assert "latentstore_uploads_in_flight 2.0" in c.get(url + "/metrics").text
        gate.set()
        [t.join(60) for t in clients]
        ok = {r[2]["sha256"] for r in results.values() if r[0] == 200}
        assert len(results) == 8 and len(ok) == 2 and svc.in_flight == 0
        assert wait_for(lambda: len(stored_shas(store)) >= 2)
        assert set(stored_shas(store)) == ok  # nothing refused reached the store
    finally:
        gate.set()
        server.should_exit = True
        th.join(60)


def test_sigterm_drains_seals_and_exits_0(codec_path, tmp_path):
    store = str(tmp_path / "term.zarr")
    exe = os.path.join(os.path.dirname(sys.executable), "latentstore")
    p = subprocess.Popen([exe, "serve", store, "--codec", codec_path, "--size", "32", "--shard-size", "4",
                          "--port", "0", "--max-batch", "4", "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        t0 = time.time()
        while "serving on" not in line and time.time() - t0 < 120:
            line = p.stderr.readline()
            assert line or p.poll() is None, "server exited before serving"
        url = line.split()[-1]
        acked, lock = [], threading.Lock()

        def client(w):
            with httpx.Client(timeout=30) as c:
                for i in range(8):
                    try:
                        r = c.post(url + "/v1/images", content=image_bytes(500 + 10 * w + i),
                                   headers={"content-type": "image/png"})
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        with lock:
                            acked.append(r.json()["sha256"])
        th = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        [t.start() for t in th]
        while len(acked) < 4 and time.time() - t0 < 120:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)  # while uploads are in flight
        rc = p.wait(120)
        [t.join(60) for t in th]
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 0
    got = stored_shas(store)
    assert set(acked) <= set(got) and len(got) == len(set(got)) and len(acked) >= 4
    assert not os.listdir(os.path.join(store, "_serve", "intake"))  # everything sealed
    assert verify(store)["ok"]


def test_cli_refuses_a_public_host_without_tokens(codec_path, tmp_path):
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "x.zarr"), "--codec", codec_path, "--host", "0.0.0.0"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--token-file" in r.output
    assert not os.path.exists(tmp_path / "x.zarr")
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "x.zarr"), "--codec", "no-such-codec"])
    assert r.exit_code == 2 and "error:" in r.output


def test_two_serving_processes_share_one_store_with_one_sealer(codec_path, tmp_path):
    """What `--workers N` runs, in one process: two services on one store. The sealer lock (flock, per open
    file) admits one; the other only writes its intake log, which the sealer seals; when the sealer stops,
    the other takes over."""
    store = str(tmp_path / "two.zarr")
    cfg = dict(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=0.2, device="cpu",
               drain_wait_s=2.0)
    app_a, app_b = create_app(ServeConfig(**cfg)), create_app(ServeConfig(**cfg))
    a, b = TestClient(app_a), TestClient(app_b)
    a.__enter__()  # starts first: takes the sealer lock
    try:
        b.__enter__()
        try:
            sa, sb = app_a.state.service, app_b.state.service
            assert sa.sealer is not None and sb.sealer is None  # exactly one sealer
            ids = [post(b, image_bytes(600 + i), tok=None).json()["id"] for i in range(5)]  # into b's intake
            assert wait_for(lambda: all(a.get(f"/v1/images/{i}").json().get("sealed") for i in ids))
            assert wait_for(lambda: all(b.get(f"/v1/images/{i}").json().get("sealed") for i in ids))
            assert post(a, image_bytes(600), tok=None).json()["duplicate"] is True  # dedup across processes
        finally:
            a.__exit__(None, None, None)  # the sealer stops: b takes over within a few intervals
        assert wait_for(lambda: sb.sealer is not None)
        more = post(b, image_bytes(700), tok=None).json()["id"]
        assert wait_for(lambda: b.get(f"/v1/images/{more}").json().get("sealed"))
    finally:
        b.__exit__(None, None, None)
    got = stored_shas(store)
    assert len(got) == 6 == len(set(got)) and verify(store)["ok"]


@pytest.mark.slow
def test_cli_workers_share_the_store_and_drain_on_sigterm(codec_path, tmp_path):
    store = str(tmp_path / "w.zarr")
    exe = os.path.join(os.path.dirname(sys.executable), "latentstore")
    p = subprocess.Popen([exe, "serve", store, "--codec", codec_path, "--size", "32", "--shard-size", "4",
                          "--port", "0", "--workers", "2", "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        url = p.stderr.readline().split()[-1]
        ready = set()

        def both_ready() -> bool:  # each worker answers /readyz once loaded; fresh connections reach either
            ready.add(_ready_pid(url))
            return len(ready - {None}) == 2
        assert wait_for(both_ready, 180)
        # a burst of 32 connections at once: each worker listens on its own SO_REUSEPORT socket, so the kernel
        # spreads them (on one shared socket, the first worker to wake accepted them all, 3 runs in 5)
        host, port = url.split("//")[1].split(":")
        conns = [socket.create_connection((host, int(port)), timeout=30) for _ in range(32)]
        burst = set()
        for s in conns:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for s in conns:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            burst.add(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
        assert len(burst) == 2, burst
        acked, pids = [], set()

        def client(w):
            with httpx.Client(timeout=60) as c:
                for i in range(6):
                    r = c.post(url + "/v1/images", content=image_bytes(800 + 10 * w + i),
                               headers={"content-type": "image/png"})
                    assert r.status_code == 200
                    acked.append(r.json()["sha256"])
                    pids.add(r.json()["worker"])
        th = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        [t.start() for t in th]
        [t.join(120) for t in th]
        p.send_signal(signal.SIGTERM)
        rc = p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 0 and len(acked) == 24 and pids
    got = stored_shas(store)
    assert sorted(got) == sorted(set(acked)) and verify(store)["ok"]


def _ready_pid(url: str):
    """The pid of the worker that answered /readyz 200 on a fresh connection, else None."""
    try:
        r = httpx.get(url + "/readyz", timeout=5)
        return r.json()["pid"] if r.status_code == 200 else None
    except httpx.TransportError:
        return None


def _ready(c, url) -> bool:
    try:
        return c.get(url + "/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_restart_repairs_a_growth_and_a_shard_rewrite_cut_short(codec_path, tmp_path):
    """The two store states a kill -9 inside a seal can leave: arrays resized past the creation record (killed
    while growing), and an open shard's files and commit record gone (killed while rewriting it)."""
    import glob

    import zarr
    store = str(tmp_path / "cut.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=30, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        shas = [post(c, image_bytes(900 + i), tok=None).json()["sha256"] for i in range(6)]
    assert sorted(stored_shas(store)) == sorted(shas)  # drained and sealed: shard 0 full, shard 1 open
    g = zarr.open_group(store, mode="r+")
    for name in ("labels", "valid", "sizes", "sources", "latents"):
        a = g[name]
        a.resize((16,) + tuple(a.shape[1:]))  # grown to 4 shards, INIT.json still says 8 slots
    for f in glob.glob(os.path.join(store, "*", "c", "1*")) + [os.path.join(store, "_parts", "shard-000001.json")]:
        os.remove(f) if os.path.isfile(f) else shutil.rmtree(f)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/readyz").status_code == 200
    s = ls.open_store(store)
    assert s.schema.num_slots == 16 and sorted(stored_shas(store)) == sorted(shas)
    rep = verify(store)
    assert rep["ok"], rep["errors"]
