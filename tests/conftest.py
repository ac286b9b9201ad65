"""Shared fixtures: the two backends and the per-dtype tolerance table.

Every operation exists twice, in ``bpcore.reference`` (NumPy) and at the top
level of ``bpcore`` (compiled where a twin exists); tests that take the
``backend`` fixture run on both.
"""
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
