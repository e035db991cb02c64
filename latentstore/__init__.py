"""latentstore: image datasets stored as learned, entropy-coded latents, and models trained on them.

    import latentstore as ls
    codec = ls.load_codec("ls-c16")
    data = codec.compress(img)                 # one (H, W, 3) uint8 array or PIL image -> bytes
    rgb = ls.decompress(data)                  # bytes -> (H, W, 3) uint8 (the codec named in the header)
    ls.convert("photos/", "photos.zarr", codec="ls-c16", size=256)
    ds = ls.LatentDataset("photos.zarr")       # ds[i] -> (latent, label), torchvision style
    store = ls.open_store("photos.zarr")       # symbols, labels, pixels of any sample

The names are imported on first use (module __getattr__), so `import latentstore` stays light: it
loads neither torch nor zarr until one of them is asked for.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute): the whole Python API, one line each
_EXPORTS = {
    "load_codec": ("latentstore.codec.zoo", "load_codec"),
    "available_codecs": ("latentstore.codec.zoo", "available_codecs"),
    "LatentCodec": ("latentstore.codec.model", "LatentCodec"),
    "compress": ("latentstore.codec.api", "compress"),
    "decompress": ("latentstore.codec.api", "decompress"),
    "open_store": ("latentstore.store.reader", "open_store"),
    "LatentStore": ("latentstore.store.reader", "LatentStore"),
    "LatentDataset": ("latentstore.data.dataset_api", "LatentDataset"),
    "load_image": ("latentstore.data.imageio", "load_image"),
    "build_model": ("latentstore.models.resnet", "build"),  # ResNets on pixels, cResNets on latents, by name
    "LatentstoreError": ("latentstore.errors", "LatentstoreError"),
    "UsageError": ("latentstore.errors", "UsageError"),
}

__all__ = ["__version__", "convert", *_EXPORTS]


class _ConvertEntry:
    """`latentstore.convert` is two things: the function `ls.convert(src, dst, ...)` and the subpackage
    `latentstore.convert` (the conversion pipeline). Python's import system binds a subpackage as an
    attribute of its parent, which would replace the function with the module the first time anything
    imports `latentstore.convert.pipeline`; so the attribute is this object, which calls the function
    and hands every attribute lookup (`latentstore.convert.pipeline`, mock.patch paths) to the subpackage."""

    def __call__(self, src, dst, **options):
        from .data.dataset_api import convert as _convert
        return _convert(src, dst, **options)

    def __getattr__(self, name: str):
        return getattr(importlib.import_module("latentstore.convert"), name)

    def __repr__(self) -> str:
        return "<function latentstore.convert(src, dst, **options) and package latentstore.convert>"

    @property
    def __doc__(self):  # help(ls.convert) shows the function's documentation
        from .data.dataset_api import convert as _convert
        return _convert.__doc__


convert = _ConvertEntry()


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name == "convert" and isinstance(value, types.ModuleType):
            return  # the import system binding the subpackage: _ConvertEntry already forwards to it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'latentstore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(__all__)
