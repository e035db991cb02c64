"""Build hook for the C extensions: the SIMD rANS decoders of v2 (latentstore/codec/entropy/_rans_simd.c)
and v3 (_rans3_simd.c). Everything else about the package is in pyproject.toml.

Both include _rans_common.h (what the two decoders share), a `depends` of each.

The extensions are optional: with no C compiler (or a failing one) the install still succeeds and
latentstore.codec.entropy.rans_simd / rans3_simd fall back to the numba decoders. No -march flag: the
AVX-512 and AVX2 code paths carry their own target attributes and are picked at run time (cpuid), so
one build runs on any x86-64 CPU (and the scalar path on any other)."""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the extension cannot be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler at all: distutils raises before any extension is tried
            self._skip(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            self._skip(e)

    def _skip(self, e: Exception) -> None:
        print(f"warning: a latentstore SIMD rANS decoder was not built ({type(e).__name__}: {e}); "
              "the numba decoder will be used")


COMMON = ["latentstore/codec/entropy/_rans_common.h"]  # included by both: a change rebuilds both, and ships

setup(
    ext_modules=[Extension("latentstore.codec.entropy._rans_simd", ["latentstore/codec/entropy/_rans_simd.c"],
                           depends=COMMON, extra_compile_args=["-O3"], optional=True),
                 Extension("latentstore.codec.entropy._rans3_simd", ["latentstore/codec/entropy/_rans3_simd.c"],
                           depends=COMMON, extra_compile_args=["-O3"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
