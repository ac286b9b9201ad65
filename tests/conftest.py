"""Shared fixtures: the two backends and the per-dtype tolerance table.

Every operation exists twice, in ``bpcore.reference`` (NumPy) and at the top
level of ``bpcore`` (compiled where a twin exists); tests that take the
``backend`` fixture run on both.
"""
import os

import numpy as np
import pytest

import bpcore
import bpcore.reference

BACKENDS = {"reference": bpcore.reference, "compiled": bpcore}

# Compiled vs reference agreement, per dtype.  Elementwise kernels differ from
# NumPy only by the rounding of exp/tanh; products by summation order, so
# matmul-based comparisons scale atol with the inner dimension themselves.
TOL = {
    np.dtype(np.float32): dict(rtol=2e-6, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-13, atol=1e-14),
}

DTYPES = [np.float32, np.float64]


def _in_ci():
    import os

    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (always run when CI=true)")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run in CI (CI=true) or with ``--runslow``; a plain
    ``pytest`` skips them, to stay within a few minutes on a laptop."""
    if os.environ.get("BPCORE_TEST_COMPILED_ONLY", "0") not in ("", "0"):
        # .ci/sanitize: under ASan only compiled code can fault, so the NumPy
        # twin's half of each two-backend test is left to the plain run.
        keep, drop = [], []
        for item in items:
            param = getattr(item, "callspec", None) and item.callspec.params.get("backend")
            (drop if param == "reference" or param is bpcore.reference else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    if _in_ci() or config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or locally with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The module to test: ``bpcore.reference`` or ``bpcore``."""
    return BACKENDS[request.param]


def _bf16_paths():
    from bpcore import _gemm
    return _gemm._runnable_bf16_paths()


@pytest.fixture(params=_bf16_paths())
def bf16_path(request):
    """Run the test with each compute_dtype="bfloat16" path this CPU runs (the
    AVX512_BF16 tile, the emulated path, and the tile over scalar C everywhere),
    then restore the import-time choice."""
    from bpcore import _gemm
    before = _gemm._set_bf16_path(request.param)
    yield request.param
    _gemm._set_bf16_path(before)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def assert_close(actual, expected, dtype=None, scale=1.0):
    """``assert_allclose`` with the tolerance of ``dtype`` (default: of ``expected``)."""
    dtype = np.dtype(dtype if dtype is not None else np.asarray(expected).dtype)
    tol = TOL.get(dtype, TOL[np.dtype(np.float64)])
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale)


def import_oracle(name):
    """Import a test oracle (torch, sklearn): skipped without it locally, required in CI.

    CI sets ``CI=true``; there a missing oracle is an error, so oracle tests
    can never pass by being skipped.
    """
    import importlib

    if _in_ci():
        return importlib.import_module(name)
    return pytest.importorskip(name)


def run_python(code, *, timeout=120, check=True, **env):
    """Run ``code`` in a fresh interpreter that imports this same bpcore; return stdout.

    The child runs in an empty directory with the parent of the imported
    ``bpcore`` first on PYTHONPATH, so a source checkout in the current
    directory (without compiled modules) can never shadow the build under test.
    """
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import textwrap

    full_env = dict(os.environ, **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, full_env.get("PYTHONPATH"))
                                             if p)
    with tempfile.TemporaryDirectory() as cwd:
        # NOTE: its own session, so a timeout kills the child's whole process group
        # (a hung grandchild -- a forked worker, mpiexec's ranks -- is never orphaned).
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                                cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check:
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()
    return res


# ---------------------------------------------------------------------------
# Odd memory layouts of one array's values (tests/test_layouts.py)
# ---------------------------------------------------------------------------

# The documented outcome of the layouts that are not "the same result".
LAYOUT_RAISES = {"masked": TypeError}


def _same_values_with_strides(arr, strides):
    """``arr``'s values behind the given strides: a copy, re-strided (only strides of
    size-1 dimensions may differ from the copy's, so no byte outside it is addressed)."""
    base = np.array(arr, order="C", copy=True)
    return np.lib.stride_tricks.as_strided(base, shape=arr.shape, strides=strides)


LAYOUT_KINDS = ("contiguous", "strided", "sliced", "fortran", "transposed", "negative",
                "read_only", "misaligned", "memmap", "matrix", "masked", "byteswapped")


