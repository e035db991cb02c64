"""The CPU decoder of `latentstore.rans3` that rans_v3.decode_batch calls: the C extension _rans3_simd
(AVX-512 / AVX2 / scalar, picked at run time) when it is built, else the numba kernel
(rans3_kernels_cpu.decode_range). The v3 twin of rans_simd.py (v2).

Why a C extension: the numba kernel decodes one lane after another (a symbol's context needs the lane's
own previous symbols, and LLVM does not vectorise the table loads). The extension decodes the lanes of
several samples in lockstep, 8 per AVX-512 register (4 per AVX2 one), finding each symbol in the packed
row of cumulative frequencies without a loop (the design: _rans3_simd.c's header). Measured on 64 samples
of (32, 32, 32) at L = 6 (~1.6 bits a symbol), one thread of a Sapphire Rapids VM: ~1.0-1.2 ns a symbol
with AVX-512, ~2.5 AVX2, ~11 scalar, ~15 numba (v2's SIMD decoder: ~0.7-0.8 on the same symbols). It is
optional (setup.py): an install without a compiler falls back to numba, with identical results.

LATENTSTORE_RANS_ISA picks the path, as for v2 (the same variable: one switch for both decoders), read at
every call:
    auto (default)  the best the CPU runs: avx512, else avx2, else scalar; numba without the extension
    avx512 | avx2 | scalar   that C path (a UsageError if the CPU or the build lacks it)
    numba           the numba kernel, the fallback
Both decoders fill the same (N, 2) err array with the same (code, lane); rans_v3 raises from it."""
from __future__ import annotations

import numpy as np

from ...errors import UsageError
from .rans_simd import CHOICES, ENV, ISA_CODES, _supported, choose_isa  # noqa: F401 (ENV: the switch's name)

try:
    from . import _rans3_simd as _ext
except ImportError:  # not built (no compiler at install time): numba decodes
    _ext = None


def extension_available() -> bool:
    return _ext is not None


def supported_isas() -> list[str]:
    """The C paths this CPU runs, best first ([] without the extension)."""
    return list(_supported(_ext))


def chosen_isa() -> str:
    """What decode_range runs now: 'avx512', 'avx2', 'scalar' or 'numba' (LATENTSTORE_RANS_ISA, as for v2)."""
    return choose_isa(_ext, "_rans3_simd")


def decode_range(data, offsets, packed, L, C, h, w, out, err, i0, i1, isa: str | None = None) -> None:
    """Payloads i0..i1-1 of a packed batch (payload i = data[offsets[i]:offsets[i+1]]; rans_v2.pack_payloads)
    into out[i] ((N, C, h, w) uint8, C-contiguous) and err[i] = (code, lane) ((N, 2) int64; (0, 0) when
    fine), on the chosen path. packed: rans_v3.packed_rows of the tables. The GIL is released inside the
    C decoder, so threads decode in parallel."""
    isa = isa or chosen_isa()
    if isa == "numba":
        from . import rans3_kernels_cpu as kc
        kc.decode_range(data, offsets, packed, L, C, h, w, out.reshape(-1), err, i0, i1)
        return
    if isa not in ISA_CODES:
        raise UsageError(f"rans3 decoder path {isa!r}: expected one of {', '.join(CHOICES[1:])}")
    if _ext is None:
        raise UsageError(f"rans3 decoder path {isa!r} needs the C extension latentstore.codec.entropy._rans3_simd, "
                         "which is not built")
    assert out.dtype == np.uint8 and out.flags.c_contiguous and err.dtype == np.int64 and err.flags.c_contiguous
    _ext.decode_range(np.ascontiguousarray(data, dtype=np.uint8), np.ascontiguousarray(offsets, dtype=np.int64),
                      np.ascontiguousarray(packed, dtype=np.uint64), int(L), int(C), int(h), int(w), out, err,
                      int(i0), int(i1), ISA_CODES[isa])
