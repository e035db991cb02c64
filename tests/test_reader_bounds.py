"""Every reader bounds what it reads (#26): a store whose latent shard or tar, a chunk of its labels, or its codec
file is a FIFO or a link to /dev/zero is refused in one line with exit 1 by `decode`, `open_store` and
`LatentDataset`, instead of hanging or reading forever. Each read runs in a subprocess with a timeout, so a
hang fails the test instead of hanging CI. A store whose seal by `serve` was cut short by a kill is refused in
one line naming `latentstore serve STORE` (the repair)."""
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.errors import StoreError
from latentstore.store import open_store
from latentstore.store.append import SEAL_MARKER, mark_seal
from tests.test_bounds import SPECIALS, special_copy, stores  # noqa: F401  (the module's stores: Zarr and WebDataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_S = 120  # far above a refusal's few seconds (mostly interpreter start-up), so only a hang reaches it
READS = {"shard": "symbols", "shard_fifo": "symbols", "codec": "decode_rgb", "codec_fifo": "decode_rgb",
         "labels_chunk": "symbols"}  # the read that must refuse each special file
WHAT = {**SPECIALS, "codec_fifo": lambda d, k: ("codec.safetensors", "fifo")}  # test_bounds' special files, and one
CASES = [f"{k}-{w}" for k in ("zarr", "wds") for w in READS if (k, w) != ("wds", "labels_chunk")]  # wds: its tar


_API = """
import sys
from latentstore.errors import StoreError
from latentstore.store import open_store
from latentstore.data.dataset_api import LatentDataset
reads = {"symbols": lambda d: open_store(d).symbols(0), "decode_rgb": lambda d: open_store(d).decode_rgb(0),
         "LatentDataset": lambda d: LatentDataset(d)[0]}
for name in sys.argv[2:]:
    try:
        reads[name](sys.argv[1])
        print(name, "RETURNED DATA")
    except StoreError as e:
        print(name, "StoreError", str(e).replace(chr(10), " | "))
"""


def _special(stores, case, tmp_path) -> tuple[str, str]:
    kind, what = case.split("-")
    d = str(tmp_path / kind)
    return d, special_copy(stores[kind], d, kind, WHAT[what])


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("case", CASES)
def test_decode_refuses_a_special_file_in_one_line(stores, case, tmp_path):
    d, rel = _special(stores, case, tmp_path)
    res = _run(["-m", "latentstore.cli", "decode", d, "--out", str(tmp_path / "png"), "--index", "0"])
    lines = [x for x in (res.stdout + res.stderr).splitlines() if x.strip()]
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "not a regular file" in lines[0] and os.path.basename(rel) in lines[0], lines
    assert not os.path.exists(tmp_path / "png" / "000000.png")


@pytest.mark.parametrize("case", CASES)
def test_open_store_and_latent_dataset_refuse_a_special_file(stores, case, tmp_path):
    d, rel = _special(stores, case, tmp_path)
    read = READS[case.split("-")[1]]
    names = [read] + (["LatentDataset"] if read == "symbols" else [])
    res = _run(["-c", _API, d, *names])
    got = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert res.returncode == 0 and set(got) == set(names), res.stdout + res.stderr
    for name in names:
        assert got[name].startswith("StoreError ") and "not a regular file" in got[name], (name, got[name])
        assert os.path.basename(rel) in got[name] and " | " not in got[name], got[name]


def test_the_good_stores_still_read(stores):
    """The checks refuse only what is special: the same reads of the untouched stores return data."""
    for d in stores.values():
        s = open_store(d)
        assert s.symbols(0).ndim == 3 and s.decode_rgb(0).shape == (32, 32, 3)


# ------------------------------------------------------------------ a seal cut short
def _killed_mid_seal(src: str, tmp_path) -> str:
    """A copy of the store with the seal marker left by a process killed after mark_seal, as a kill -9 of
    `latentstore serve` during a seal leaves it."""
    d = str(tmp_path / "cut")
    shutil.copytree(src, d)
    script = ("import os, signal, sys\nfrom latentstore.store.append import mark_seal\n"
              "mark_seal(sys.argv[1])\nos.kill(os.getpid(), signal.SIGKILL)\n")
    os.makedirs(os.path.join(d, os.path.dirname(SEAL_MARKER)), exist_ok=True)
    res = _run(["-c", script, d])
    assert res.returncode == -signal.SIGKILL and os.path.exists(os.path.join(d, SEAL_MARKER)), res.stderr
    return d


@pytest.mark.parametrize("kind", ["zarr", "wds"])
def test_a_store_killed_mid_seal_says_serve_repairs_it(stores, kind, tmp_path):
    d = _killed_mid_seal(stores[kind], tmp_path)
    want = f"{d}: an interrupted seal; run `latentstore serve {d}` once to repair it"
    with pytest.raises(StoreError) as e:
        open_store(d)
    assert str(e.value) == want
    for cmd in ("verify", "info"):
        res = CliRunner().invoke(main, [cmd, d])
        assert res.exit_code == 1, (cmd, res.output)
        assert res.output.strip().splitlines() == [f"error: {want}"], res.output
    os.remove(os.path.join(d, SEAL_MARKER))  # what serve's repair ends with: the store reads again
    assert len(open_store(d)) == len(open_store(stores[kind]))


def test_a_seal_under_way_in_a_live_process_is_waited_for(stores, tmp_path):
    d = str(tmp_path / "live")
    shutil.copytree(stores["zarr"], d)
    os.makedirs(os.path.join(d, os.path.dirname(SEAL_MARKER)), exist_ok=True)
    mark_seal(d)  # this process is alive: a seal under way
    with pytest.raises(StoreError, match=rf"pid {os.getpid()}\) has not finished"):
        open_store(d)  # waited for, then refused
    done = threading.Timer(0.5, os.remove, [os.path.join(d, SEAL_MARKER)])  # the seal finishes while we wait
    done.start()
    try:
        assert len(open_store(d)) == len(open_store(stores["zarr"]))
    finally:
        done.join()