def layout(arr, kind, tmpdir=None):
    """``arr``'s values in the memory layout ``kind`` (one of ``LAYOUT_KINDS``).

    The one builder of layouts for every test module: "strided" (every other
    element of the last axis), "sliced" (every axis strided, 2-D), "fortran",
    "transposed" (the transpose of a C array), "negative" (negative strides),
    "read_only", "misaligned" (one byte off), "memmap" (a file in ``tmpdir``),
    "matrix" (``np.matrix``), "masked" (nothing masked), "byteswapped" (the
    other byte order).  A kind that needs more axes than ``arr`` has (or a
    non-array) gives ``arr`` unchanged.
    """
    import os

    if not isinstance(arr, np.ndarray):
        return arr
    kind = {"readonly": "read_only", "c": "contiguous"}.get(kind, kind)
    if kind == "contiguous":
        return arr
    if kind == "read_only":
        view = arr.copy()
        view.flags.writeable = False
        return view
    if kind == "byteswapped":
        return arr.astype(arr.dtype.newbyteorder("S"))
    if kind == "masked":
        return np.ma.masked_array(arr.copy(), mask=np.zeros(arr.shape, bool))
    if kind == "misaligned":
        raw = np.zeros(arr.nbytes + 1, np.uint8)
        view = raw[1:].view(arr.dtype).reshape(arr.shape)
    elif kind == "memmap":
        path = os.path.join(str(tmpdir), f"layout{next(_MEMMAP_IDS)}.dat")
        view = np.memmap(path, dtype=arr.dtype, mode="w+", shape=arr.shape or (1,))
        view[...] = arr if arr.shape else arr.reshape(1)
        return view if arr.shape else view.reshape(())
    elif arr.ndim == 0:
        return arr
    elif kind == "strided":
        view = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), arr.dtype)[..., ::2]
    elif kind == "negative":
        view = np.zeros_like(arr)[(slice(None, None, -1),) * arr.ndim]
    elif arr.ndim < 2:
        return arr
    elif kind == "sliced":
        view = np.zeros((2 * arr.shape[0] + 1, 3 * arr.shape[1] + 2), arr.dtype)[1::2, 2::3]
    elif kind == "fortran":
        view = np.zeros(arr.shape, arr.dtype, order="F")
    elif kind == "transposed":
        view = np.zeros(arr.shape[::-1], arr.dtype).T
    elif kind == "matrix":
        return np.asmatrix(arr.copy())
    else:
        raise AssertionError(f"unknown layout {kind!r}")
    view[...] = arr
    return view


def sigmoid(z):
    """The logistic function in float64 NumPy, stable for large |z| (a test oracle)."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def odd_layouts(arr, tmpdir=None):
    """Yield ``(name, view)``: ``arr``'s values in every memory layout bpcore must accept.

    Layouts that need a size-1 dimension (a huge or zero stride there: NumPy still
    calls such an array C-contiguous) or a dimension along which all values are
    equal (a stride-0 broadcast) are yielded only when ``arr`` has one, so a
    test picks one-row, one-column and repeated-row arrays to see them.  Each
    view holds exactly ``arr``'s values; ``LAYOUT_RAISES`` names the layouts with
    another documented outcome (a masked array is refused, not unmasked).
    ``tmpdir``: where the memory-mapped copy goes (skipped when None).
    """
    import os

    arr = np.asarray(arr)
    itemsize = arr.itemsize
    for d, size in enumerate(arr.shape):
        if size != 1:
            continue
        for label, stride in (("huge", 10 ** 6 * itemsize), ("zero", 0),
                              ("negative", -7 * itemsize)):
            strides = list(np.array(arr, order="C").strides)
            strides[d] = stride
            yield f"{label}_stride_dim{d}", _same_values_with_strides(arr, tuple(strides))
    if arr.ndim == 2 and arr.shape[0] == 1:
        # The reported case: np.ones((100000, 2))[::100000], a real row stride of 1.6 MB.
        big = np.zeros((2000, arr.shape[1]), arr.dtype)
        big[0] = arr[0]
        yield "one_row_of_big", big[::2000]
    if arr.ndim == 2 and arr.shape[1] == 1:
        big = np.zeros((arr.shape[0], 2000), arr.dtype)
        big[:, 0] = arr[:, 0]
        yield "one_column_of_big", big[:, :1]
    for d, size in enumerate(arr.shape):
        if size > 1 and arr.size and (arr == np.take(arr, [0], axis=d)).all():
            yield f"broadcast_dim{d}", np.broadcast_to(np.take(arr, [0], axis=d), arr.shape)
    kinds = (["negative", "strided"] if arr.ndim >= 1 else []) + (
        ["fortran", "matrix"] if arr.ndim == 2 else [])
    kinds += ["byteswapped", "read_only", "misaligned", "masked"]
    kinds += ["memmap"] if tmpdir is not None else []
    for kind in kinds:
        name = ({"byteswapped": "big_endian" if np.little_endian else "little_endian"}
                .get(kind, kind))
        yield name, layout(arr, kind, tmpdir)


def shared_buffer(*arrays):
    """Views of ONE buffer holding ``arrays``' values, one after the other (e.g. ``x``
    and ``y`` of a fit cut from one matrix)."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = np.result_type(*arrays)
    buf = np.zeros(sum(a.size for a in arrays), dtype)
    views, start = [], 0
    for a in arrays:
        view = buf[start:start + a.size].reshape(a.shape)
        view[...] = a
        views.append(view)
        start += a.size
    return views


def _counter():
    import itertools
    return itertools.count()


_MEMMAP_IDS = _counter()
