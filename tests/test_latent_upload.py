"""Latents from the device (issue #30), at library level: a client's bitstream checked in full by
serve/latent_ingest.py (each refusal with its status, reason and code), re-coded to a store's own tables, the
server path (IngestEngine's encoder) and the client path (`upload --encode`) giving the same symbols, bytes and
top-5, GET /v1/codec's answer and the client's codec cache over a real HTTP exchange, and the client's labels
and --url checks. Real photos, a real codec file, a real tiny classify run."""
import io
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from latentstore.codec import bitstream as bs
from latentstore.codec.entropy import rans_v2
from latentstore.codec.zoo import load_codec_file
from latentstore.data.imageio import load_image
from latentstore.data.photos import resize_shorter, skimage_photo_path
from latentstore.errors import LatentstoreError, UsageError
from latentstore.serve.client import check_url, list_upload_sources
from latentstore.serve.client_encode import RemoteCodec, encode_photo, fetch_codec
from latentstore.serve.engine import IngestEngine
from latentstore.serve.latent_ingest import LatentBounds, check_latent_upload
from latentstore.serve.uploads import Rejected, screen_and_decode
from tests.conftest import make_codec_file
from tests.test_serve import classifier_run  # noqa: F401  (the fixture: a real tiny cResNet run)

SIDE = 32


