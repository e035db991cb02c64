"""The long codec training programme (issue 29): exact resume after a real SIGTERM, a checkpoint pair that does
not belong together refused in one line, a small ckpt.json with the log in CSV, CPU budgets, validation over
steps, the chunk-by-chunk runner, and the corpus manifest."""
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from latentstore_train.checkpoint import tensors_path
from latentstore_train.codec import recipe_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    return recipe_config("ls-c8", "smoke", **{"steps": 3000, "ckpt_every": 1, "log_every": 1, "seed": 5,
                                              "device": "cpu", **kw})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_tensors(a, b):
    ta, tb = load_file(tensors_path(a)), load_file(tensors_path(b))
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and (ta[k] == tb[k]).all() for k in ta)


def test_a_run_killed_by_sigterm_resumes_to_the_same_bits(tmp_path):
    """A real process gets SIGTERM mid-run: it checkpoints and exits; resumed, it reaches the weights, Adam state
    and loss curve of a run never interrupted, bit for bit."""
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "latentstore_train.codec", "--name", "ls-c8", "--recipe", "smoke", "--steps", "3000",
           "--ckpt-every", "1", "--log-every", "1", "--seed", "5", "--device", "cpu", "--quiet", "--out", str(run)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.time() + 180
        while not (run / "ckpt.json").exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err.decode()[-2000:]
    r = json.loads(out)
    assert r["stopped_by"] == "signal" and 0 < r["steps"] < 3000
    stopped = json.load(open(run / "ckpt.json"))["step"]
    assert stopped == r["steps"]
    end = stopped + 3
    train(_cfg(stop_at=end), str(run), progress=False)
    train(_cfg(stop_at=end), str(tmp_path / "straight"), progress=False)
    assert _same_tensors(run, tmp_path / "straight")
    a, b = _rows(run / "log.csv"), _rows(tmp_path / "straight" / "log.csv")
    assert len(a) == end and [x["loss"] for x in a] == [x["loss"] for x in b]


