"""kill -9 of a real `latentstore serve` subprocess at seeded random moments while several client threads upload
over a real socket, each time restarted on the same store: every upload that got a 200 is served by GET
/v1/images/{id} after each restart, and after a SIGTERM (exit 0) it is in the store exactly once (open_store,
LatentDataset), nothing no client sent is, and `latentstore verify` passes; one upload in three is a client's
bitstream (latents from the device, issue #30). Two kill -9 trials on one store
(three server starts); benchmarks/serve.py --durability-trials runs ten, each on its own store."""
from benchmarks.serve import durability_trial


def test_two_kill9_trials_lose_no_acknowledged_upload(tmp_path, codec_path):
    """One in three uploads is a client's bitstream (application/x-latentstore), the rest images."""
    lines = []
    res = durability_trial(str(tmp_path), codec_path, seed=1, threads=3, per_thread=10, jitter_s=0.1,
                           rounds=2, log=lines.append, latent_every=3)
    assert res["ok"], lines
    assert len(res["kills"]) == 2 and res["sigterm_rc"] == 0 and res["verify_rc"] == 0
    assert res["acked"] > 0 and res["stored"] >= res["acked"]
    assert 0 < res["latent_acked"] < res["acked"], res  # both kinds acknowledged, each stored exactly once


def test_a_store_killed_mid_seal_says_so_in_one_line_until_serve_repairs_it(tmp_path, codec_path):
    """A process killed (SIGKILL) after a seal rewrote the store's shards and before it re-finalized the schema:
    the store's files disagree with its schema, and the seal marker names the repair in one line; the next
    start repairs it (every upload present once, `verify` passes, no marker)."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from fastapi.testclient import TestClient

    from latentstore.errors import StoreError
    from latentstore.serve import ServeConfig, create_app
    from latentstore.store.append import interrupted_seal
    from latentstore.store.verify import verify
    from tests.test_serve import stored_shas
    store = str(tmp_path / "cut.zarr")
    script = textwrap.dedent("""
        import os, signal, sys
        from fastapi.testclient import TestClient
        from latentstore.serve import ServeConfig, create_app
        from latentstore.serve.wal import FAULTS
        from tests.test_serve import image_bytes
        cfg = ServeConfig(store=sys.argv[1], codec=sys.argv[2], size=32, shard_size=4, seal_interval_s=3600,
                          device="cpu")
        app = create_app(cfg)
        c = TestClient(app).__enter__()
        for i in range(6):
            r = c.post("/v1/images", content=image_bytes(40 + i), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            print(r.json()["sha256"], flush=True)
        svc = app.state.service
        svc.intake.rotate()
        FAULTS.arm("store.finalize")  # the shards rewritten, the schema not re-finalized yet
        try:
            svc.sealer.seal_once()
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", script, store, codec_path], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    acked = set(p.stdout.split())
    assert len(acked) == 6
    line = interrupted_seal(store)
    assert line == f"{store}: an interrupted seal; run `latentstore serve {store}` once to repair it"
    try:  # what the marker is for: the store as the kill left it does not verify
        consistent = verify(store)["ok"]
    except StoreError as e:
        consistent = False
        assert "interrupted seal" in str(e) or "checksum" in str(e), e
    assert not consistent
    with TestClient(create_app(ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, device="cpu"))) as c:
        assert c.get("/readyz").status_code == 200
    assert interrupted_seal(store) is None
    got = stored_shas(store)
    assert sorted(got) == sorted(acked)
    rep = verify(store)
    assert rep["ok"], rep["errors"]
