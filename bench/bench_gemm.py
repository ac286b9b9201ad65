"""pytest-benchmark: bpcore.matmul vs numpy.matmul, one group per shape and dtype.

    pytest bench/bench_gemm.py --benchmark-group-by=group

Single-threaded (both libraries pinned to one thread) unless BENCH_THREADS is set.
"""
import os

import numpy as np
import pytest
import bpcore

from harness import limit_threads

pytest.importorskip("pytest_benchmark")

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
SHAPES = {  # name: (m, n, k, trans_a, trans_b)
    "1024^3": (1024, 1024, 1024, False, False),
    "256^3": (256, 256, 256, False, False),
    "X@W": (64, 100, 1000, False, False),
    "dY@W.T": (64, 1000, 100, False, True),
    "X.T@dY": (1000, 100, 64, True, False),
    "2x2x2": (2, 2, 2, False, False),
}


@pytest.fixture(autouse=True)
def _threads():
    with limit_threads(THREADS):
        yield


def _operands(shape, dtype):
    m, n, k, ta, tb = SHAPES[shape]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, ta, tb


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["bpcore", "numpy"])
def test_matmul(benchmark, impl, shape, dtype):
    a, b, ta, tb = _operands(shape, dtype)
    benchmark.group = f"matmul {shape} {dtype} threads={THREADS}"
    if impl == "bpcore":
        benchmark(bpcore.matmul, a, b, trans_a=ta, trans_b=tb)
    else:
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        benchmark(np.matmul, op_a, op_b)
