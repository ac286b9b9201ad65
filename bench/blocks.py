"""Cache-block sweep of the current GEMM kernel, in one process (``_gemm._set_blocks``).

Each candidate (KC, MC, NC) runs the products of the steps table's networks and a
square GEMM, interleaved round by round with the table's own blocks, so a noisy
host shifts every candidate alike.  Prints the median time of each candidate
relative to the table's (below 1: faster).

    python bench/blocks.py --dtype float32 --kc 128,192,256 --mc 256,512 --threads 1
"""
import argparse
import itertools
import time

import numpy as np

import bpcore
from bpcore import _gemm

# (m, n, k, trans_a): forward X W, the weight gradient X^T dZ, the input gradient dZ W^T
PRODUCTS = [(1024, 512, 784, False), (784, 512, 1024, True), (256, 256, 784, False),
            (784, 256, 256, True), (512, 512, 512, False), (1024, 1024, 1024, False)]


def _operands(rng, m, n, k, trans_a, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    return (a.T if trans_a else a), rng.standard_normal((k, n)).astype(dtype)


def _time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--kc", default="128,192,256")
    p.add_argument("--mc", default="")
    p.add_argument("--nc", default="")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="small products, for the tests")
    args = p.parse_args(argv)
    products = [(m // 16, n // 16, k // 16, ta) for m, n, k, ta in PRODUCTS] \
        if args.smoke else PRODUCTS
    bpcore.set_num_threads(args.threads)
    name = _gemm.cpu_features()["kernel"]
    table = _gemm._kernel_blocks(name)[args.dtype]
    pick = lambda s, d: [int(v) for v in s.split(",")] if s else [d]  # noqa: E731
    cands = list(itertools.product(pick(args.kc, table["kc"]), pick(args.mc, table["mc"]),
                                   pick(args.nc, table["nc"])))
    rng = np.random.default_rng(0)
    ops = [(_operands(rng, m, n, k, ta, args.dtype), (m, n, k, ta)) for m, n, k, ta in products]
    times = {c: {s: [] for _, s in ops} for c in cands}
    base = (table["kc"], table["mc"], table["nc"])
    times.setdefault(base, {s: [] for _, s in ops})
    try:
        for r in range(args.rounds):
            order = list(times)
            order = order[r % len(order):] + order[:r % len(order)]    # rotate each round
            for c in order:
                _gemm._set_kernel(name)
                if c != base:
                    _gemm._set_blocks(args.dtype, *c)
                for (a, b), s in ops:
                    _gemm.matmul(a, b)
                    times[c][s].append(_time(lambda: _gemm.matmul(a, b), 3))
    finally:
        _gemm._set_kernel(name)
    print(f"kernel {name}, {args.dtype}, {args.threads} thread(s), table blocks "
          f"KC={base[0]} MC={base[1]} NC={base[2]}; median of {args.rounds} rounds, "
          "time / the table's time")
    print(f"{'KC':>5} {'MC':>5} {'NC':>5} " + " ".join(
        f"{f'{m}x{n}x{k}' + ('T' if ta else ''):>15}" for m, n, k, ta in products))
    for c in times:
        cells = [np.median(times[c][s]) / np.median(times[base][s]) for _, s in ops]
        print(f"{c[0]:5} {c[1]:5} {c[2]:5} " + " ".join(f"{v:15.3f}" for v in cells))


if __name__ == "__main__":
    main()
