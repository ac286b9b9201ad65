"""Where one training step's time goes: a per-phase breakdown of the fused step.

For each network the step (loss_and_grad + update, as ``MLP.train_step``
runs it) is cut into the core's public pieces -- ``loss_and_grad_begin``
(forward, loss, output delta), ``backward_layer`` for each layer (its two
products, or one for the first layer, with the derivative applied by the
GEMM's store) and ``update`` -- and next to each piece the same products
alone through ``bpcore.matmul`` with fresh operands in the layouts the step
uses (W.T and a.T read through strides).  The difference between a phase
and its products is what the step spends beyond the GEMMs: epilogues, the
loss, the non-finite scan, packing.  % is of the measured FMA peak (the
register-only loop of bench/harness.py), counting 2*m*n*k per product.

    python bench/phases.py [--threads 1] [--dtype float32] [--rounds 7]

One thread by default (stated in the output); medians of interleaved rounds
(bpcore._quickbench.time_calls).  Tests never assert timings.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import bpcore  # noqa: E402
from bpcore import _step  # noqa: E402

# (batch, sizes): the networks, ReLU hidden layers, sum-of-squares loss.
NETS = [(64, (1000, 100, 10)), (256, (784, 256, 10)), (1024, (784, 512, 10)),
        (512, (784, 512, 512, 10))]


def _products(batch, sizes):
    """Per phase, the (m, n, k, trans_a, trans_b) products the step computes."""
    L = len(sizes) - 1
    phases = {"forward+loss": [(batch, sizes[l + 1], sizes[l], False, False) for l in range(L)]}
    for l in range(L - 1, -1, -1):
        prods = [(sizes[l], sizes[l + 1], batch, True, False)]         # grad W = a.T @ delta
        if l > 0:
            prods.append((batch, sizes[l], sizes[l + 1], False, True))  # delta @ W.T
        phases[f"backward {l}"] = prods
    phases["update"] = []
    return phases


def _matmul_call(m, n, k, ta, tb, dtype, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    return lambda: bpcore.matmul(a, b, trans_a=ta, trans_b=tb, out=out)


def breakdown(batch, sizes, dtype, rounds):
    """{phase: (step seconds, products-alone seconds, flops)} plus the whole step."""
    rng = np.random.default_rng(0)
    tr = _step.Trainer(sizes, ["relu"] * (len(sizes) - 2) + ["identity"], "mse", "sum", dtype)
    params = (rng.standard_normal(tr.n_params) * 0.05).astype(dtype)
    grads = np.zeros(tr.n_params, dtype)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
    # lr 0: the update runs in full (a multiply-add per parameter) but the
    # parameters stay put, so thousands of timed steps cannot diverge.
    rule = _step.UpdateRule("sgd", lr=0.0)
    L = len(sizes) - 1

    def begin():
        tr.loss_and_grad_begin(params, x, y)

    def backward(layer):
        def run():
            tr.loss_and_grad_begin(params, x, y)
            for l in range(L - 1, layer - 1, -1):
                tr.backward_layer(params, x, grads, l)
        return run

    phases = _products(batch, sizes)
    calls = {"step": lambda: (tr.loss_and_grad(params, x, y, grads),
                              tr.update(params, grads, None, rule)),
             "forward+loss": begin,
             "update": lambda: tr.update(params, grads, None, rule)}
    # backward l is measured as begin + backward L-1..l, then differenced
    for l in range(L):
        calls[f"upto {l}"] = backward(l)
    for name, prods in phases.items():
        fns = [_matmul_call(*p, dtype, rng) for p in prods]
        calls[f"gemm {name}"] = (lambda fns=fns: [f() for f in fns])
    t = harness.time_calls(calls, rounds=rounds)
    out = {}
    prev = t["forward+loss"]
    for name, prods in phases.items():
        flops = sum(2.0 * m * n * k for m, n, k, _, _ in prods)
        if name.startswith("backward"):
            l = int(name.split()[1])
            step_t = t[f"upto {l}"] - prev
            prev = t[f"upto {l}"]
        else:
            step_t = t[name]
        out[name] = (step_t, t[f"gemm {name}"] if prods else 0.0, flops)
    total_flops = sum(v[2] for v in out.values())
    out["step"] = (t["step"], sum(v[1] for v in out.values()), total_flops)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    dll = harness.build_fma_loop()
    with harness.limit_threads(args.threads):
        peak = harness.fma_peak(dll, args.dtype, args.threads) if dll is not None else None
        print(f"Per-phase breakdown of one SGD step, {args.dtype}, {args.threads} thread(s); "
              f"FMA peak {peak:.1f} GFLOP/s" if peak else "FMA peak: not measured (no cc)")
        print(f"{'net':24} {'phase':14} {'step us':>9} {'GEMMs us':>9} {'extra us':>9} "
              f"{'step %pk':>9} {'GEMM %pk':>9}")
        for batch, sizes in NETS:
            res = breakdown(batch, sizes, np.dtype(args.dtype), args.rounds)
            label = f"{batch}x" + "-".join(map(str, sizes))
            for name, (ts, tg, flops) in res.items():
                pct = (lambda s: f"{flops / s / 1e9 / peak * 100:8.1f}%"
                       if peak and s > 0 and flops else f"{'':>9}")
                print(f"{label:24} {name:14} {ts * 1e6:9.1f} {tg * 1e6:9.1f} "
                      f"{(ts - tg) * 1e6:9.1f} {pct(ts)} {pct(tg)}")
                label = ""


if __name__ == "__main__":
    main()