def test_a_mismatched_checkpoint_pair_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from latentstore.cli import main
    from latentstore.errors import LatentstoreError
    train(_cfg(stop_at=2, ckpt_every=2), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=4, ckpt_every=2), str(tmp_path / "b"), progress=False)
    meta = json.load(open(tmp_path / "a" / "ckpt.json"))
    data = open(tensors_path(tmp_path / "a"), "rb").read()
    assert meta["tensors_sha256"] == hashlib.sha256(data).hexdigest()
    shutil.copy(tensors_path(tmp_path / "b"), tensors_path(tmp_path / "a"))  # step 4's tensors
    with pytest.raises(LatentstoreError, match="does not match"):
        train(_cfg(stop_at=6), str(tmp_path / "a"), progress=False)
    res = CliRunner().invoke(main, ["train", "codec", "--name", "ls-c8", "--recipe", "smoke", "--steps", "3000",
                                    "--seed", "5", "--device", "cpu", "--quiet", "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "sha256" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert json.load(open(tmp_path / "a" / "ckpt.json"))["step"] == 2  # nothing was overwritten


def test_ckpt_json_stays_small_and_the_log_is_aggregated_in_csv(tmp_path):
    train(_cfg(stop_at=6), str(tmp_path / "every"), progress=False)
    train(_cfg(stop_at=6, log_every=3, ckpt_every=4), str(tmp_path / "agg"), progress=False)
    meta = json.load(open(tmp_path / "agg" / "ckpt.json"))
    assert "log" not in meta and os.path.getsize(tmp_path / "agg" / "ckpt.json") < 10_000
    every, agg = _rows(tmp_path / "every" / "log.csv"), _rows(tmp_path / "agg" / "log.csv")
    assert [int(r["step"]) for r in agg] == [3, 6]
    assert float(agg[1]["loss"]) == pytest.approx(sum(float(r["loss"]) for r in every[3:6]) / 3, rel=1e-12)
    with open(tmp_path / "agg" / "log.csv", "a") as f:  # a row written after the checkpoint, then a kill
        f.write("9,1,1,1,1,1,1,1,1,1,1\n")
    train(_cfg(stop_at=9, log_every=3), str(tmp_path / "agg"), progress=False)
    assert [int(r["step"]) for r in _rows(tmp_path / "agg" / "log.csv")] == [3, 6, 9]


def test_a_cpu_budget_stops_after_a_step_checkpointed(tmp_path):
    r = train(_cfg(max_cpu_seconds=1e-9, ckpt_every=1000), str(tmp_path / "r"), progress=False)
    assert r["steps"] == 1 and r["stopped_by"] == "max_cpu_seconds" and not r["finished"]
    meta = json.load(open(tmp_path / "r" / "ckpt.json"))
    assert meta["step"] == 1 and meta["cpu_seconds"] > 0


def test_validation_over_steps_writes_real_rates_and_drops_rows_past_the_checkpoint(tmp_path):
    res = tmp_path / "results"
    cfg = _cfg(stop_at=2, val_cpu_minutes=1e-9, results_dir=str(res), ckpt_every=1)
    train(cfg, str(tmp_path / "r"), progress=False)
    rows = _rows(tmp_path / "r" / "val.csv")
    assert [int(r["step"]) for r in rows] == [1, 2] and _rows(res / "ls-c8-val.csv") == rows
    for r in rows:
        assert 0 < float(r["bpp"]) and 0 < float(r["msssim"]) <= 1 and float(r["psnr"]) > 5
    assert (res / "ls-c8-val.png").exists()
    with open(res / "ls-c8-val.csv", "a") as f:
        f.write("7,0,0,1,1,1,1,1\n")
    train(dataclasses.replace(cfg, stop_at=3), str(tmp_path / "r"), progress=False)
    assert [int(r["step"]) for r in _rows(res / "ls-c8-val.csv")] == [1, 2, 3]


def test_recipes_take_per_point_values_and_rate_scale_moves_the_hinge():
    import torch

    from latentstore_train.codec import RECIPES, compression_loss
    long = RECIPES["cpu-long"]["rate_scale"]
    for name in ("ls-c8", "ls-c16", "ls-c32", "ls-c16-msssim"):
        assert recipe_config(name, "cpu-long").rate_scale == long[name.replace("-msssim", "")]
    out = {"x_hat": torch.zeros(1, 3, 8, 8), "entropy_soft": torch.tensor(1.2)}
    x = torch.zeros(1, 3, 8, 8)
    assert compression_loss(out, x, 600.0, 1.0)["rate_hinge"] > 0 == compression_loss(out, x, 600.0, 1.3)["rate_hinge"]


def test_the_programme_resumes_each_point_chunk_by_chunk_and_reports(tmp_path):
    from latentstore_train.codec_programme import run_programme
    root = tmp_path / "programme"
    done = run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=4, results_dir=str(tmp_path / "res"),
                         points=("ls-c8", "ls-c16"))
    assert len(done) == 4 and [d["name"] for d in done[:2]] == ["ls-c8", "ls-c16"]  # not started: in order
    for name in ("ls-c8", "ls-c16"):  # each chunk resumed where that point's last one stopped
        steps = [d["steps"] for d in done if d["name"] == name]
        assert steps == list(range(1, len(steps) + 1))
    n8 = sum(d["name"] == "ls-c8" for d in done)
    readme = (root / "README.md").read_text()
    assert f"| ls-c8 | {n8} | 8 |" in readme and "codec_programme --recipe smoke" in readme
    manifest = json.load(open(tmp_path / "res" / "corpus.json"))
    assert manifest["photos"] and manifest["excluded"]


def test_a_point_behind_gets_every_chunk_until_it_catches_up(tmp_path):
    from latentstore_train.codec_programme import run_programme
    root = tmp_path / "programme"
    run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=2, results_dir="", points=("ls-c8", "ls-c16"))
    meta_file = root / "ls-c16" / "ckpt.json"  # ls-c16 now counts an hour of training CPU, ls-c8 a moment
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "cpu_seconds": 3600.0}))
    done = run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=3, results_dir="",
                         points=("ls-c8", "ls-c16"))
    assert [(d["name"], d["steps"]) for d in done] == [("ls-c8", 2), ("ls-c8", 3), ("ls-c8", 4)]


def test_the_points_sort_by_training_cpu_least_first(tmp_path):
    from latentstore_train.codec_programme import least_trained_first
    for name, cpu_s in (("ls-c8", 5000.0), ("ls-c16", 6500.0), ("ls-c32", 3300.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.json").write_text(json.dumps({"step": 1, "config": {"steps": 9},
                                                               "cpu_seconds": cpu_s}))
    assert least_trained_first(str(tmp_path), ("ls-c8", "ls-c16", "ls-c32")) == ["ls-c32", "ls-c8", "ls-c16"]
    assert least_trained_first(str(tmp_path), ("ls-c16", "ls-new")) == ["ls-new", "ls-c16"]  # not started: first


def test_a_point_another_worker_holds_is_skipped(tmp_path):
    from latentstore_train.codec_programme import claim, run_programme
    root = tmp_path / "programme"
    with claim(str(root / "ls-c8")) as mine:
        assert mine
        with claim(str(root / "ls-c8")) as again:  # a second holder (flock: per open file) is refused
            assert not again
        done = run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=1, results_dir="",
                             points=("ls-c8", "ls-c16"))
    assert [d["name"] for d in done] == ["ls-c16"] and not (root / "ls-c8" / "ckpt.json").exists()


