"""The README's shell examples run as written: every ```sh block, in order, in one folder holding what they name
(photos/train and photos/val class trees, new-photos/, photo.jpg). A block that cannot run here says so on its
first line, `# not run by tests/test_readme.py: REASON`; every other fence is ```python (tests/test_api.py runs
those) or ```text (a synopsis, not a command)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from latentstore.codec.zoo import available_codecs
from tests.store_fixtures import make_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = "# not run by tests/test_readme.py:"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str, str]]:
    return FENCE.findall(open(os.path.join(ROOT, "README.md")).read())


def runnable(blocks) -> list[str]:
    return [body for lang, body in blocks if lang == "sh" and not body.startswith(SKIP)]


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert blocks and {lang for lang, _ in blocks} <= {"sh", "python", "text"}, {lang for lang, _ in blocks}
    for lang, body in blocks:
        if lang == "sh" and body.startswith(SKIP):
            reason = body.splitlines()[0][len(SKIP):].strip()
            assert len(reason) > 10, body  # a reason a reader can check, not a bare marker
    assert sum(lang == "python" for lang, _ in blocks) == 2  # the Python API's, run by tests/test_api.py
    first_hour = runnable(blocks)[0]
    assert [ln.split()[1] for ln in first_hour.splitlines() if ln.startswith("latentstore ")] == \
        ["convert", "convert", "info", "train", "predict"]  # the four commands of "Your own photos"


def _folder(tmp_path) -> str:
    """What the README's runnable blocks name, made of real photos (tests/store_fixtures)."""
    from latentstore.data.imageio import load_image
    from latentstore.data.photos import resize_shorter, skimage_photo_path
    make_tree(str(tmp_path / "photos" / "train"), with_bad=False)
    make_tree(str(tmp_path / "photos" / "val"), with_bad=False)
    os.makedirs(tmp_path / "new-photos")
    for cls in ("cats", "space"):
        src = tmp_path / "photos" / "val" / cls
        shutil.copy(src / sorted(os.listdir(src))[0], tmp_path / "new-photos" / f"{cls}.jpg")
    Image.fromarray(resize_shorter(load_image(skimage_photo_path("coffee")), 96)).save(tmp_path / "photo.jpg")
    return str(tmp_path)


@pytest.mark.skipif("ls-c16" not in available_codecs(), reason="the README uses the shipped ls-c16")
def test_readme_shell_blocks_run_as_written(tmp_path):
    cwd = _folder(tmp_path)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "LATENTSTORE_CACHE": str(tmp_path / "cache")}
    outputs = []
    for body in runnable(readme_blocks()):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"{body}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    first = outputs[0]
    assert "classes        0: cats, 1: nothing_here, 2: space" in first  # info lists the class names
    assert re.search(r"^done: best val top-1 [\d.]+%, top-5 [\d.]+% .* runs/photos/ckpt\.safetensors", first, re.M)
    rows = [ln for ln in first.splitlines() if ln.startswith("new-photos/")]
    assert [ln.split()[0] for ln in rows] == ["new-photos/cats.jpg", "new-photos/space.jpg"]
    with Image.open(tmp_path / "photo-back.png") as im:
        assert im.format == "PNG" and im.size == Image.open(tmp_path / "photo.jpg").size
