"""pytest-benchmark: bpcore.distributed's per-step path at one rank vs MLP.fit, in process.

Run: ``OMP_NUM_THREADS=1 pytest bench/bench_distributed.py --benchmark-group-by=param``.
The multi-rank numbers (1 process vs 2 MPI ranks, allreduce time, overlap,
accumulate_steps) need mpiexec: ``python bench/run.py --only distributed``,
which the last benchmark here also runs once and prints.
"""
import numpy as np
import pytest

from bpcore import MLP

import peer_tables
from harness import limit_threads

NETS = [((1000, 100, 10), 64), ((784, 256, 256, 10), 256)]


def _problem(sizes, batch, steps=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch * steps)
    return MLP(sizes, loss="cross_entropy", dtype="float32", seed=0), x, y


@pytest.mark.parametrize("sizes,batch", NETS, ids=["1000-100-10", "784-256-256-10"])
@pytest.mark.parametrize("who", ["MLP.fit", "distributed.fit (step path)"])
def test_epoch(benchmark, sizes, batch, who):
    distributed = pytest.importorskip("bpcore.distributed")
    net, x, y = _problem(sizes, batch)
    benchmark.group = f"epoch {'-'.join(map(str, sizes))} batch {batch}"
    with limit_threads(1):
        if who == "MLP.fit":
            benchmark(lambda: net.fit(x, y, epochs=1, batch_size=batch, lr=1e-3, momentum=0.9,
                                      seed=1))
        else:
            distributed._EPOCH_LOOP_AT_ONE_RANK = False
            try:
                benchmark(lambda: distributed.fit(net, x, y, epochs=1, batch_size=batch,
                                                  lr=1e-3, momentum=0.9, seed=1))
            finally:
                distributed._EPOCH_LOOP_AT_ONE_RANK = True


def test_distributed_table(benchmark):
    pytest.importorskip("bpcore.distributed")
    benchmark.pedantic(lambda: peer_tables.distributed_table(rounds=1, epochs=2), rounds=1,
                       iterations=1)