def test_the_corpus_manifest_keeps_validation_fixed_and_hashes_every_file():
    from latentstore.data.photos import VALIDATION
    from latentstore_train.codec_data import corpus_manifest
    assert VALIDATION == {"skimage:coffee", "skimage:rocket", "sklearn:flower", "matplotlib:grace_hopper",
                          "mate:Garden", "mate:Storm", "plasma:Kite", "plasma:Path", "opencv:fruits", "opencv:baboon",
                          "opencv:home", "opencv:butterfly"}  # the fixed split: more training photos never move it
    m = corpus_manifest()
    for r in m["photos"]:
        assert (r["split"] == "val") == (r["name"] in VALIDATION), r["name"]
        assert hashlib.sha256(open(r["path"], "rb").read()).hexdigest() == r["sha256"]
    assert len({r["sha256"] for r in m["photos"]}) == len(m["photos"])  # no file twice


def test_the_codecs_table_puts_the_delivered_rate_beside_the_papers():
    from latentstore.eval.validation import format_codec_rows
    row = {"name": "ls-c16", "C": 16, "L": 6, "bpp": 0.231, "target_bpp": 0.330, "psnr": 26.5, "msssim": 0.91,
           "n_photos": 12, "source": "shipped", "measured": "2026-12-06"}
    head, line, note = format_codec_rows([row])
    assert head.split()[3:6] == ["bpp", "paper", "off"] and line.split()[3:6] == ["0.2310", "0.330", "-30%"]
    assert "delivered" in note


def test_the_last_hour_trend_is_the_least_squares_gain_of_the_rows_in_that_hour():
    from latentstore_train.codec_programme import last_hour_trend
    rows = [{"cpu_hours": str(h), "msssim": str(0.90 + 0.01 * h), "bpp": str(0.30 - 0.002 * h)}
            for h in (0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0)]
    rows[3]["msssim"] = str(0.9125 + 0.003)  # one noisy row: the slope barely moves
    t = last_hour_trend(rows)
    assert t["rows"] == 5 and abs(t["msssim"] - 0.01) < 0.002 and abs(t["bpp"] + 0.002) < 1e-9
    assert last_hour_trend(rows[:2]) == {}  # too few rows to call a trend
    assert last_hour_trend([{**r, "cpu_hours": str(2.0 + i * 0.05)} for i, r in enumerate(rows[:3])]) == {}


def test_frozen_centres_stop_moving_from_their_step_and_not_before(tmp_path):
    def centres(run):
        return load_file(tensors_path(str(run)))["model/quantizer.centres"]
    train(_cfg(stop_at=2, ckpt_every=1), str(tmp_path / "a"), progress=False)
    at2 = centres(tmp_path / "a")
    train(_cfg(stop_at=4, ckpt_every=1, freeze_centres_at=2), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=4, ckpt_every=1), str(tmp_path / "b"), progress=False)
    assert (centres(tmp_path / "a") == at2).all()  # steps 3 and 4 left them where step 2 did
    assert not (centres(tmp_path / "b") == at2).all()  # unfrozen, the same steps move them


def test_a_sigma_hold_keeps_sigma_at_its_step_value_and_a_run_resumed_with_it_logs_that_sigma(tmp_path):
    from latentstore_train.codec import sigma_at
    cfg = _cfg(steps=100)
    held = dataclasses.replace(cfg, sigma_hold_from=40)
    assert [sigma_at(held, s) for s in (0, 39, 40)] == [sigma_at(cfg, s) for s in (0, 39, 40)]
    assert sigma_at(held, 41) == sigma_at(held, 99) == sigma_at(cfg, 40) < sigma_at(cfg, 41)
    train(_cfg(steps=8, stop_at=2), str(tmp_path / "r"), progress=False)
    train(_cfg(steps=8, stop_at=5, sigma_hold_from=3), str(tmp_path / "r"), progress=False)
    # row k: step k, trained at sigma_at(k - 1); held from step 3 on, the rows of steps 4 and 5 agree
    sigmas = [float(r["sigma"]) for r in _rows(tmp_path / "r" / "log.csv")]
    assert sigmas[0] < sigmas[1] < sigmas[2] < sigmas[3] == sigmas[4]


def test_a_field_the_checkpoint_predates_counts_as_its_default_when_a_resume_compares_recipes(tmp_path):
    run = tmp_path / "r"
    train(_cfg(stop_at=2, val_cpu_minutes=1e-9, results_dir=str(tmp_path / "res")), str(run), progress=False)
    meta = json.loads((run / "ckpt.json").read_text())
    del meta["config"]["sigma_hold_from"]  # as a checkpoint written before the field existed
    (run / "ckpt.json").write_text(json.dumps(meta))
    train(_cfg(stop_at=3, val_cpu_minutes=1e-9, results_dir=str(tmp_path / "res"), sigma_hold_from=2), str(run),
          progress=False)
    assert [r["event"] for r in _rows(run / "events.csv")] == ["sigma_hold_from 0 -> 2"]


