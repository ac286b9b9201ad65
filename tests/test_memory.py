"""Leak checks: 100 000 calls of every compiled kernel and 10 000 training steps leave memory flat.

Each check runs in a fresh interpreter (``run_python``) so the resident set
size (RSS, from /proc) measures only the calls under test: after a warm-up
(first-call allocations, the GEMM's packing buffers, NumPy's caches) the RSS
may grow by less than 1 MB over the loop, and ``tracemalloc`` -- which sees
every Python-level allocation, NumPy arrays included -- must show no growth
over a second loop.  Error paths are included: a call that raises must
release what it acquired (buffers, temporaries) too.
"""
import json
import os
import sys

import pytest
from conftest import run_python

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the RSS from /proc"),
    # AddressSanitizer keeps freed memory in quarantine, so the RSS grows by
    # design under .ci/sanitize; the leak check is for the normal build.
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="RSS is meaningless under AddressSanitizer"),
]

RSS_LIMIT = 1 << 20        # bytes over the whole loop
TRACED_LIMIT = 4 << 10     # bytes: a few small interpreter caches, never per-call growth

HARNESS = """
import gc, json, os, tracemalloc
import numpy as np
import bpcore
from bpcore import MLP

PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def measure(fn, n_rss, n_traced):
    for _ in range(min(n_rss, 2000)):   # warm-up
        fn()
    gc.collect()
    before = rss()
    for _ in range(n_rss):
        fn()
    gc.collect()
    grown = rss() - before
    tracemalloc.start()
    for _ in range(200):
        fn()
    gc.collect()
    t0 = tracemalloc.get_traced_memory()[0]
    for _ in range(n_traced):
        fn()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - t0
    tracemalloc.stop()
    return {"rss": grown, "traced": traced}

def raising(fn):
    def call():
        try:
            fn()
        except (TypeError, ValueError, FloatingPointError):
            return
        raise AssertionError("expected an error")
    return call
"""

KERNELS = """
rng = np.random.default_rng(0)
n = lambda *s: rng.normal(size=s)
z, g, o = n(8, 5), n(8, 5), np.empty((8, 5))
a = np.maximum(z, 0)
x, w, b = n(8, 6), n(6, 5), n(5)
labels = rng.integers(0, 5, 8)
p, v = n(8, 5), np.zeros((8, 5))
big = n(64, 64)
zf = z.T  # strided: the general path's copies
calls = {
    "matmul": lambda: bpcore.matmul(x, w),
    "matmul_64": lambda: bpcore.matmul(big, big, trans_b=True),
    "matmul_out_beta": lambda: bpcore.matmul(x, w, out=o, beta=0.5),
    "linear_forward": lambda: bpcore.linear_forward(x, w, b),
    "linear_backward": lambda: bpcore.linear_backward(x, w, g),
    "softmax_forward": lambda: bpcore.softmax_forward(z),
    "mse_loss": lambda: bpcore.mse_loss(z, g),
    "mse_loss_backward": lambda: bpcore.mse_loss_backward(z, g, out=o),
    "mse_loss_and_grad": lambda: bpcore.mse_loss_and_grad(z, g),
    "softmax_cross_entropy": lambda: bpcore.softmax_cross_entropy(z, labels),
    "softmax_cross_entropy_backward": lambda: bpcore.softmax_cross_entropy_backward(z, labels),
    "softmax_cross_entropy_and_grad": lambda: bpcore.softmax_cross_entropy_and_grad(z, labels),
    "sgd_update": lambda: bpcore.sgd_update(p, g * 0, lr=0.1, momentum=0.9, velocity=v),
    "strided_general_path": lambda: bpcore.sigmoid_forward(zf),
    "list_general_path": lambda: bpcore.relu_forward([[1.0, -2.0], [3.0, 4.0]]),
    "error_shape": raising(lambda: bpcore.linear_forward(x, w, n(4))),
    "error_dtype": raising(lambda: bpcore.matmul(x, w.astype(np.float32))),
    "error_out": raising(lambda: bpcore.sigmoid_forward(z, out=np.empty((2, 2)))),
    "error_labels": raising(lambda: bpcore.softmax_cross_entropy(z, labels + 5)),
}
for act in ("sigmoid", "relu", "tanh", "identity"):
    calls[f"{act}_forward"] = lambda f=getattr(bpcore, f"{act}_forward"): f(z)
    calls[f"{act}_backward"] = lambda f=getattr(bpcore, f"{act}_backward"): f(a, g, out=o)
names = NAMES or sorted(calls)
print(json.dumps({name: measure(calls[name], 100_000, 10_000) for name in names}))
"""

TRAINING = """
rng = np.random.default_rng(1)
x = rng.normal(size=(32, 20)).astype(np.float32)
y = rng.normal(size=(32, 4)).astype(np.float32)
labels = rng.integers(0, 4, 32)
mse = MLP([20, 16, 4], activation="tanh", seed=0)
ce = MLP([20, 16, 4], loss="cross_entropy", seed=0)
x64 = x.astype(np.float64)   # the general path's conversions
xbig = np.repeat(x, 4, axis=0)
ybig = np.repeat(labels, 4)
xnan = x.copy(); xnan[0, 0] = np.nan
calls = {
    "train_step_mse": lambda: mse.train_step(x, y, lr=1e-4, momentum=0.9),
    "train_step_ce": lambda: ce.train_step(x, labels, lr=1e-4),
    "train_step_general_path": lambda: ce.train_step(x.tolist(), labels.tolist(), lr=1e-4),
    "train_step_nonfinite": raising(lambda: mse.train_step(xnan, y, lr=1e-4)),
    "train_step_bad_lr": raising(lambda: mse.train_step(x, y, lr=-1.0)),
    "fit_epoch": lambda: ce.fit(xbig, ybig, epochs=1, batch_size=32, lr=1e-4),
    "predict": lambda: ce.predict(x),
    "evaluate": lambda: ce.evaluate(x, labels),
    "loss_and_grads": lambda: mse.loss_and_grads(x, y),
}
names = NAMES or sorted(calls)
print(json.dumps({name: measure(calls[name], 10_000, 2_000) for name in names}))
"""


def _check(report):
    bad = {name: r for name, r in report.items()
           if r["rss"] >= RSS_LIMIT or r["traced"] > TRACED_LIMIT}
    assert not bad, f"memory grew (bytes): {bad}"


def test_kernels_do_not_leak():
    _check(json.loads(run_python(HARNESS + "NAMES = None\n" + KERNELS, timeout=600)))


def test_training_does_not_leak():
    _check(json.loads(run_python(HARNESS + "NAMES = None\n" + TRAINING, timeout=600)))


def test_the_leak_check_can_fail():
    # A deliberately leaking call must be caught, or the checks above prove nothing.
    code = HARNESS + """
kept = []
leak = lambda: kept.append(np.empty(64))   # ~600 bytes per call
print(json.dumps({"leak": measure(leak, 5_000, 2_000)}))
"""
    report = json.loads(run_python(code))
    with pytest.raises(AssertionError, match="memory grew"):
        _check(report)
