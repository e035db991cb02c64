"""Latents from the device over HTTP (issue #30, phase 2): GET /v1/codec, a client's bitstream as the raw body or a
multipart `file` part, each malformed or foreign bitstream refused with its reason and nothing of it stored, the
same image as pixels and as the client's bitstream giving the same stored bytes and the same top-5, and a known
image re-uploaded with another label answered explicitly (the first label kept). The app in-process (starlette's
TestClient), a real codec file, a real tiny classify run, real photos; the store read back by open_store."""
import hashlib
import os
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from latentstore.codec import bitstream as bs
from latentstore.codec.zoo import load_codec_file
from latentstore.serve import ServeConfig, create_app
from latentstore.serve.client_encode import RemoteCodec, encode_photo, fetch_codec
from latentstore.serve.latent_ingest import HASH_HEADER, MEDIA_TYPE
from tests.conftest import make_codec_file
from tests.test_latent_upload import png
from tests.test_serve import classifier_run, image_bytes, seal, stored_shas  # noqa: F401  (classifier_run: a fixture)

SIDE = 32


@pytest.fixture(scope="module")
def served(codec_path, classifier_run, tmp_path_factory):  # noqa: F811
    store = str(tmp_path_factory.mktemp("latent") / "up.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, classifier=classifier_run, size=SIDE, shard_size=4,
                      seal_interval_s=3600, device="cpu")  # sealed by the tests themselves
    app = create_app(cfg)
    with TestClient(app) as c:
        yield c, app.state.service, store


@pytest.fixture(scope="module")
def remote(served, tmp_path_factory):
    c, _, _ = served
    return fetch_codec(c, "", {}, str(tmp_path_factory.mktemp("codec-cache")))


def post_latent(c, data: bytes, **params):
    return c.post("/v1/images", content=data, headers={"content-type": MEDIA_TYPE}, params=params or None)


def test_codec_route_sends_the_codec_once_then_304(served, codec_path):
    c, svc, _ = served
    r = c.get("/v1/codec")
    assert r.status_code == 200 and r.content == open(codec_path, "rb").read()
    h = r.headers[HASH_HEADER]
    assert h == svc.engine.model.hash and r.headers["etag"] == f'"{h}"'
    again = c.get("/v1/codec", headers={"If-None-Match": f'"{h}"'})
    assert again.status_code == 304 and again.content == b""
    assert c.get("/v1/codec", headers={"If-None-Match": '"0000000000000000"'}).status_code == 200


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_pixels_and_the_clients_bitstream_give_the_same_stored_bytes_and_top5(served, remote, name):
    c, svc, _ = served
    data = png(name, 47, (3, 5))
    pixels = c.post("/v1/images", content=data, headers={"content-type": "image/png"})
    sent = encode_photo(remote, data, name)["content"]
    latent = post_latent(c, sent)
    assert pixels.status_code == 200 and latent.status_code == 200, latent.text
    p, q = pixels.json(), latent.json()
    assert p["encoded_by"] == "server" and q["encoded_by"] == "client" and p["id"] != q["id"]
    assert q["source_bytes"] == len(sent) and q["latent_shape"] == p["latent_shape"] and q["bytes"] == p["bytes"]
    assert len(p["predictions"]) >= 3 and q["predictions"] == p["predictions"]
    for sealed in (False, True):
        if sealed:
            seal(svc)
        a = c.get(f"/v1/images/{p['id']}/latent").content
        b = c.get(f"/v1/images/{q['id']}/latent").content
        assert a == b == sent  # the same symbols, coded the same: the very bytes the client sent
    multi = c.post("/v1/images", files={"file": ("x.lsb", sent, MEDIA_TYPE)}, data={"label": "ignored"})
    assert multi.status_code == 200 and multi.json()["id"] == q["id"] and multi.json()["duplicate"] is True


