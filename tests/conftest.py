import os


def _has_cuda() -> bool:
    try:
        import torch  # importing torch does not import triton; only the kernels' modules do
        return torch.cuda.is_available()
    except Exception:
        return False


# Plain `pytest` runs every test, as `make test` does: without a GPU the Triton kernels run in
# Triton's interpreter, which triton reads when a kernel module is imported, so it is set here,
# before any test module (or latentstore_kernels' fused modules) is imported.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from latentstore.codec.model import CodecConfig, LatentCodec  # noqa: E402
from latentstore.codec.zoo import load_codec_file, save_codec
from latentstore.data.photos import resize_shorter, skimage_photo_path
from latentstore.data.imageio import load_image


def make_codec_file(path: str, C: int = 8, N: int = 16, name: str = "test-c8", seed: int = 0) -> str:
    """A real (untrained, seeded) codec with frequencies frozen from a real photo's symbols."""
    torch.manual_seed(seed)
    model = LatentCodec(CodecConfig(name=name, C=C, N=N, target_bpp=0.3)).eval()
    rgb = resize_shorter(load_image(skimage_photo_path("astronaut")), 128)
    with torch.no_grad():
        hist = model.symbols(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255)["hard_hist"].numpy()
    model.update(hist, floor_fraction=1e-2)
    save_codec(model, path, {"note": "test codec"})
    return path


@pytest.fixture(scope="session")
def codec_path(tmp_path_factory):
    return make_codec_file(str(tmp_path_factory.mktemp("codec") / "test-c8.safetensors"))


@pytest.fixture(scope="session")
def codec(codec_path):
    return load_codec_file(codec_path)


@pytest.fixture(scope="session")
def photo():
    """A real photo (scikit-image's astronaut), 96x96 after downscaling, cropped to an odd size."""
    return np.ascontiguousarray(resize_shorter(load_image(skimage_photo_path("astronaut")), 96)[:93, :85])
