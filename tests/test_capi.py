"""The C-level API: an outside Cython extension cimports bpcore's GEMM and kernels.

README's "Using bpcore from C or Cython" shows ``mylayer.pyx`` and its
``setup.py``; this module builds exactly those two files (taken from the
README) in a temporary directory against the bpcore under test -- in CI the
*installed* package, found only through ``bpcore.get_include()`` -- and runs
them: float and double, from four threads at once without the GIL.
"""
import os
import re
import subprocess
import sys
import threading
from importlib import util
from pathlib import Path

import numpy as np
import pytest

import bpcore
from conftest import import_oracle

# Builds, subprocesses or other tools: in CI (CI=true) and with --runslow; not in a
# plain local `pytest`, nor in the sanitizer rerun (.ci/sanitize).
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Using bpcore from C or Cython"

# Appended to README's mylayer.pyx for the threaded test only: a rendezvous
# that each thread enters with the GIL released and leaves when all four are
# in (or after a timeout), so it counts threads that were inside `nogil`
# together -- with the GIL held, the first thread would wait alone.
PROBE = r'''

cdef extern from *:
    """
    #include <sched.h>
    #include <time.h>
    static int probe_rendezvous(int *count, int want, double seconds)
    {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int seen = __atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
        while (seen < want) {
            sched_yield();
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) + 1e-9 * (t.tv_nsec - t0.tv_nsec) > seconds)
                break;
            seen = __atomic_load_n(count, __ATOMIC_SEQ_CST);
        }
        return seen;
    }
    """
    int probe_rendezvous(int *count, int want, double seconds) nogil

cdef int _arrived = 0


def probe_reset():
    global _arrived
    _arrived = 0


def probe_dense_tanh(const floating[:, ::1] x, const floating[:, ::1] w,
                     const floating[::1] b, floating[:, ::1] out, int threads, int repeats):
    """dense_tanh_nogil `repeats` times after meeting `threads` threads; (status, seen)."""
    cdef const floating *xp = &x[0, 0]
    cdef const floating *wp = &w[0, 0]
    cdef const floating *bp = &b[0]
    cdef floating *outp = &out[0, 0]
    cdef int status = BP_OK, seen, r
    with nogil:
        seen = probe_rendezvous(&_arrived, threads, 10.0)
        for r in range(repeats):
            status = dense_tanh_nogil(x.shape[0], w.shape[0], x.shape[1], xp, wp, bp, outp)
            if status != BP_OK:
                break
    return status, seen
'''


def _readme_file(first_line):
    """The README code block of the C/Cython section whose first line starts with ``first_line``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", len(SECTION))]
    for block in re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README's {SECTION!r} has no code block starting {first_line!r}")


def _sanitizer_preloaded():
    return "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.fixture(scope="module")
def mylayer(tmp_path_factory):
    """README's mylayer.pyx (+ PROBE) built with README's setup.py; the imported module."""
    import_oracle("Cython")  # in the `test` extra: required in CI
    work = tmp_path_factory.mktemp("capi")
    (work / "setup.py").write_text(_readme_file("# setup.py"), encoding="utf-8")
    (work / "mylayer.pyx").write_text(_readme_file("# mylayer.pyx") + PROBE, encoding="utf-8")
    env = dict(os.environ)
    # setup.py's `import bpcore` must find the bpcore under test (a checkout's
    # in-place build, or the installed package), not the build directory.
    root = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    [so] = [p for p in work.iterdir() if p.name.startswith("mylayer.") and p.suffix in
            (".so", ".pyd")]
    spec = util.spec_from_file_location("mylayer", so)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_get_include_names_the_pxd_and_header_folders():
    cython_dir, header_dir = bpcore.get_include()
    for name in ("__init__.py", "_gemm.pxd", "_kernels.pxd"):
        assert os.path.isfile(os.path.join(cython_dir, "bpcore", name)), name
    for name in ("bp_gemm.h", "optim.h"):
        assert os.path.isfile(os.path.join(header_dir, name)), name
    # The folders of the bpcore under test (the installed one in CI), absolute.
    assert os.path.samefile(os.path.join(cython_dir, "bpcore", "__init__.py"), bpcore.__file__)
    assert os.path.isabs(cython_dir) and os.path.isabs(header_dir)


def _expected(x, w, b):
    return np.tanh(x.astype(np.float64) @ w.T.astype(np.float64) + b)


def _case(rng, m, n, k, dtype):
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return x, w, b, np.full((m, n), np.nan, dtype)


def _assert_layer(out, x, w, b):
    # tanh's derivative is <= 1, so the error is the product's: rounding, not BLAS's order.
    k = x.shape[1]
    tol = (1e-5 if out.dtype == np.float32 else 1e-13) * np.sqrt(k)
    np.testing.assert_allclose(out, _expected(x, w, b), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float", "double"])
def test_readme_example_matches_numpy(mylayer, dtype):
    x, w, b, out = _case(np.random.default_rng(0), 37, 19, 50, dtype)
    assert mylayer.dense_tanh(x, w, b, out) is out
    _assert_layer(out, x, w, b)
    with pytest.raises(ValueError, match="shapes"):
        mylayer.dense_tanh(x, np.ascontiguousarray(w[:, 1:]), b, out)


def test_four_threads_call_gemm_and_a_kernel_without_the_gil(mylayer):
    # Shapes through each GEMM path: the unblocked small product, a blocked one
    # with edge tiles, and one above the parallel threshold (run on 1 thread).
    shapes = [(3, 5, 7), (64, 33, 129), (200, 96, 80), (1, 1, 1)]
    threads = len(shapes)
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        cases = [_case(rng, *shape, dtype) for shape in shapes]
        results = [None] * threads
        mylayer.probe_reset()

        def work(i):
            results[i] = mylayer.probe_dense_tanh(*cases[i], threads, 20)

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in pool)
        for (status, seen), (x, w, b, out) in zip(results, cases):
            assert status == 0                     # BP_OK
            assert seen == threads, "the threads were not all in `nogil` at once"
            _assert_layer(out, x, w, b)
            # ... and bitwise what one thread alone computes.
            np.testing.assert_array_equal(mylayer.dense_tanh(x, w, b, np.empty_like(out)), out)
