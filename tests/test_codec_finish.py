"""Exporting the programme's points and deciding what to install (issue #29): a consistent snapshot of a run that
goes on, an export that leaves the live validation curve alone, and the equal-rate comparison."""
import csv
import json
import math

import pytest

from latentstore.errors import LatentstoreError
from latentstore_train.codec import export_run, recipe_config, train
from latentstore_train.codec_finish import better, codec_row, gain_over, snapshot_run


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_an_export_of_a_snapshot_leaves_the_live_curve_and_run_alone(tmp_path):
    res, run = tmp_path / "results", tmp_path / "run"
    cfg = recipe_config("ls-c8", "smoke", steps=3000, stop_at=2, ckpt_every=1, val_cpu_minutes=1e-9,
                        results_dir=str(res), device="cpu", seed=5)
    train(cfg, str(run), progress=False)
    meta = snapshot_run(str(run), str(tmp_path / "snap"))
    assert meta["step"] == 2
    import dataclasses
    train(dataclasses.replace(cfg, stop_at=4), str(run), progress=False)  # the programme goes on
    live = _rows(res / "ls-c8-val.csv")
    assert [int(r["step"]) for r in live] == [1, 2, 3, 4]
    r = export_run(str(tmp_path / "snap"), str(tmp_path / "ls-c8.safetensors"))
    assert r["steps"] == 2 and r["weights_hash"]
    assert _rows(res / "ls-c8-val.csv") == live  # a copy's validator once cut this back to the copy's step
    assert json.load(open(run / "ckpt.json"))["step"] == 4


def test_a_snapshot_refuses_a_pair_that_does_not_match(tmp_path):
    run = tmp_path / "run"
    train(recipe_config("ls-c8", "smoke", steps=3000, stop_at=1, ckpt_every=1, device="cpu"), str(run),
          progress=False)
    meta = json.load(open(run / "ckpt.json"))
    (run / "ckpt.json").write_text(json.dumps({**meta, "tensors_sha256": "0" * 64}))
    with pytest.raises(LatentstoreError, match="no consistent checkpoint"):
        snapshot_run(str(run), str(tmp_path / "snap"), tries=2)


def _pt(photo, method, bpp, psnr, msssim):
    return {"photo": photo, "method": method, "setting": "", "bpp": bpp, "psnr": psnr, "msssim": msssim}


def test_equal_rate_gains_interpolate_the_reference_at_each_photos_rate():
    pts = []
    for ph in ("a", "b"):
        pts += [_pt(ph, "JPEG2000", 0.1, 20.0, 0.80), _pt(ph, "JPEG2000", 0.5, 30.0, 0.96)]
        pts += [_pt(ph, "WebP", 0.1, 22.0, 0.85), _pt(ph, "WebP", 0.5, 32.0, 0.97)]
        pts += [_pt(ph, "JPEG", 0.3, 24.0, 0.85), _pt(ph, "JPEG", 0.9, 32.0, 0.97)]
    pts += [_pt("a", "old", 0.2, 22.0, 0.81), _pt("b", "old", 0.2, 23.0, 0.83)]  # J2K at 0.2: 22.5 dB, 0.84
    pts += [_pt("a", "new", 0.4, 28.0, 0.93), _pt("b", "new", 0.4, 27.6, 0.92)]  # J2K at 0.4: 27.5 dB, 0.92
    assert gain_over(pts, "old", "JPEG2000", "psnr")[0] == pytest.approx(0.0)
    assert gain_over(pts, "old", "JPEG2000", "msssim")[0] == pytest.approx(-0.02)
    assert gain_over(pts, "new", "JPEG2000", "msssim") == (pytest.approx(0.005), 2)
    g, n = gain_over(pts, "old", "JPEG", "psnr")  # JPEG starts at 0.3 bpp: it reaches no photo at 0.2
    assert n == 0 and math.isnan(g)
    old, new = codec_row(pts, "old"), codec_row(pts, "new")
    assert better(new, old) and not better(old, new)
    worse_psnr = codec_row(pts[:-2] + [_pt("a", "new", 0.4, 27.0, 0.93), _pt("b", "new", 0.4, 27.0, 0.92)], "new")
    assert not better(worse_psnr, {**old, "psnr_over_JPEG2000": 0.0})  # -0.5 dB over J2K: not better in PSNR