def test_a_resume_with_another_recipe_is_recorded_at_its_step_beside_the_curves_and_only_once(tmp_path):
    from latentstore_train.codec_progress import merge_events, plot_val
    res, run = tmp_path / "results", tmp_path / "r"
    cfg = _cfg(stop_at=2, val_cpu_minutes=1e-9, results_dir=str(res))
    train(cfg, str(run), progress=False)
    assert not (run / "events.csv").exists()  # a fresh run has nothing to mark
    train(dataclasses.replace(cfg, stop_at=3, rate_scale=1.3, ema_decay=0.9), str(run), progress=False)
    rows = _rows(res / "ls-c8-events.csv")
    assert [(r["step"], r["event"]) for r in rows] == [("2", "rate_scale 1.0 -> 1.3"), ("2", "ema_decay 0.0 -> 0.9")]
    assert _rows(run / "events.csv") == rows and float(rows[0]["cpu_hours"]) > 0
    train(dataclasses.replace(cfg, stop_at=4, rate_scale=1.3, ema_decay=0.9), str(run), progress=False)
    assert _rows(res / "ls-c8-events.csv") == rows  # the checkpoint holds the new recipe now: nothing new
    assert merge_events(rows, "step") == [(2.0, "step 2: rate_scale 1.0 -> 1.3; ema_decay 0.0 -> 0.9")]
    (res / "ls-c8-val.png").unlink()
    plot_val(str(res / "ls-c8-val.csv"), str(res / "ls-c8-val.png"), "ls-c8")
    assert (res / "ls-c8-val.png").stat().st_size > 0


def test_events_of_a_killed_resume_are_not_doubled_and_rows_past_the_resume_are_dropped(tmp_path):
    from latentstore_train.codec_progress import record_events
    path = str(tmp_path / "events.csv")
    record_events([path], 5, 0.1, ["rate_scale 1.0 -> 1.3"])
    record_events([path], 9, 0.2, ["lr 0.0003 -> 0.0001"])
    record_events([path], 5, 0.1, ["rate_scale 1.0 -> 1.3"])  # killed after step 9's event, resumed at 5 again
    assert [(r["step"], r["event"]) for r in _rows(path)] == [("5", "rate_scale 1.0 -> 1.3")]


def test_a_point_with_a_hold_file_is_left_alone_until_the_file_goes(tmp_path):
    from latentstore_train.codec_programme import run_programme
    root = tmp_path / "programme"
    run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=2, results_dir="", points=("ls-c8", "ls-c16"))
    (root / "ls-c8" / "HOLD").write_text("it degrades past step 136k\n")
    done = run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=2, results_dir="",
                         points=("ls-c8", "ls-c16"))
    assert [d["name"] for d in done] == ["ls-c16", "ls-c16"]
    assert "**ls-c8 is held** (train/programme/ls-c8/HOLD): it degrades past" in (root / "README.md").read_text()
    (root / "ls-c8" / "HOLD").unlink()
    done = run_programme(str(root), "smoke", chunk_cpu_minutes=1e-9, chunks=1, results_dir="",
                         points=("ls-c8", "ls-c16"))
    assert [(d["name"], d["steps"]) for d in done] == [("ls-c8", 2)]


def test_a_cooldown_takes_lr_from_its_scheduled_value_down_to_a_hundredth_and_a_resume_records_it(tmp_path):
    from latentstore_train.codec import lr_at
    cfg = _cfg(steps=1000, warmup=10)
    cool = dataclasses.replace(cfg, cooldown_from=400, cooldown_steps=100)
    assert [lr_at(cool, s) for s in (0, 399, 400)] == [lr_at(cfg, s) for s in (0, 399, 400)]  # continuous
    assert lr_at(cool, 450) == pytest.approx((lr_at(cfg, 400) + cfg.lr / 100) / 2)
    assert lr_at(cool, 500) == lr_at(cool, 900) == pytest.approx(cfg.lr / 100)
    assert lr_at(cool, 500) < lr_at(cfg, 500)
    run, res = tmp_path / "r", tmp_path / "res"
    train(_cfg(steps=8, stop_at=2, results_dir=str(res)), str(run), progress=False)
    train(_cfg(steps=8, stop_at=5, cooldown_from=2, cooldown_steps=2, results_dir=str(res)), str(run), progress=False)
    assert [r["event"] for r in _rows(run / "events.csv")] == ["cooldown_from 0 -> 2", "cooldown_steps 10000 -> 2"]
    lrs = [float(r["lr"]) for r in _rows(run / "log.csv")]  # row k trained at lr_at(k - 1)
    assert lrs[3] < lrs[2] and lrs[4] == pytest.approx(cfg.lr / 100)
