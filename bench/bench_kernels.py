"""pytest-benchmark: every elementwise kernel, bpcore vs the NumPy reference vs PyTorch.

Run: ``OMP_NUM_THREADS=1 pytest bench/bench_kernels.py --benchmark-group-by=param``
(groups compare the contenders at one kernel/size/dtype).  The same calls,
as one ratio table: ``python bench/run.py --only kernels``.
"""
import numpy as np
import pytest

import peer_tables
from harness import import_peer, limit_threads

CASES = [(shape, dtype, name, who)
         for shape in peer_tables.KERNEL_SHAPES
         for dtype in (np.float32, np.float64)
         for name, contenders in peer_tables._kernel_cases(shape, dtype, import_peer("torch"))
         for who in contenders]


@pytest.mark.parametrize("shape,dtype,name,who", CASES,
                         ids=[f"{n}-{'x'.join(map(str, s))}-{np.dtype(d).name}-{w}"
                              for s, d, n, w in CASES])
def test_kernel(benchmark, shape, dtype, name, who):
    benchmark.group = f"{name} {shape} {np.dtype(dtype).name}"
    with limit_threads(1):
        contenders = dict(peer_tables._kernel_cases(shape, dtype, import_peer("torch")))[name]
        benchmark(contenders[who])
