"""bpcore.matmul against numpy.matmul, per shape and dtype, at 1 and 2 threads.

    python bench/run.py --only gemm [--threads 1,2]     (or with every other table)
    python bench/gemm_table.py [--repeats N] [--threads 1,2]

Columns: bpcore and numpy median times, ratio numpy_time / bpcore_time (> 1:
bpcore is faster), bpcore GFLOP/s.  Both run with the same thread count
(``harness.limit_threads``: numpy's BLAS through threadpoolctl, bpcore with
set_num_threads).  The two contenders are interleaved (one timed batch each,
alternately) so drift in clock speed hits both; each reported time is the
median over batches.  With several threads a short idle precedes each batch,
so neither library's still-spinning worker threads steal a core from the
other.
"""
import argparse
import time

import numpy as np

import bpcore
from harness import limit_threads

# name, m, n, k, trans_a, trans_b  (C is m x n, the inner dimension k)
SHAPES = [
    ("1024^3", 1024, 1024, 1024, False, False),
    ("512^3", 512, 512, 512, False, False),
    ("256^3", 256, 256, 256, False, False),
    ("X@W 64x1000@1000x100", 64, 100, 1000, False, False),
    ("dY@W.T 64x100@(1000x100).T", 64, 1000, 100, False, True),
    ("X.T@dY (64x1000).T@64x100", 1000, 100, 64, True, False),
    ("2x2x2", 2, 2, 2, False, False),
]


def _batch(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _time_pair(f_bp, f_np, target_s, repeats, pause):
    """Median per-call times of two functions, batches interleaved.

    ``pause`` seconds of idling before each batch: with several threads, the
    workers of the library that ran last keep spinning for a while after its
    call (OpenBLAS's for ~0.1 s) and would take a core from the other one.
    """
    f_bp(), f_np()                                  # warm caches and buffers
    one = max(_batch(f_np, 1), 1e-7)
    calls = max(1, int(target_s / one))
    t_bp, t_np = [], []
    for _ in range(repeats):
        time.sleep(pause)
        t_bp.append(_batch(f_bp, calls))
        time.sleep(pause)
        t_np.append(_batch(f_np, calls))
    return float(np.median(t_bp)), float(np.median(t_np))


def table(threads, dtypes=(np.float32, np.float64), repeats=7, target_s=0.02, seed=0,
          pause=None):
    rng = np.random.default_rng(seed)
    rows = []
    for dtype in dtypes:
        for name, m, n, k, ta, tb in SHAPES:
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            op_a, op_b = (a.T if ta else a), (b.T if tb else b)
            with limit_threads(threads):
                t_bp, t_np = _time_pair(lambda: bpcore.matmul(a, b, trans_a=ta, trans_b=tb),
                                        lambda: np.matmul(op_a, op_b), target_s, repeats,
                                        (0.15 if threads > 1 else 0.0) if pause is None else pause)
            rows.append((threads, np.dtype(dtype).name, name, t_bp, t_np, t_np / t_bp,
                         2.0 * m * n * k / t_bp / 1e9))
    return rows


def _fmt_time(t):
    return f"{t * 1e6:10.2f} us" if t < 1e-2 else f"{t * 1e3:10.2f} ms"


def print_table(threads=(1, 2), repeats=7, file=None):
    """Print :func:`table` for each thread count."""
    header = (f"{'thr':>3} {'dtype':7} {'shape':28} {'bpcore':>13} {'numpy':>13} "
              f"{'np/bp':>6} {'GFLOP/s':>8}")
    for t in threads:
        print(f"\nGEMM shapes, {t} thread(s): ratio np/bp = numpy time / bpcore time", file=file)
        print(header, file=file)
        for thr, dt, name, t_bp, t_np, ratio, gflops in table(t, repeats=repeats):
            print(f"{thr:3d} {dt:7} {name:28} {_fmt_time(t_bp)} {_fmt_time(t_np)} "
                  f"{ratio:6.2f} {gflops:8.1f}", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args(argv)
    print(f"bpcore kernel: {bpcore.cpu_features()}")
    print_table([int(t) for t in args.threads.split(",")], repeats=args.repeats)


if __name__ == "__main__":
    main()
