"""kill -9 of a real `latentstore serve` subprocess at seeded random moments while several client threads upload
over a real socket, each time restarted on the same store: every upload that got a 200 is served by GET
/v1/images/{id} after each restart, and after a SIGTERM (exit 0) it is in the store exactly once (open_store,
LatentDataset), nothing no client sent is, and `latentstore verify` passes. Two kill -9 trials on one store
(three server starts); benchmarks/serve.py --durability-trials runs ten, each on its own store."""
from benchmarks.serve import durability_trial


def test_two_kill9_trials_lose_no_acknowledged_upload(tmp_path, codec_path):
    lines = []
    res = durability_trial(str(tmp_path), codec_path, seed=1, threads=3, per_thread=10, jitter_s=0.1,
                           rounds=2, log=lines.append)
    assert res["ok"], lines
    assert len(res["kills"]) == 2 and res["sigterm_rc"] == 0 and res["verify_rc"] == 0
    assert res["acked"] > 0 and res["stored"] >= res["acked"]
