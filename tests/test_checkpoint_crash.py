"""Crash-safe codec checkpoints (issue #29): the tensors go under a content-addressed name that ckpt.json names
only once they are durable, so a failure between the two writes leaves the previous checkpoint whole and the run
resumes from it bit for bit; old-layout checkpoints (ckpt.safetensors, a ckpt.json naming no file) still resume,
including the committed one of the programme."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentstore.errors import LatentstoreError
from latentstore_train.checkpoint import (TENSORS, has_checkpoint, load_checkpoint, read_checkpoint,
                                          save_checkpoint, tensors_files, tensors_path)
from latentstore_train.codec import recipe_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    return recipe_config("ls-c8", "smoke", **{"steps": 3000, "ckpt_every": 2, "log_every": 1, "seed": 5,
                                              "device": "cpu", **kw})


def _meta(run):
    with open(os.path.join(run, "ckpt.json")) as f:
        return json.load(f)


def _tensors(run):
    return load_file(tensors_path(run))


def _same(ta, tb):
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def _losses(run):
    with open(os.path.join(run, "log.csv")) as f:
        return [line.split(",")[:3] for line in f.read().splitlines()[1:]]


def test_a_failure_between_the_tensors_and_the_json_resumes_from_the_previous_checkpoint(tmp_path):
    run, straight = str(tmp_path / "run"), str(tmp_path / "straight")
    train(_cfg(stop_at=2), run, progress=False)
    before = _meta(run)
    assert before["step"] == 2 and tensors_files(run) == [before["tensors_file"]]
    # a real OS failure at the JSON's write, after the step-4 tensors are on disk: its temporary name is a folder
    blocker = os.path.join(run, f"ckpt.json.tmp{os.getpid()}")
    os.mkdir(blocker)
    with pytest.raises(LatentstoreError, match="ckpt.json"):
        train(_cfg(stop_at=4), run, progress=False)
    os.rmdir(blocker)
    assert _meta(run) == before  # the commit point still names step 2's tensors, which still exist
    assert len(tensors_files(run)) == 2 and before["tensors_file"] in tensors_files(run)  # + step 4's orphan
    assert has_checkpoint(run) and read_checkpoint(run)[0]["step"] == 2
    train(_cfg(stop_at=6), run, progress=False)
    train(_cfg(stop_at=6), straight, progress=False)
    assert _meta(run)["step"] == 6 and _same(_tensors(run), _tensors(straight))
    assert _losses(run) == _losses(straight) and len(_losses(run)) == 6
    assert tensors_files(run) == [_meta(run)["tensors_file"]]  # the orphan and step 2's file are gone


def test_an_old_layout_checkpoint_resumes_exactly_and_is_converted(tmp_path):
    run, straight = str(tmp_path / "old"), str(tmp_path / "straight")
    train(_cfg(stop_at=2), run, progress=False)
    meta = _meta(run)  # rewrite it as the old code wrote it: ckpt.safetensors, no tensors_file
    os.rename(os.path.join(run, meta.pop("tensors_file")), os.path.join(run, TENSORS))
    with open(os.path.join(run, "ckpt.json"), "w") as f:
        json.dump(meta, f)
    assert has_checkpoint(run) and read_checkpoint(run)[0]["step"] == 2
    train(_cfg(stop_at=4), run, progress=False)
    train(_cfg(stop_at=4), straight, progress=False)
    assert _same(_tensors(run), _tensors(straight)) and _losses(run) == _losses(straight)
    assert tensors_files(run) == [_meta(run)["tensors_file"]] and TENSORS not in os.listdir(run)


OLD_LAYOUT_COMMIT = "c9539a6"  # train/programme/ls-c8 as ckpt.json + ckpt.safetensors, before the content-addressed names


def test_the_committed_programme_checkpoint_loads_and_saves_again_unchanged(tmp_path):
    from latentstore.codec.model import LatentCodec
    from latentstore_train.codec import run_config
    old = tmp_path / "committed"
    old.mkdir()
    for name in ("ckpt.json", "ckpt.safetensors", "config.json"):
        # the last commit of the old layout (later saves renamed the tensors ckpt-<sha12>.safetensors)
        got = subprocess.run(["git", "show", f"{OLD_LAYOUT_COMMIT}:train/programme/ls-c8/{name}"], cwd=REPO,
                             capture_output=True)
        if got.returncode:
            pytest.skip(f"no git history with the programme's old-layout checkpoint ({OLD_LAYOUT_COMMIT})")
        (old / name).write_bytes(got.stdout)
    cfg = run_config(str(old))
    model = LatentCodec(cfg.codec)
    opt, gen = torch.optim.Adam(model.parameters(), lr=cfg.lr), torch.Generator()
    meta = load_checkpoint(str(old), model, opt, gen)
    assert "tensors_file" not in json.loads((old / "ckpt.json").read_text())
    (tmp_path / "new").mkdir()
    save_checkpoint(str(tmp_path / "new"), meta["step"], model, opt, gen, meta["config"], addressed=True)
    new_meta, new = read_checkpoint(str(tmp_path / "new"))
    _, before = read_checkpoint(str(old))
    from latentstore.codec.model import v3_tables_from_v2
    added = new.pop("model/entropy.rans3_tables")  # bitstream v3's tables, younger than this checkpoint: derived
    assert np.array_equal(added.numpy(), v3_tables_from_v2(before["model/entropy.rans_tables"].numpy()))
    assert new_meta["step"] == meta["step"] and _same(new, before)
    assert new_meta["param_groups"] == meta["param_groups"]


def test_an_unreadable_ckpt_json_is_refused_never_trained_over(tmp_path):
    run = tmp_path / "bad"
    train(_cfg(stop_at=2), str(run), progress=False)
    (run / "ckpt.json").write_text("{not json")
    assert has_checkpoint(str(run))
    with pytest.raises(LatentstoreError, match="unreadable checkpoint"):
        train(_cfg(stop_at=4), str(run), progress=False)
    (run / "ckpt.json").write_text(json.dumps({"step": 2, "tensors_file": "../elsewhere.safetensors"}))
    with pytest.raises(LatentstoreError, match="not a checkpoint tensors file name"):
        read_checkpoint(str(run))


def test_force_removes_content_addressed_tensors(tmp_path):
    from latentstore.cli.run_dir import remove_run
    run = tmp_path / "r"
    train(_cfg(stop_at=2), str(run), progress=False)
    (run / "notes.txt").write_text("mine")
    remove_run(str(run))
    assert sorted(os.listdir(run)) == ["notes.txt"]


def test_a_classify_style_checkpoint_is_crash_safe_and_keeps_its_reader_file(tmp_path):
    """reader_link: the tensors are content-addressed like a codec run's, and ckpt.safetensors (what predict,
    serve and a segmentation backbone open) is a hard link of the committed file. A failure at the JSON's write
    leaves the previous checkpoint resumable and ckpt.safetensors whole (the previous weights)."""
    run = str(tmp_path / "cls")
    os.makedirs(run)
    model, gen = torch.nn.Linear(3, 2), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    def step_and_save(step):
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        save_checkpoint(run, step, model, opt, gen, {"model": "toy"}, reader_link=True)
    step_and_save(1)
    first = _meta(run)
    reader = os.path.join(run, TENSORS)
    assert sorted(tensors_files(run)) == sorted([first["tensors_file"], TENSORS])
    assert os.path.samefile(reader, tensors_path(run))
    before = load_file(reader)
    blocker = os.path.join(run, f"ckpt.json.tmp{os.getpid()}")
    os.mkdir(blocker)  # a real OS failure at the JSON's write, the step-2 tensors already on disk
    with pytest.raises(LatentstoreError, match="ckpt.json"):
        step_and_save(2)
    os.rmdir(blocker)
    assert _meta(run) == first and read_checkpoint(run)[0]["step"] == 1
    assert _same(load_file(reader), before)  # the readers' file is still the committed checkpoint's
    step_and_save(3)
    assert sorted(tensors_files(run)) == sorted([_meta(run)["tensors_file"], TENSORS])  # orphan and step 1 gone
    assert os.path.samefile(reader, tensors_path(run)) and not _same(load_file(reader), before)


def test_run_weights_are_read_from_the_committed_file_and_checked(tmp_path):
    """read_model_weights (predict, serve --classifier, joint): the file ckpt.json names, checked against its
    sha256, whatever ckpt.safetensors holds; an exported classifier folder against its config.json's sha256."""
    import hashlib

    from safetensors.torch import save

    from latentstore_train.checkpoint import read_model_weights
    run = str(tmp_path / "cls")
    os.makedirs(run)
    model, gen = torch.nn.Linear(3, 2), torch.Generator().manual_seed(0)
    save_checkpoint(run, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), gen, {}, reader_link=True)
    got = read_model_weights(run)
    assert got.keys() == {"weight", "bias"} and torch.equal(got["weight"], model.weight.detach())
    named = tensors_path(run)
    raw = bytearray(open(named, "rb").read())
    raw[-1] ^= 1
    os.remove(named)  # a flipped bit in the committed file (a new inode: the reader link keeps the good bytes)
    open(named, "wb").write(bytes(raw))
    with pytest.raises(LatentstoreError, match="does not match"):
        read_model_weights(run)
    folder = str(tmp_path / "exported")  # a joint run's classifier/: ckpt.safetensors + config.json, no ckpt.json
    os.makedirs(folder)
    data = save({"model/weight": torch.ones(2, 3)})
    open(os.path.join(folder, TENSORS), "wb").write(data)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"tensors_sha256": hashlib.sha256(data).hexdigest()}, f)
    assert torch.equal(read_model_weights(folder)["weight"], torch.ones(2, 3))
    open(os.path.join(folder, TENSORS), "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(LatentstoreError, match="fails the sha256"):
        read_model_weights(folder)
