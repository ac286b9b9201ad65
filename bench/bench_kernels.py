"""pytest-benchmark: every elementwise kernel, bpcore vs the NumPy reference vs PyTorch.

Run: ``OMP_NUM_THREADS=1 pytest bench/bench_kernels.py --benchmark-group-by=param``
(groups compare the contenders at one kernel/size/dtype).  The same calls,
as one ratio table: ``python -m bpcore bench``.
"""
import numpy as np
import pytest

from bpcore import benchmarks

CASES = [(shape, dtype, name, who)
         for shape in benchmarks.KERNEL_SHAPES
         for dtype in (np.float32, np.float64)
         for name, contenders in benchmarks._kernel_cases(shape, dtype, benchmarks._torch())
         for who in contenders]


@pytest.mark.parametrize("shape,dtype,name,who", CASES,
                         ids=[f"{n}-{'x'.join(map(str, s))}-{np.dtype(d).name}-{w}"
                              for s, d, n, w in CASES])
def test_kernel(benchmark, shape, dtype, name, who):
    benchmark.group = f"{name} {shape} {np.dtype(dtype).name}"
    with benchmarks.limit_threads(1):
        contenders = dict(benchmarks._kernel_cases(shape, dtype, benchmarks._torch()))[name]
        benchmark(contenders[who])
