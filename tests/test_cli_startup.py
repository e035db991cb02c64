"""The CLI starts light: `latentstore --help`, `upload --help` and `upload` itself import neither torch nor the
training code (their options are built when a training command is first used, see cli/common.py)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from latentstore.cli import main
from latentstore.cli.common import LazyOptionsCommand

HEAVY = ("torch", "latentstore_train", "zarr")

# runs `main(ARGS)` in a fresh interpreter, then prints which heavy modules it imported
_PROBE = """
import json, sys
from latentstore.cli import main
try:
    main(json.loads(sys.argv[1]), standalone_mode=False)
except SystemExit:
    pass
print("LOADED=" + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def loaded_modules(args: list[str], heavy=HEAVY) -> list[str]:
    code = _PROBE.format(heavy=repr(tuple(heavy)))
    r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=120)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("LOADED=")]
    assert line, f"probe failed: {r.stdout[-500:]} {r.stderr[-2000:]}"
    return json.loads(line[0][len("LOADED="):])


def closed_port() -> int:
    with socket.socket() as s:  # a port that was just free on 127.0.0.1: nothing listens on it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_and_upload_help_import_no_torch():
    assert loaded_modules(["--help"], HEAVY + ("numpy",)) == []
    assert loaded_modules(["upload", "--help"], HEAVY + ("numpy",)) == []
    assert loaded_modules(["train", "--help"], HEAVY) == []  # lists the training commands without building them


def test_upload_run_imports_no_torch(tmp_path):
    from latentstore.data.photos import skimage_photo_path
    src = tmp_path / "src"
    src.mkdir()
    (src / "chelsea.png").write_bytes(open(skimage_photo_path("chelsea"), "rb").read())
    args = ["upload", str(src), "--url", f"http://127.0.0.1:{closed_port()}", "--retries", "0", "--timeout", "5",
            "--quiet"]
    assert loaded_modules(args) == []


def test_the_probe_sees_torch_when_a_training_command_is_resolved():
    """The probe can fail: a training command's --help builds its options from the torch-importing config."""
    assert "torch" in loaded_modules(["train", "classify", "--help"])


def walk(cmd: click.Command, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from walk(cmd.get_command(ctx, name), (*path, name))


def test_every_command_has_real_parameters():
    lazy = []
    for path, cmd in walk(main):
        assert all(isinstance(p, click.Parameter) for p in cmd.params), path  # no placeholder left behind
        if isinstance(cmd, LazyOptionsCommand):
            lazy.append(" ".join(path))
    assert set(lazy) == {"train classify", "train codec", "train joint", "train seg", "datasets scenes"}


def choices(path: list[str], option: str) -> list[str]:
    cmd = main
    for name in path:
        cmd = cmd.get_command(click.Context(cmd), name)
    (param,) = [p for p in cmd.params if option in p.opts]
    return list(param.type.choices)


def test_choice_lists_match_the_modules_they_name():
    from latentstore.models.deeplab import SEG_ARCHS
    from latentstore.models.resnet import ARCHS
    from latentstore_train.codec import RECIPES
    assert sorted(choices(["train", "codec"], "--recipe")) == sorted(RECIPES)  # written out in train_cmds: light
    assert choices(["train", "classify"], "--model") == list(ARCHS)
    assert choices(["train", "seg"], "--model") == list(SEG_ARCHS)


def test_deferred_options_parse_like_eager_ones():
    r = CliRunner().invoke(main, ["train", "classify", "--out", "x", "--model", "no-such-net"])
    assert r.exit_code == 2 and "no-such-net" in r.output
    r = CliRunner().invoke(main, ["datasets", "scenes", "--help"])
    assert r.exit_code == 0 and "--seed" in r.output


@pytest.mark.parametrize("args", [["--help"], ["upload", "--help"]])
def test_light_commands_still_work_in_process(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "Usage:" in r.output
