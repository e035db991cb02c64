"""The CPU decoder of `latentstore.rans` that rans_v2.decode_batch calls: the C extension _rans_simd
(AVX-512 / AVX2 / scalar, picked at run time) when it is built, else the numba kernel.

Why a C extension: the numba kernel stays scalar (LLVM does not turn its table loads into gathers;
eight lanes written out by hand are as far as it goes, ~3-4 ns a symbol). The extension decodes 16
lanes per AVX-512 register (8 per AVX2 one), several samples' lanes at once, ~0.8-1 ns a symbol on
the shipped codecs (benchmarks/rans.py --decoders; the design: _rans_simd.c's header). It is
optional (setup.py): an install without a compiler falls back to numba, with identical results.

LATENTSTORE_RANS_ISA picks the path, read at every call (tests force each in turn):
    auto (default)  the best the CPU runs: avx512, else avx2, else scalar; numba without the extension
    avx512 | avx2 | scalar   that C path (an error if the CPU or the build lacks it)
    numba           the numba kernel (rans_kernels_cpu.decode_range), the reference-checked fallback
Both decoders fill the same (N, 2) err array with the same (code, lane); rans_v2 raises from it."""
from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

from ...errors import UsageError
from . import rans_kernels_cpu as kc

try:
    from . import _rans_simd as _ext
except ImportError:  # not built (no compiler at install time): numba decodes
    _ext = None

ENV = "LATENTSTORE_RANS_ISA"
ISA_CODES = {"scalar": 0, "avx2": 1, "avx512": 2}  # the extension's codes
CHOICES = ("auto", "avx512", "avx2", "scalar", "numba")
_MAX_DATA = (1 << 31) - 64  # the extension keeps lane offsets in 32 bits


def extension_available() -> bool:
    return _ext is not None


def supported_isas() -> list[str]:
    """The C paths this CPU runs, best first ([] without the extension)."""
    return list(_supported(_ext))


@lru_cache(maxsize=4)
def _supported(ext) -> tuple[str, ...]:  # cpuid once per process (decode_batch asks on every call)
    return () if ext is None else tuple(name for name in ("avx512", "avx2", "scalar") if ext.supported(ISA_CODES[name]))


def chosen_isa() -> str:
    """What decode_range runs now: 'avx512', 'avx2', 'scalar' or 'numba' (from LATENTSTORE_RANS_ISA)."""
    return choose_isa(_ext, "_rans_simd")


def choose_isa(ext, ext_name: str) -> str:
    """LATENTSTORE_RANS_ISA read now, for the extension `ext` (None: not built) named `ext_name`: one switch
    for the v2 and v3 decoders (rans3_simd uses this too)."""
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in CHOICES:
        raise UsageError(f"{ENV}={want!r}: expected one of {', '.join(CHOICES)}")
    if want == "numba":
        return want
    have = list(_supported(ext))
    if want == "auto":
        return have[0] if have else "numba"
    if ext is None:
        raise UsageError(f"{ENV}={want}: the C extension latentstore.codec.entropy.{ext_name} is not built "
                         "(reinstall with a C compiler: pip install -e .), use auto or numba")
    if want not in have:
        raise UsageError(f"{ENV}={want}: this CPU does not run it (it runs {', '.join(have)})")
    return want


_tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}
_tables_lock = threading.Lock()  # loader threads share the cache
SCAN_MAX_L = 7  # the extension's gather-free kernel: contexts * 8 + symbol must index 64 entries
CHAN_BYTES = 6 * 16 * 4 + 64 * 2 * 2 + 64 * 4  # the extension's chan_t


def simd_tables(dtab: np.ndarray, ftab: np.ndarray, C: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """The extension's tables from numba's two, cached per (dtab, ftab) object (rans_v2 caches those
    per table content, so this runs once per table):
    tab (rows * 4096,) uint32 = freq << 16 | sym << 12 | (slot - cum[sym]), one gather per step
    (freq <= 4096 needs 13 bits: 29 bits in all); chans, per channel when L <= 7: the scan kernel's
    register tables (chan_t in _rans_simd.c), else empty."""
    key = (id(dtab), id(ftab))
    hit = _tables.get(key)
    if hit is not None and hit[0] is dtab and hit[1] is ftab:
        return hit[2]
    rows = dtab.size >> kc.SHIFT
    d = np.asarray(dtab, dtype=np.uint32).reshape(rows, kc.MASK + 1)
    f = np.asarray(ftab, dtype=np.uint32).reshape(rows, kc.MAX_SYMBOLS)
    tab = np.ascontiguousarray(((f[np.arange(rows)[:, None], d >> kc.SHIFT] << 16) | d).ravel())
    chans = np.zeros(0, np.uint8)
    if 2 <= L <= SCAN_MAX_L and rows == C * (L + 1):
        freq = f[:, :L].reshape(C, L + 1, L).astype(np.int64)
        cum = np.concatenate([np.zeros((C, L + 1, 1), np.int64), np.cumsum(freq, -1)], -1)  # (C, L+1, L+1)
        cumv = np.full((C, 6, 16), kc.MASK + 1, np.uint32)
        cumv[:, :L - 1, :L + 1] = cum[:, :, 1:L].transpose(0, 2, 1)
        fr = np.zeros((C, 8, 8), np.uint16)
        lo = np.zeros((C, 8, 8), np.uint16)
        fr[:, :L + 1, :L] = freq
        lo[:, :L + 1, :L] = cum[:, :, :L]
        fl = (fr.astype(np.uint32) << 16) | lo
        chans = np.ascontiguousarray(np.concatenate([a.reshape(C, -1).view(np.uint8) for a in (cumv, fr, lo, fl)],
                                                    axis=1).ravel())
        assert chans.size == C * CHAN_BYTES
    with _tables_lock:
        if len(_tables) >= 8:
            _tables.pop(next(iter(_tables)))
        _tables[key] = (dtab, ftab, (tab, chans))  # holding dtab and ftab keeps their ids from being reused
    return tab, chans


def decode_range(data, offsets, dtab, ftab, L, C, h, w, out, err, i0, i1, isa: str | None = None) -> None:
    """rans_kernels_cpu.decode_range's contract (same arguments, same out and err), on the chosen path.
    The GIL is released inside the C decoder, so threads decode in parallel."""
    isa = isa or chosen_isa()
    if isa == "numba" or data.size > _MAX_DATA:
        kc.decode_range(data, offsets, dtab, ftab, L, C, h, w, out, err, i0, i1)
        return
    assert out.dtype == np.uint8 and out.flags.c_contiguous and err.dtype == np.int64 and err.flags.c_contiguous
    tab, chans = simd_tables(dtab, ftab, int(C), int(L))
    _ext.decode_range(np.ascontiguousarray(data, dtype=np.uint8), np.ascontiguousarray(offsets, dtype=np.int64),
                      tab, chans, int(L), int(C), int(h), int(w), out, err, int(i0), int(i1), ISA_CODES[isa])
