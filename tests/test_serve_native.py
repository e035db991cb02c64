"""`latentstore serve STORE --native` (issue #30, phase 2): photos kept whole. A full-size upload (pixels, and the
client's full bitstream + companion) comes back from /reconstruction at its own size (tiled above a megapixel) or
as a ?max_side preview, from memory and from the store; the store grows shard by shard in the native-size layout,
`verify` passes and `info` reads it; the client's bitstream and the server's encode give the same stored bytes
and top-5; a latent upload without its companion is refused when a classifier needs it, nothing stored.
Real photos, a real codec file, a real tiny classify run, the app in-process."""
import io
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import latentstore as ls
from latentstore.cli import main
from latentstore.codec import bitstream as bs
from latentstore.codec.api import decompress
from latentstore.codec.zoo import load_codec_file
from latentstore.data.imageio import load_image
from latentstore.data.photos import skimage_photo_path
from latentstore.serve import ServeConfig, create_app
from latentstore.serve.client_encode import RemoteCodec, encode_photo
from latentstore.serve.latent_ingest import MEDIA_TYPE
from latentstore.store.verify import verify
from tests.test_serve import classifier_run, seal, stored_shas  # noqa: F401  (classifier_run: a fixture)

SIDE = 32


def jpeg(rgb: np.ndarray, q: int = 90) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(b, "JPEG", quality=q)
    return b.getvalue()


def photo(name: str, scale: float = 1.0) -> np.ndarray:
    rgb = load_image(skimage_photo_path(name))
    if scale != 1.0:
        h, w = rgb.shape[:2]
        rgb = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR))
    return rgb


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.fixture(scope="module")
def served(codec_path, classifier_run, tmp_path_factory):  # noqa: F811
    store = str(tmp_path_factory.mktemp("native") / "photos.zarr")
    cfg = ServeConfig(store=store, codec=codec_path, classifier=classifier_run, size=SIDE, shard_size=2, native=True,
                      seal_interval_s=3600, device="cpu")
    app = create_app(cfg)
    with TestClient(app) as c:
        yield c, app.state.service, store


