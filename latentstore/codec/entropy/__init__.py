"""Entropy coders, keyed by id (see registry.py). Importing this package registers the built-in ones."""
from . import ans_v1  # noqa: F401  (registers latentstore.ans, bitstream v1)
from . import rans_v2  # noqa: F401  (registers latentstore.rans, bitstream v2)
from . import rans_v3  # noqa: F401  (registers latentstore.rans3, bitstream v3)
from .registry import EntropyCoder, coder_for_version, coder_ids, get_coder, register  # noqa: F401