def forged_lane(good: bytes, codec) -> bytes:
    header, payload = bs.unpack(good)
    K = payload[0]
    _, off = bs._read_varint(payload, 1)
    for _ in range(K - 1):
        _, off = bs._read_varint(payload, off)
    bad = bytearray(payload)
    bad[off] ^= 0x5A  # lane 0's final state: the lane ends wrong, under a valid CRC
    return bs.pack(header, bytes(bad), codec.entropy.tables("latentstore.rans"))


def test_every_bad_bitstream_is_refused_with_its_reason_and_nothing_is_stored(served, remote, tmp_path):
    c, svc, store = served
    good = encode_photo(remote, png("chelsea"), "c")["content"]
    other = load_codec_file(make_codec_file(str(tmp_path / "other.safetensors"), seed=5, name="other-c8"))
    flipped = bytearray(good)
    flipped[-3] ^= 0x10
    cases = {
        "cut in its header": (good[:20], 422, "truncated"),
        "cut in its payload": (good[:-4], 422, "corrupt"),
        "bit-flipped": (bytes(flipped), 422, "crc"),
        "foreign codec": (other.compress(np.asarray(png_rgb("chelsea"))), 422, "/v1/codec"),
        "shape over the bounds": (remote.codec.compress(png_rgb("rocket", 64)), 422, "32x32"),
        "lane": (forged_lane(good, remote.codec), 422, "lane"),
        "not a bitstream": (b"GIF89a not ours", 415, "magic"),
        "empty": (b"", 415, "empty"),
    }
    seal(svc)
    before = set(stored_shas(store))
    for what, (data, status, word) in cases.items():
        r = post_latent(c, data)
        assert r.status_code == status, (what, r.text)
        err = r.json()["error"]
        assert word.lower() in err.lower() and "\n" not in err, (what, err)
        m = c.post("/v1/images", files={"file": ("x.lsb", data, MEDIA_TYPE)})  # the multipart form: the same
        assert m.status_code == status, (what, m.text)
    shas = {hashlib.sha256(d).hexdigest() for d, _, _ in cases.values()}
    assert not shas & set(svc.pending.meta)
    seal(svc)
    assert set(stored_shas(store)) == before  # nothing of any of them reached the store


def png_rgb(name: str, side: int = 48) -> np.ndarray:
    import io

    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png(name, side))).convert("RGB"))


def test_a_known_image_with_another_label_keeps_its_first_label_and_says_so(served):
    c, svc, _ = served
    data = image_bytes(4242)
    first = c.post("/v1/images", content=data, headers={"content-type": "image/png"}, params={"label": "cat"})
    assert first.status_code == 200 and first.json()["label"] == "cat" and "label_sent" not in first.json()
    for sealed in (False, True):
        if sealed:
            seal(svc)
        again = c.post("/v1/images", content=data, headers={"content-type": "image/png"}, params={"label": "dog"})
        body = again.json()
        assert again.status_code == 200 and body["duplicate"] is True and body["id"] == first.json()["id"]
        assert body["label"] == "cat" and body["label_sent"] == "dog"
        same = c.post("/v1/images", content=data, headers={"content-type": "image/png"}, params={"label": "cat"})
        assert "label_sent" not in same.json()
        assert c.get(f"/v1/images/{body['id']}").json()["label"] == "cat"


def test_client_bitstreams_posted_at_once_are_each_stored_once(served, remote):
    """Eight different client bitstreams posted at once from threads: all stored, each once."""
    c, svc, store = served
    items = [encode_photo(remote, image_bytes(900 + i), f"i{i}")["content"] for i in range(8)]
    out = {}

    def one(i):
        out[i] = post_latent(c, items[i])
    ths = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    [t.start() for t in ths]
    [t.join(60) for t in ths]
    assert all(out[i].status_code == 200 for i in range(8)), [out[i].text for i in out]
    seal(svc)
    got = stored_shas(store)
    for d in items:
        assert got.count(hashlib.sha256(d).hexdigest()) == 1
    assert os.path.isdir(store)
