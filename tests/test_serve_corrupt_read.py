"""The service's GETs check what they read (issue #26): a bit flipped in a sealed shard is a one-line 500 naming
the damaged sample, never its bytes or a reconstruction of them."""
import os

from fastapi.testclient import TestClient

from latentstore.serve.app import create_app
from latentstore.serve.config import ServeConfig
from tests.test_serve import image_bytes, post, seal


def _latent_shards(store: str) -> list[str]:
    """The sealed latents' shard files (Zarr chunks under latents/c/)."""
    root = os.path.join(store, "latents", "c")
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs)


def test_a_flipped_bit_in_a_sealed_shard_is_never_served(codec_path, tmp_path):
    store = str(tmp_path / "c.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, size=32, shard_size=4, seal_interval_s=30, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        ids = [post(c, image_bytes(400 + i), tok=None).json()["id"] for i in range(4)]
        seal(app.state.service)
        good = [c.get(f"/v1/images/{i}/latent").content for i in ids]
    shard = _latent_shards(store)[0]  # shard 0 holds the 4 uploads
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 3] ^= 0x10
    open(shard, "wb").write(bytes(data))
    app = create_app(cfg)  # a fresh process's view: nothing cached from before the flip
    with TestClient(app) as c:
        answers = [c.get(f"/v1/images/{i}/latent") for i in ids] + [c.get(f"/v1/images/{i}/reconstruction")
                                                                     for i in ids]
    bad = [a for a in answers if a.status_code != 200]
    assert bad, "a flipped bit must make at least one sample unreadable"
    for a in bad:
        assert a.status_code == 500 and "sample" in a.json()["error"] and "\n" not in a.json()["error"], a.text
    for i, a in enumerate(answers[:4]):  # what is still served is exactly what was stored
        assert a.status_code != 200 or a.content == good[i]
