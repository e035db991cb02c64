"""Admission is the service's one bound: an upload it admitted is never refused by the batcher behind it.

The race H1 saw (tests/test_serve.py's admission test failing 2 runs in 8): admission let `queue + max_batch`
uploads in, while the batcher's own queue held only `queue`; whenever the model thread had taken a batch
shorter than max_batch (or had not taken it off the queue yet), an admitted upload got the batcher's 'queue
full' 503. The batcher's queue now holds every admitted upload. The app in-process, a real codec, real PNGs."""
import threading

from fastapi.testclient import TestClient

from latentstore.serve import ServeConfig, create_app
from tests.test_serve import image_bytes, wait_for


def test_every_admitted_upload_fits_the_batchers_queue(codec_path, tmp_path):
    """max_batch 4, queue 4: 8 admitted at most. The model blocked on its first batch (of 1 to 4 uploads), the
    other admitted uploads wait in the queue, none is refused; once the model runs, all 8 are stored."""
    cfg = ServeConfig(store=str(tmp_path / "a.zarr"), codec=codec_path, size=32, shard_size=8, max_batch=4, queue=4,
                      seal_interval_s=3600, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        svc = app.state.service
        gate, real = threading.Event(), svc.engine.run
        first = []

        def blocked(images):
            first.append(len(images))
            gate.wait(60)
            return real(images)
        svc.engine.run = blocked
        results = {}

        def one(i):
            results[i] = c.post("/v1/images", content=image_bytes(5000 + i), headers={"content-type": "image/png"})
        ths = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        [t.start() for t in ths]
        try:
            assert wait_for(lambda: svc.in_flight == 8 and svc.batcher.depth + (first[0] if first else 0) == 8, 60), \
                (svc.in_flight, svc.batcher.depth, first, {i: r.text for i, r in results.items()})
            assert not results  # nobody answered yet: the first batch is held, the rest queued
        finally:
            gate.set()
            [t.join(60) for t in ths]
        assert sorted(r.status_code for r in results.values()) == [200] * 8, {i: r.text for i, r in results.items()}
