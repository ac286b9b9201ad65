"""A child process of the harness: ``python bench/worker.py distributed SPEC`` or
``python bench/worker.py rss CASE WHO THREADS`` or ``python bench/worker.py steps
THREADS CONTENDER MIN_TIME`` (one contender of the steps table, served over stdin).

Started by :func:`harness.run_worker` (under mpiexec for the data-parallel
table) with the parent's ``sys.path``, so it imports the same bpcore; its
own directory is first on the path, so it finds the harness next to it.
"""
import sys

import peer_tables

if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "distributed":
        peer_tables.distributed_worker(*args)
    elif kind == "steps":
        threads, name, min_time = args
        peer_tables.steps_serve(int(threads), name, float(min_time))
    elif kind == "rss":
        name, who, threads = args
        peer_tables.rss_worker(name, who, int(threads))
    else:
        sys.exit(f"unknown worker {kind!r}: expected distributed, steps or rss")
