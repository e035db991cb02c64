"""The single-file CLI, in-process: round trips, and every bad input ends in one line and a non-zero exit."""
import pytest
from click.testing import CliRunner
from PIL import Image

from latentstore.cli import main
from tests.badfiles import make_bad_files


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(str(tmp_path_factory.mktemp("bad")))


def _one_line_error(res):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    err = res.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), res.output


def test_compress_decompress_round_trip(codec_path, tmp_path):
    from tests.badfiles import base_photo
    rgb = base_photo()[:45, :61]
    Image.fromarray(rgb).save(tmp_path / "in.png")
    r = CliRunner()
    res = r.invoke(main, ["compress", str(tmp_path / "in.png"), str(tmp_path / "x.lsb"), "--codec", codec_path])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["decompress", str(tmp_path / "x.lsb"), str(tmp_path / "out.png"), "--codec", codec_path])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "out.png").size == (61, 45)


@pytest.mark.parametrize("name", ["truncated.jpg", "not_an_image.jpg", "empty.png", "tiny_3x3.png", "huge.png",
                                  "cmyk.jpg", "grey.jpg", "rgba.png", "palette.png", "sixteen_bit.png",
                                  "exif_rotated.jpg"])
def test_bad_and_awkward_inputs(bad, name, codec_path, tmp_path):
    path, should_work = bad[name]
    res = CliRunner().invoke(main, ["compress", path, str(tmp_path / "o.lsb"), "--codec", codec_path])
    if should_work:
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(main, ["decompress", str(tmp_path / "o.lsb"), str(tmp_path / "o.png"), "--codec", codec_path])
        assert res.exit_code == 0, res.output
        w, h = Image.open(tmp_path / "o.png").size
        if name == "exif_rotated.jpg":
            assert (w, h) == (Image.open(path).height, Image.open(path).width)  # rotated as a viewer shows it
        else:
            assert (w, h) == Image.open(path).size
    else:
        _one_line_error(res)


def test_bad_arguments(codec_path, tmp_path, bad):
    r = CliRunner()
    res = r.invoke(main, ["compress", str(tmp_path / "missing.png"), str(tmp_path / "o"), "--codec", codec_path])
    _one_line_error(res)
    res = r.invoke(main, ["compress", bad["grey.jpg"][0], str(tmp_path / "o"), "--codec", "no-such-codec"])
    _one_line_error(res)
    assert res.exit_code == 2
    open(tmp_path / "junk.lsb", "wb").write(b"LSB1" + b"\0" * 40)
    res = r.invoke(main, ["decompress", str(tmp_path / "junk.lsb"), str(tmp_path / "o.png"), "--codec", codec_path])
    _one_line_error(res)
