"""pytest-benchmark: two independent ``MLP.fit`` calls, serial vs in two threads.

Run: ``pytest bench/bench_threads.py --benchmark-group-by=group``.  The
reliability promise is threaded <= 0.6 x serial on two free cores (the
training step runs without the GIL); ``python -m bpcore bench`` prints the
same comparison as one ratio.
"""
import threading

import pytest

from bpcore import benchmarks


def _serial(jobs):
    for job in jobs:
        job()


def _threaded(jobs):
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("mode", ["serial", "threaded"])
def test_two_fits(benchmark, mode):
    benchmark.group = "two independent MLP.fit calls"
    jobs = [benchmarks._fit_job(seed) for seed in (0, 1)]
    run = _serial if mode == "serial" else _threaded
    with benchmarks.limit_threads(1):
        benchmark.pedantic(run, args=(jobs,), rounds=5, warmup_rounds=1)
