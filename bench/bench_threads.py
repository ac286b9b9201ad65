"""pytest-benchmark: two independent ``MLP.fit`` calls, serial vs in two threads.

Run: ``pytest bench/bench_threads.py --benchmark-group-by=group``.  The
reliability promise is threaded <= 0.6 x serial on two free cores (the
training step runs without the GIL); ``python bench/run.py --only threads``
prints the same comparison as one ratio.
"""
import threading

import pytest

import peer_tables
from harness import limit_threads


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
    jobs = [peer_tables._fit_job(seed) for seed in (0, 1)]
    run = _serial if mode == "serial" else _threaded
    with limit_threads(1):
        benchmark.pedantic(run, args=(jobs,), rounds=5, warmup_rounds=1)
