"""Prediction latency for services: bpcore beside scikit-learn, PyTorch and onnxruntime.

    python bench/latency.py [--rounds 7] [--min-time 0.05] [--cpu N]

One process pinned to one CPU (``os.sched_setaffinity``, as ``taskset -c N``),
one thread everywhere (bpcore, NumPy's BLAS through threadpoolctl, PyTorch's
intra-op pool, onnxruntime's intra- and inter-op pools).  The same float32
weights in all four: bpcore ``predict(x, out=buffer)``, scikit-learn's
``MLPClassifier.predict_proba``, the ``torch.nn.Sequential`` of
``net.to_torch()`` under ``torch.inference_mode()``, and onnxruntime on
``net.to_onnx()``; each gets its input already in its own form (a float32
C-contiguous array, a tensor).  64-64-10 and 784-256-256-10 ReLU networks with
a softmax output, batch 1 and 32.  Interleaved rounds, the median round per
contender (``harness.time_calls``); printed in microseconds per call, and each
peer's time as a multiple of bpcore's.
"""
import argparse
import os
import warnings

import numpy as np

import bpcore
from bpcore import export

from harness import import_peer, limit_threads, time_calls

CASES = [([64, 64, 10], 1), ([64, 64, 10], 32), ([784, 256, 256, 10], 1),
         ([784, 256, 256, 10], 32)]


def contenders(sizes, batch):
    """name -> zero-argument callable predicting ``batch`` rows, and the outputs to check."""
    net = bpcore.MLP(sizes, activation="relu", loss="cross_entropy", dtype="float32", seed=0)
    x = np.random.default_rng(0).standard_normal((batch, sizes[0])).astype(np.float32)
    out = np.empty((batch, sizes[-1]), np.float32)
    calls = {"bpcore": lambda: net.predict(x, out=out)}
    results = {"bpcore": lambda: net.predict(x)}
    sklearn_nn = import_peer("sklearn.neural_network")
    if sklearn_nn is not None:
        est = sklearn_nn.MLPClassifier(hidden_layer_sizes=sizes[1:-1], max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.partial_fit(x[:1].repeat(sizes[-1], 0), np.arange(sizes[-1]),
                            classes=np.arange(sizes[-1]))
        est.coefs_ = [w.copy() for w in net.weights]
        est.intercepts_ = [b.copy() for b in net.biases]
        calls["scikit-learn"] = results["scikit-learn"] = lambda: est.predict_proba(x)
    torch = import_peer("torch")
    if torch is not None:
        module = net.to_torch().eval()
        xt = torch.from_numpy(x)

        def torch_predict():
            with torch.inference_mode():
                return module(xt)

        calls["torch"] = torch_predict
        results["torch"] = lambda: torch_predict().numpy()
    ort = import_peer("onnxruntime")
    if ort is not None and import_peer("onnx") is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(net.to_onnx().SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feed, names = {export.INPUT_NAME: x}, [export.OUTPUT_NAME]
        calls["onnxruntime"] = lambda: session.run(names, feed)
        results["onnxruntime"] = lambda: session.run(names, feed)[0]
    want = results["bpcore"]()
    for name, result in results.items():
        np.testing.assert_allclose(result(), want, rtol=1e-5, atol=1e-6, err_msg=name)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds per timing round of each contender")
    parser.add_argument("--cpu", type=int, default=None,
                        help="the CPU to pin to (default: the first one allowed)")
    args = parser.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    print(f"pinned to CPU {cpu}; 1 thread; median of {args.rounds} interleaved rounds; "
          f"float32; microseconds per call (x: time / bpcore's)")
    rows = []
    with limit_threads(1):
        torch = import_peer("torch")
        if torch is not None:
            torch.set_num_interop_threads(1)
        for sizes, batch in CASES:
            calls = contenders(sizes, batch)
            times = time_calls(calls, min_time=args.min_time, rounds=args.rounds)
            rows.append(("-".join(map(str, sizes)), batch, times))
    names = list(rows[0][2])
    print("| model | batch | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for model, batch, times in rows:
        base = times["bpcore"]
        cells = [f"{times[n] * 1e6:.2f} µs" + ("" if n == "bpcore" else
                                              f" ({times[n] / base:.2f}x)") for n in names]
        print(f"| {model} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
