"""The weights EMA of codec training (train/ema.py): resumed exactly, measured by validation, installed by an
export, and never left in the raw weights."""
import torch
from safetensors.torch import load_file

from latentstore_train.checkpoint import tensors_path
from latentstore_train.codec import export_run, recipe_config, train
from latentstore_train.ema import WeightEMA


def _cfg(**kw):
    return recipe_config("ls-c8", "smoke", **{"steps": 3000, "ckpt_every": 1, "log_every": 1, "seed": 5,
                                              "device": "cpu", "ema_decay": 0.5, **kw})


def test_an_ema_run_stopped_and_resumed_reaches_the_same_bits(tmp_path):
    train(_cfg(stop_at=2), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=4), str(tmp_path / "a"), progress=False)
    train(_cfg(stop_at=4), str(tmp_path / "b"), progress=False)
    a, b = load_file(tensors_path(str(tmp_path / "a"))), load_file(tensors_path(str(tmp_path / "b")))
    assert any(k.startswith("ema/") for k in a) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    k = "ema/quantizer.centres"
    assert not torch.equal(a[k], a["model/quantizer.centres"])  # the average lags the weights


def test_an_export_installs_the_averaged_weights(tmp_path):
    run = tmp_path / "run"
    train(_cfg(stop_at=3), str(run), progress=False)
    ckpt = load_file(tensors_path(str(run)))
    export_run(str(run), str(tmp_path / "c.safetensors"))
    codec = load_file(str(tmp_path / "c.safetensors"))
    assert torch.equal(codec["quantizer.centres"], ckpt["ema/quantizer.centres"])
    assert not torch.equal(codec["quantizer.centres"], ckpt["model/quantizer.centres"])


def test_applied_swaps_the_average_in_and_the_raw_weights_back():
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, 0.9)
    raw = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # shadow = raw + 0.1
    with ema.applied(model):
        assert torch.allclose(model.weight, raw + 0.1)
    assert torch.allclose(model.weight, raw + 1.0)
