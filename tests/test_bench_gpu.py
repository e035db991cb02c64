"""`make bench-gpu` (benchmarks/gpu.py): its dry run on the CPU writes a complete report; without a GPU the real
run is refused in one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = {"kernels", "step", "convert", "encoder", "loader", "train"}


def test_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--work", str(tmp_path / "work"),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    (md,) = [f for f in os.listdir(out) if f.startswith("gpu-") and f.endswith(".md")]
    doc = json.load(open(out / md.replace(".md", ".json")))
    assert doc["gpu"] and doc["date"] in md and doc["commit"] and doc["dry_run"] is True
    assert set(doc["sections"]) == SECTIONS
    for name, r in doc["sections"].items():
        assert "error" not in r and r["seconds"] > 0 and r["lines"], name
    cv = doc["sections"]["convert"]
    assert cv["stored"] == doc["images"] == 12 and cv["ips"] > 0 and cv["dali_reader_ips"] > 0
    # the GPU path's coder (interpreted) twice, and the CLI (numba): one store, byte for byte
    assert cv["same_bytes"] and cv["cli_same_bytes"]
    assert [m["inputs"] for m in cv["memory"]] == [6, 12]
    assert {r["kernel"] for r in doc["sections"]["kernels"]["rows"] if r["section"] == "kernels"} == \
        {"forward", "backward", "conversion"}
    assert doc["sections"]["train"]["cresnet51_latents"] > 0 and doc["sections"]["train"]["resnet50_jpeg_dali"] > 0
    assert set(doc["sections"]["loader"]) >= {"latents_cpu_decode", "latents_gpu_decode"}
    assert len(doc["targets"]) == 5
    text = open(out / md).read()
    assert "DRY RUN" in text and all(f"## {s} (" in text for s in SECTIONS) and "## Targets (issue #11)" in text


def test_without_a_gpu_it_is_refused_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = subprocess.run([sys.executable, "benchmarks/gpu.py", "--work", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "no CUDA GPU" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not os.listdir(tmp_path)