def png(name: str, side: int = 48, crop=(0, 0)) -> bytes:
    rgb = resize_shorter(load_image(skimage_photo_path(name)), side)
    y, x = crop
    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[y:, x:])).save(b, format="PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def engine(codec_path, classifier_run):  # noqa: F811
    e = IngestEngine(codec_path, classifier_run, "cpu")
    e.bind(e.new_schema(SIDE, 4, "t"))
    return e


@pytest.fixture(scope="module")
def remote(engine, codec_path):
    return RemoteCodec(load_codec_file(codec_path), engine.precision, "fixed", SIDE, codec_path, False, threading.Lock())


def refused(data: bytes, engine, bounds=None, tables=None) -> Rejected:
    with pytest.raises(Rejected) as ei:
        check_latent_upload(data, engine.model, bounds or LatentBounds(side=SIDE), tables)
    e = ei.value
    assert 400 <= e.status < 500 and e.reason and "\n" not in e.reason
    return e


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_server_and_client_paths_give_the_same_symbols_bytes_and_top5(engine, remote, name):
    data = png(name, 47, (3, 5))  # an odd size: fitted to 32 x 32 by both sides the same way
    (srv,) = engine.run([engine.prepare(screen_and_decode(data, 10**7))])
    sent = encode_photo(remote, data, name)["content"]
    assert sent == engine.bitstream(srv.symbols.shape, srv.payload)  # the very bytes GET /latent would give
    checked = engine.check_latent(sent, 10**7)
    assert not checked.recoded and np.array_equal(checked.symbols, srv.symbols) and checked.payload == srv.payload
    (cli,) = engine.run([checked])
    assert len(srv.predictions) == min(5, len(engine.label_names)) >= 3 and cli.predictions == srv.predictions
    assert cli.bitstream_bytes == srv.bitstream_bytes == len(sent)


def test_the_precision_the_server_names_is_what_makes_the_symbols_equal():
    """With a shipped codec at 256 px: the client coding under the server's precision gives the server's symbols;
    under the other precision some cells differ (bf16 and fp32 agree on ~99.9% of cells), so the header matters."""
    e = IngestEngine("ls-c16", None, "cpu")
    e.bind(e.new_schema(256, 4, "t"))
    other = "fp32" if e.precision == "bf16" else "bf16"
    differ = {e.precision: 0, other: 0}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        data = png(name, 300)
        (srv,) = e.run([e.prepare(screen_and_decode(data, 10**8))])
        for prec in differ:
            r = RemoteCodec(e.model, prec, "fixed", 256, e.codec_file, False, threading.Lock())
            differ[prec] += int((e.check_latent(encode_photo(r, data, name)["content"], 10**8).symbols != srv.symbols).sum())
    assert differ[e.precision] == 0 and differ[other] > 0, differ


def test_a_mixed_batch_keeps_each_items_own_result(engine, remote):
    a, b = png("rocket"), png("astronaut")
    checked = engine.check_latent(encode_photo(remote, a, "a")["content"], 10**7)
    mixed = engine.run([engine.prepare(screen_and_decode(b, 10**7)), checked])
    alone = engine.run([engine.prepare(screen_and_decode(b, 10**7))]) + engine.run([checked])
    assert [m.payload for m in mixed] == [x.payload for x in alone]
    assert [m.predictions for m in mixed] == [x.predictions for x in alone]
    assert engine.classify_symbols([checked.symbols]) == [alone[1].predictions]


def test_truncated_bit_flipped_foreign_and_not_a_bitstream_are_refused(engine, remote, tmp_path):
    good = encode_photo(remote, png("coffee"), "c")["content"]
    e = refused(good[:-7], engine)
    assert (e.status, e.code) == (422, "corrupt_bitstream") and "CRC" in e.reason
    e = refused(good[:6], engine)
    assert (e.status, e.code) == (422, "corrupt_bitstream") and "truncated" in e.reason
    flipped = bytearray(good)
    flipped[len(good) // 2 + 10] ^= 0x10
    e = refused(bytes(flipped), engine)
    assert e.code == "corrupt_bitstream" and "CRC" in e.reason
    other = load_codec_file(make_codec_file(str(tmp_path / "other.safetensors"), seed=1))
    foreign = other.compress(screen_and_decode(png("coffee", 32), 10**7))
    e = refused(foreign, engine)
    assert e.code == "foreign_codec" and other.hash in e.reason and "/v1/codec" in e.reason
    e = refused(png("coffee"), engine)
    assert (e.status, e.code) == (415, "not_a_bitstream")
    e = refused(b"", engine)
    assert e.status == 415
    v1 = engine.model.compress(screen_and_decode(png("coffee", 32), 10**7), coder="latentstore.ans")
    assert refused(v1, engine).code == "bad_version"


def test_shape_over_the_bounds_is_refused(engine, remote):
    big = engine.model.compress(screen_and_decode(png("rocket", 64), 10**7))  # 64 px high: not this store's 32 x 32
    h = bs.unpack(big)[0]
    e = refused(big, engine)
    assert e.code == "latent_shape" and "32x32" in e.reason
    e = refused(big, engine, LatentBounds(max_pixels=h.H * h.W - 1, side=None))  # a native store's pixel limit
    assert e.code == "latent_shape" and "pixel limit" in e.reason
    assert check_latent_upload(big, engine.model, LatentBounds(max_pixels=h.H * h.W, side=None)).header.H == 64
    tiny = engine.model.compress(np.zeros((7, 40, 3), np.uint8))
    assert refused(tiny, engine, LatentBounds(side=None)).code == "latent_shape"


def test_a_lane_that_does_not_decode_is_refused_even_with_a_good_crc(engine, remote):
    good = encode_photo(remote, png("chelsea"), "c")["content"]
    header, payload = bs.unpack(good)
    tables = engine.model.entropy.tables("latentstore.rans")
    K = payload[0]
    _, off = bs._read_varint(payload, 1)
    for _ in range(K - 1):
        _, off = bs._read_varint(payload, off)
    bad = bytearray(payload)
    bad[off] ^= 0x5A  # lane 0's final encoder state: the lane ends in a wrong state
    forged = bs.pack(header, bytes(bad), tables)  # a valid CRC over the damaged lane
    e = refused(forged, engine)
    assert e.code == "lane_decode" and "lane" in e.reason


def test_a_bitstream_in_the_codecs_tables_is_recoded_to_the_stores(engine, remote):
    sent = encode_photo(remote, png("astronaut"), "a")["content"]
    syms = np.stack([encode_and_parse(remote, png(n)) for n in ("coffee", "rocket", "chelsea")])
    store_tables = rans_v2.fit_tables(syms, engine.model.cfg.L)  # a converted store's own fitted tables
    assert not np.array_equal(store_tables, engine.model.entropy.tables("latentstore.rans"))
    c = check_latent_upload(sent, engine.model, LatentBounds(side=SIDE), store_tables)
    assert c.recoded and np.array_equal(rans_v2.decode(c.payload, store_tables, c.symbols.shape), c.symbols)
    again = bs.pack(c.header, c.payload, store_tables)  # coded with the store's tables already: kept as sent
    c2 = check_latent_upload(again, engine.model, LatentBounds(side=SIDE), store_tables)
    assert not c2.recoded and c2.payload == c.payload
    third = rans_v2.fit_tables(syms[:1], engine.model.cfg.L, prior=5.0)  # tables the server does not have
    alien = bs.pack(c.header, rans_v2.encode(c.symbols, third), third)
    assert refused(alien, engine, tables=store_tables).code == "corrupt_bitstream"
    K = rans_v2.default_lanes(*c.symbols.shape) + 1  # another lane count than the store's
    lanes = bs.pack(c.header, rans_v2.encode(c.symbols, store_tables, lanes=K), store_tables)
    c3 = check_latent_upload(lanes, engine.model, LatentBounds(side=SIDE), store_tables)
    assert c3.recoded and c3.payload == c.payload


def encode_and_parse(remote, data: bytes) -> np.ndarray:
    return remote.codec.parse(encode_photo(remote, data, "x")["content"])[1]


def test_codec_answer_and_the_clients_cache(engine, codec_path, tmp_path):
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from fastapi.testclient import TestClient
    app, served = FastAPI(), {"n": 0}

    @app.get("/v1/codec")  # what phase 2 adds to app.py, in miniature
    async def codec(request: Request):
        status, body, headers = engine.codec_answer(request.headers.get("if-none-match"))
        served["n"] += len(body)
        return Response(body, status_code=status, headers=headers, media_type="application/octet-stream")

    with TestClient(app) as c:
        r = c.get("/v1/codec")
        assert r.status_code == 200 and r.content == open(codec_path, "rb").read()
        assert r.headers["x-latentstore-codec-hash"] == engine.model.hash
        assert r.headers["x-latentstore-precision"] == engine.precision
        cache = str(tmp_path / "cache")
        first = fetch_codec(c, "", {}, cache)
        assert first.fetched and first.codec.hash == engine.model.hash and first.side == SIDE
        n = served["n"]
        second = fetch_codec(c, "", {}, cache)
        assert not second.fetched and served["n"] == n  # 304: not sent again
        with open(first.path, "r+b") as f:  # a damaged cache entry is caught, not used
            f.seek(os.path.getsize(first.path) // 2)  # inside the network weights
            f.write(b"\x00" * 50)
        with pytest.raises(LatentstoreError, match="weights hash"):
            fetch_codec(c, "", {}, cache)


def test_labels_from_class_folders_and_a_url_with_a_path(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        (tmp_path / "src" / cls / f"{cls}.png").write_bytes(png("chelsea"))
    (tmp_path / "src" / "loose.png").write_bytes(png("coffee"))
    got = {os.path.basename(p): label for p, label in list_upload_sources(str(tmp_path / "src"))}
    assert got == {"cat.png": "cat", "dog.png": "dog", "loose.png": None}
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    with pytest.raises(UsageError):
        check_url("http://127.0.0.1:8000/v1/images")
    r = CliRunner().invoke(main, ["upload", str(tmp_path / "src"), "--url", "http://127.0.0.1:9/v1/images"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "without a path" in r.stderr, r.output
