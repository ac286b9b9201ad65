"""``python -m bpcore``: the command-line face of bpcore.

Subcommands:

* ``demo`` -- seed 000's experiment: a 1000-100-10 ReLU network, linear
  output, sum-of-squares loss, learning rate 1e-6, 500 full-batch steps on 64
  random samples with standard-normal weights; prints the loss curve and the
  time per step of bpcore's kernels next to the NumPy reference.
* ``bench`` -- the benchmark tables of :mod:`bpcore.benchmarks`.
"""
import argparse
import sys
import time

import numpy as np


def _demo_run(ops, steps, seed, dtype):
    """Seed 000's training loop written with one backend's functions; returns (losses, seconds)."""
    n, d_in, hidden, d_out = 64, 1000, 100, 10
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    y = rng.standard_normal((n, d_out)).astype(dtype)
    w1 = rng.standard_normal((d_in, hidden)).astype(dtype)
    w2 = rng.standard_normal((hidden, d_out)).astype(dtype)
    b1 = np.zeros(hidden, dtype)
    b2 = np.zeros(d_out, dtype)
    h = np.empty((n, hidden), dtype)
    pred = np.empty((n, d_out), dtype)
    grad_pred = np.empty_like(pred)
    grad_h = np.empty_like(h)
    grads = [np.empty_like(p) for p in (w1, b1, w2, b2)]
    lr = 1e-6
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        ops.linear_forward(x, w1, b1, out=h)
        ops.relu_forward(h, out=h)
        ops.linear_forward(h, w2, b2, out=pred)
        losses.append(ops.mse_loss(pred, y, reduction="sum"))
        ops.mse_loss_backward(pred, y, reduction="sum", out=grad_pred)
        ops.linear_backward(h, w2, grad_pred, grad_x=grad_h, grad_w=grads[2], grad_b=grads[3])
        ops.relu_backward(h, grad_h, out=grad_h)
        ops.linear_backward(x, w1, grad_h, need_grad_x=False, grad_w=grads[0], grad_b=grads[1])
        for param, grad in zip((w1, b1, w2, b2), grads):
            ops.sgd_update(param, grad, lr=lr)
    return losses, time.perf_counter() - start


def demo(args):
    import bpcore
    from bpcore import reference

    dtype = np.dtype(args.dtype)
    losses, seconds = _demo_run(bpcore, args.steps, args.seed, dtype)
    _, ref_seconds = _demo_run(reference, args.steps, args.seed, dtype)
    print(f"bpcore demo: seed 000's network 1000-100-10 (ReLU, linear output), N=64, "
          f"sum-of-squares loss, lr 1e-6, {args.steps} steps, {dtype}")
    print(f"{'step':>6}  {'loss':>14}")
    for i in range(0, args.steps, 50):
        print(f"{i:>6}  {losses[i]:>14.6g}")
    print(f"{args.steps - 1:>6}  {losses[-1]:>14.6g}")
    per_step = seconds / args.steps * 1e6
    ref_per_step = ref_seconds / args.steps * 1e6
    print(f"time per step: bpcore {per_step:.1f} us, NumPy reference {ref_per_step:.1f} us "
          f"(x{ref_per_step / per_step:.2f})")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot needs matplotlib: pip install 'bpcore[plot]'", file=sys.stderr)
            return 2
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogy(losses)
        ax.set_xlabel("step")
        ax.set_ylabel("sum-of-squares loss")
        ax.set_title("bpcore demo (seed 000)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"loss curve written to {args.plot}")
    return 0


def bench(args):
    from bpcore import benchmarks

    return benchmarks.main()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bpcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="seed 000's two-layer ReLU network, timed against NumPy")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curve (needs matplotlib)")
    p.set_defaults(func=demo)
    p = sub.add_parser("bench", help="ratio tables: bpcore vs NumPy and PyTorch, 1 and 2 threads")
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    return args.func(args)
