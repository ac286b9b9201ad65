"""Time sigmoid / tanh / softmax forward on 64 x 1000, compiled vs bpcore.reference.

Run single-threaded for stable numbers::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_vmath.py

Prints the median time of many repeats (microseconds) for the compiled kernels
(both vmath builds when the module has them) and the NumPy reference, and the
ratio reference / compiled.  Run it against an older build (PYTHONPATH) to
compare before/after.
"""
import argparse
import statistics
import timeit

import numpy as np

import bpcore
from bpcore import _kernels, reference

OPS = ["sigmoid_forward", "tanh_forward", "softmax_forward"]


def median_us(fn, number, repeat):
    times = timeit.repeat(fn, number=number, repeat=repeat)
    return 1e6 * statistics.median(times) / number


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(64, 1000))
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=101)
    args = parser.parse_args()
    paths = ["avx2_fma", "portable"] if hasattr(_kernels, "_set_vmath_kernel") else ["libm"]
    print(f"bpcore from {bpcore.__file__}; shape {tuple(args.shape)}; median us of "
          f"{args.repeat} x {args.number}")
    print(f"{'op':16s} {'dtype':8s} {'kernels':9s} {'compiled':>9s} {'reference':>10s} {'ratio':>6s}")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        z = rng.normal(scale=3.0, size=args.shape).astype(dtype)
        for op in OPS:
            t_ref = median_us(lambda: getattr(reference, op)(z), args.number, args.repeat)
            for path in paths:
                if path != "libm":
                    _kernels._set_vmath_kernel(path)
                t = median_us(lambda: getattr(_kernels, op)(z), args.number, args.repeat)
                print(f"{op:16s} {np.dtype(dtype).name:8s} {path:9s} {t:9.1f} {t_ref:10.1f} "
                      f"{t_ref / t:6.2f}")
    if paths[0] != "libm":
        _kernels._set_vmath_kernel("avx2_fma")


if __name__ == "__main__":
    main()
