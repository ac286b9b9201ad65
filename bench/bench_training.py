"""pytest-benchmark: the fused training step against the NumPy-reference model and PyTorch.

Run: ``OMP_NUM_THREADS=1 pytest bench/bench_training.py --benchmark-group-by=param:case``.
The same comparison as one ratio table: ``python -m bpcore bench`` (quick) or
``python bench/run.py --only training``.
"""
import numpy as np
import pytest

from bpcore import MLP
from bpcore._quickbench import torch_mlp_step

from harness import limit_threads

CASES = {"2-8-2 b4 float32": ([2, 8, 2], 4, np.float32),
         "1000-100-10 b64 float32": ([1000, 100, 10], 64, np.float32),
         "1000-100-10 b64 float64": ([1000, 100, 10], 64, np.float64)}


@pytest.mark.parametrize("who", ["bpcore", "numpy", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_train_step(benchmark, case, who):
    sizes, batch, dtype = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
    benchmark.group = case
    with limit_threads(1):
        if who == "torch":
            torch = pytest.importorskip("torch")
            step = torch_mlp_step(torch, sizes, dtype, x, y, 1e-4)
        else:
            net = MLP(sizes, dtype=dtype, seed=0,
                      backend="compiled" if who == "bpcore" else "reference")

            def step():
                net.train_step(x, y, lr=1e-4)
        benchmark(step)