def test_a_full_size_photo_comes_back_at_its_own_size_and_the_store_verifies(served, codec_path):
    c, svc, store = served
    assert c.get("/v1/codec").headers["x-latentstore-layout"] == "native"
    big = photo("astronaut", 2.1)  # 1075 x 1075: over a megapixel, coded and decoded in tiles
    uploads = [(big, "space"), (photo("coffee"), "cup"), (photo("chelsea"), "cat")]
    metas = []
    for rgb, label in uploads:
        r = c.post("/v1/images", content=jpeg(rgb), headers={"content-type": "image/jpeg"}, params={"label": label})
        assert r.status_code == 200, r.text
        m = r.json()
        H, W = rgb.shape[:2]
        assert m["stored_size"] == [H, W] and m["latent_shape"][1:] == [-(-H // 8), -(-W // 8)]
        assert m["bpp"] == pytest.approx(8 * m["bytes"] / (H * W), abs=1e-3) and len(m["predictions"]) >= 3
        metas.append(m)
    for sealed in (False, True):
        if sealed:
            seal(svc)
        for (rgb, _), m in zip(uploads, metas):
            H, W = rgb.shape[:2]
            rec = c.get(f"/v1/images/{m['id']}/reconstruction")
            assert rec.status_code == 200 and png_size(rec.content) == (W, H)
            small = c.get(f"/v1/images/{m['id']}/reconstruction", params={"max_side": 100})
            assert max(png_size(small.content)) == 100
            lat = c.get(f"/v1/images/{m['id']}/latent").content
            assert len(lat) == m["bytes"] and bs.unpack(lat)[0].H == H
            assert decompress(lat, load_codec_file(codec_path)).shape == (H, W, 3)
    assert c.get(f"/v1/images/{metas[0]['id']}/reconstruction", params={"max_side": 2}).status_code == 422
    s = ls.open_store(store)
    assert s.schema.policy["mode"] == "native" and s.schema.policy["classifier_size"] == SIDE
    assert len(s) == 3 and s.schema.num_shards == 2  # grown a shard at a time: 2 + 1 in shards of 2
    assert [tuple(s.meta(i)["size"]) for i in range(3)] == [u[0].shape[:2] for u in uploads]
    rep = verify(store)
    assert rep["ok"], rep["errors"]
    info = CliRunner().invoke(main, ["info", store])
    assert info.exit_code == 0, info.output


def test_the_clients_full_bitstream_and_companion_match_the_servers_encode(served, codec_path):
    c, svc, store = served
    remote = RemoteCodec(load_codec_file(codec_path), svc.engine.precision, "native", SIDE, codec_path, False,
                         threading.Lock())
    data = jpeg(photo("rocket"), 92)
    sent = encode_photo(remote, data, "rocket")["files"]
    assert set(sent) == {"file", "companion"}
    latent = c.post("/v1/images", files=sent, data={"label": "rocket"})
    pixels = c.post("/v1/images", content=data, headers={"content-type": "image/jpeg"})
    assert latent.status_code == 200 and pixels.status_code == 200, latent.text
    p, q = pixels.json(), latent.json()
    assert q["encoded_by"] == "client" and q["source_bytes"] == len(sent["file"][1])
    assert q["stored_size"] == p["stored_size"] == list(photo("rocket").shape[:2])
    assert q["predictions"] == p["predictions"] and len(p["predictions"]) >= 3
    seal(svc)
    a = c.get(f"/v1/images/{p['id']}/latent").content
    b = c.get(f"/v1/images/{q['id']}/latent").content
    assert a == b == sent["file"][1]  # only the full one is stored, byte for byte what either side coded
    assert verify(store)["ok"]


def test_a_latent_upload_without_its_companion_is_refused_and_nothing_is_stored(served, codec_path):
    c, svc, store = served
    remote = RemoteCodec(load_codec_file(codec_path), svc.engine.precision, "native", SIDE, codec_path, False,
                         threading.Lock())
    full = encode_photo(remote, jpeg(photo("chelsea", 0.7)), "chelsea")["files"]["file"]
    r = c.post("/v1/images", files={"file": full})
    assert r.status_code == 422 and "companion" in r.json()["error"]
    bad = c.post("/v1/images", files={"file": full, "companion": ("c.lsb", full[1], MEDIA_TYPE)})
    assert bad.status_code == 422 and f"{SIDE}x{SIDE}" in bad.json()["error"]  # a companion must be S x S
    seal(svc)
    import hashlib
    assert hashlib.sha256(full[1]).hexdigest() not in stored_shas(store)


def test_a_fixed_size_store_stays_the_default_and_keeps_its_layout(codec_path, tmp_path):
    store = str(tmp_path / "fixed.zarr")
    with TestClient(create_app(ServeConfig(store=store, codec=codec_path, size=SIDE, device="cpu"))) as c:
        assert c.get("/v1/codec").headers["x-latentstore-layout"] == "fixed"
    # reopened with --native: an existing store keeps its own layout (as it keeps its own --size)
    with TestClient(create_app(ServeConfig(store=store, codec=codec_path, size=64, native=True, device="cpu"))) as c:
        h = c.get("/v1/codec").headers
        assert h["x-latentstore-layout"] == "fixed" and h["x-latentstore-size"] == str(SIDE)
    assert os.path.isdir(store)


def test_upload_encode_to_a_native_server_over_a_socket_keeps_each_photo_whole(codec_path, classifier_run,  # noqa: F811
                                                                              tmp_path):
    """`latentstore upload --encode` (in-process) against `latentstore serve --native` (a subprocess on 127.0.0.1):
    the client reads the layout from GET /v1/codec and sends each photo's full bitstream + companion; the server
    stores each photo at its own size, labelled from its class folder; after SIGTERM the store verifies."""
    import json

    import httpx

    from benchmarks.serve import ServerProcess
    src = tmp_path / "tree"
    sizes = {}
    for cls, names in {"cat": ["chelsea"], "space": ["rocket"]}.items():
        (src / cls).mkdir(parents=True)
        for n in names:
            rgb = photo(n, 0.5)
            Image.fromarray(rgb).save(src / cls / f"{n}.jpg", quality=90)
            sizes[n] = list(rgb.shape[:2])
    store = str(tmp_path / "photos.zarr")
    s = ServerProcess(store, codec_path, ["--native", "--size", SIDE, "--classifier", classifier_run, "--device", "cpu"])
    try:
        os.environ["LATENTSTORE_CODEC_CACHE"] = str(tmp_path / "codecs")
        try:
            r = CliRunner().invoke(main, ["upload", str(src), "--url", s.url, "--encode", "--quiet", "--json",
                                          str(tmp_path / "out.json")])
        finally:
            del os.environ["LATENTSTORE_CODEC_CACHE"]
        assert r.exit_code == 0, r.output
        out = json.load(open(tmp_path / "out.json"))
        assert len(out) == 2
        for x in out:
            m = httpx.get(f"{s.url}/v1/images/{x['id']}").json()
            name = os.path.basename(x["path"]).split(".")[0]
            assert m["encoded_by"] == "client" and m["stored_size"] == sizes[name], m
            assert m["label"] == os.path.basename(os.path.dirname(x["path"])) and len(m["predictions"]) >= 3
    finally:
        assert s.stop() == 0
    assert sorted(tuple(ls.open_store(store).meta(i)["size"]) for i in range(2)) == sorted(map(tuple, sizes.values()))
    assert verify(store)["ok"]
