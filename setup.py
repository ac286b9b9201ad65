"""Build the compiled half of bpcore.

Every ``bpcore/*.pyx`` becomes one extension module. Cython directives are set
here, once, for all of them (see scikit-learn's ``_build_utils``):

* ``boundscheck``, ``wraparound`` and ``initializedcheck`` are off and
  ``cdivision`` is on, because the Python layer (``bpcore/_validate.py``)
  checks every shape before a kernel runs.  ``BPCORE_DEBUG=1`` turns the
  checks back on (and compiles with ``-O0 -g``) to hunt an indexing bug.
* ``BPCORE_SANITIZE=1`` adds AddressSanitizer + UndefinedBehaviorSanitizer.
* A release build (neither of the two) is stripped: ``-g0``, and ``-s`` at
  link time on Linux.  Both debug builds keep their debug info.
* ``BPCORE_NATIVE=1`` adds ``-march=native`` for a local build; the default
  build stays portable and picks AVX2+FMA kernels at import time instead.

Flags are ``-O3 -fno-math-errno``.  Never GCC's fast-math options: with
gcc 12 a shared object built that way sets flush-to-zero for the whole
Python process when it is loaded.
"""
import glob
import os
import sys

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


DEBUG = _flag("BPCORE_DEBUG")
SANITIZE = _flag("BPCORE_SANITIZE")
NATIVE = _flag("BPCORE_NATIVE")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"]
link_args = []
if SANITIZE:
    # NOTE: -fno-var-tracking-assignments: reports keep their file:line, not every
    # variable's location.  Compiling _gemm.c alone beside the ASan suite it took 6.7
    # min with it and 16.3 without; in .ci/run the niced build took 571 s with it and
    # 506 s without (another run): not shown to matter on this drifting host.
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                     "-fno-sanitize-recover=undefined", "-g", "-fno-var-tracking-assignments"]
    link_args += ["-fsanitize=address,undefined"]
if NATIVE:
    compile_args.append("-march=native")
if not (DEBUG or SANITIZE):
    # Release builds carry no debug info: Python's own CFLAGS contain -g, which
    # made the three modules 6.4 MB instead of ~1 MB.  The last -g option wins,
    # and extra_compile_args come after Python's flags.
    compile_args.append("-g0")
    if sys.platform.startswith("linux"):
        link_args.append("-s")   # and no symbol table (the exported ones stay)

# OpenMP is optional: a compiler without it builds the serial code path.
OPENMP = not _flag("BPCORE_NO_OPENMP") and sys.platform.startswith("linux")
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")


def extensions():
    import numpy

    exts = []
    for pyx in sorted(glob.glob(os.path.join("bpcore", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(Extension(
            name, [pyx],
            include_dirs=[os.path.join("bpcore", "_gemm"), numpy.get_include()],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # the C layer: an edited header rebuilds the modules (an in-place build
            # otherwise kept a stale .so after a header-only change)
            depends=sorted(glob.glob(os.path.join("bpcore", "_gemm", "*.h"))),
        ))
    return exts


def cythonized():
    from Cython.Build import cythonize
    return cythonize(extensions(), compiler_directives=directives,
                     compile_time_env={"BPCORE_OPENMP": OPENMP},
                     annotate=_flag("BPCORE_ANNOTATE"))


# The three modules compile in parallel (pip install included): on a 2-core
# machine the serial build was ~3 of .ci/run's minutes.
setup(ext_modules=cythonized(),
      options={"build_ext": {"parallel": os.cpu_count() or 1}})
