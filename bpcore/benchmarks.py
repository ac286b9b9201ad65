"""Side-by-side timings: bpcore against the NumPy reference and PyTorch, as ratios.

Timings on a shared machine are noisy, so contenders are measured in one run,
interleaved round by round, and compared by their medians; thread counts are
pinned and printed.  ``python -m bpcore bench`` prints these tables; the
pytest-benchmark files under ``bench/`` time the same calls.
"""
import contextlib
import os
import statistics
import time

import numpy as np

KERNEL_SHAPES = [(4, 2), (64, 100), (64, 1000), (256, 784)]


@contextlib.contextmanager
def limit_threads(n):
    """Run NumPy's BLAS, PyTorch and bpcore with ``n`` threads inside the block."""
    stack = contextlib.ExitStack()
    with stack:
        try:
            from threadpoolctl import threadpool_limits
            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:  # the environment's OPENBLAS_NUM_THREADS then decides
            pass
        torch = _torch()
        if torch is not None:
            old_torch = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, old_torch)
        try:
            from bpcore import _gemm
            old_bp = _gemm.get_num_threads()
            _gemm.set_num_threads(n)
            stack.callback(_gemm.set_num_threads, old_bp)
        except (ImportError, AttributeError):
            pass
        yield


def _torch():
    if os.environ.get("BPCORE_BENCH_NO_TORCH"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def time_calls(contenders, *, min_time=0.02, rounds=7):
    """Median seconds per call of each callable, measured interleaved.

    Parameters
    ----------
    contenders : dict of str -> callable
        Zero-argument callables; each is called once to warm up.
    min_time : float
        Seconds each timing round of one contender should last at least.
    rounds : int
        Rounds; the median round is reported.

    Returns
    -------
    dict of str -> float
    """
    numbers = {}
    for name, fn in contenders.items():
        fn()
        number, elapsed = 1, 0.0
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / 4 or number >= 1 << 20:
                break
            number *= 4
        numbers[name] = max(1, int(number * min_time / max(elapsed, 1e-9) / 4) or 1)
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            number = numbers[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(times) for name, times in samples.items()}


def _kernel_cases(shape, dtype, torch):
    """(name, {contender: callable}) for every elementwise kernel at one size."""
    import bpcore
    from bpcore import reference as ref

    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    a = np.maximum(z, 0)
    out = np.empty_like(z)
    labels = rng.integers(0, shape[1], shape[0])
    param, velocity = z.copy(), np.zeros_like(z)
    cases = [
        ("sigmoid_forward", bpcore.sigmoid_forward, ref.sigmoid_forward, (z,), {"out": out}),
        ("tanh_forward", bpcore.tanh_forward, ref.tanh_forward, (z,), {"out": out}),
        ("relu_forward", bpcore.relu_forward, ref.relu_forward, (z,), {"out": out}),
        ("relu_backward", bpcore.relu_backward, ref.relu_backward, (a, g), {"out": out}),
        ("softmax_forward", bpcore.softmax_forward, ref.softmax_forward, (z,), {"out": out}),
        ("mse_loss_and_grad", bpcore.mse_loss_and_grad, ref.mse_loss_and_grad, (z, g),
         {"out": out}),
        ("softmax_cross_entropy_and_grad", bpcore.softmax_cross_entropy_and_grad,
         ref.softmax_cross_entropy_and_grad, (z, labels), {"out": out}),
        ("sgd_update(momentum)", bpcore.sgd_update, ref.sgd_update, (param, g),
         {"lr": 1e-6, "momentum": 0.9, "velocity": velocity}),
    ]
    torch_ops = {}
    if torch is not None:
        tz, tg = torch.from_numpy(z), torch.from_numpy(g)
        ta, tout = torch.from_numpy(a), torch.from_numpy(out)
        tlabels = torch.from_numpy(labels)
        tparam = torch.from_numpy(param.copy()).requires_grad_()
        opt = torch.optim.SGD([tparam], lr=1e-6, momentum=0.9)
        tparam.grad = tg.clone()
        tpred = tz.clone().requires_grad_()

        def mse_torch():
            tpred.grad = None
            torch.nn.functional.mse_loss(tpred, tg).backward()

        def ce_torch():
            tpred.grad = None
            torch.nn.functional.cross_entropy(tpred, tlabels).backward()

        torch_ops = {
            "sigmoid_forward": lambda: torch.sigmoid(tz, out=tout),
            "tanh_forward": lambda: torch.tanh(tz, out=tout),
            "relu_forward": lambda: torch.relu(tz),
            "relu_backward": lambda: torch.ops.aten.threshold_backward(tg, ta, 0),
            "softmax_forward": lambda: torch.softmax(tz, 1),
            "mse_loss_and_grad": mse_torch,
            "softmax_cross_entropy_and_grad": ce_torch,
            "sgd_update(momentum)": opt.step,
        }
    for name, fast, slow, args, kwargs in cases:
        contenders = {"bpcore": lambda f=fast, a=args, k=kwargs: f(*a, **k),
                      "numpy": lambda f=slow, a=args, k=kwargs: f(*a, **k)}
        if name in torch_ops:
            contenders["torch"] = torch_ops[name]
        yield name, contenders


def kernel_table(*, dtype=np.float32, threads=1, shapes=KERNEL_SHAPES, rounds=7,
                 min_time=0.02, file=None):
    """Print bpcore vs the NumPy reference (and PyTorch) for each elementwise kernel.

    Returns the rows as a list of dicts (name, shape, times, ratios).
    """
    torch = _torch()
    rows = []
    with limit_threads(threads):
        print(f"\nKernels, {np.dtype(dtype).name}, {threads} thread(s): time per call (us); "
              f"ratio = other / bpcore (higher is better for bpcore)", file=file)
        header = f"{'kernel':32} {'shape':>10} {'bpcore':>9} {'numpy':>9} {'ratio':>7}"
        if torch is not None:
            header += f" {'torch':>9} {'ratio':>7}"
        print(header, file=file)
        for shape in shapes:
            for name, contenders in _kernel_cases(shape, dtype, torch):
                times = time_calls(contenders, rounds=rounds, min_time=min_time)
                row = {"name": name, "shape": shape, "times": times,
                       "ratios": {k: times[k] / times["bpcore"] for k in times}}
                rows.append(row)
                line = (f"{name:32} {'x'.join(map(str, shape)):>10} "
                        f"{times['bpcore'] * 1e6:9.2f} {times['numpy'] * 1e6:9.2f} "
                        f"{row['ratios']['numpy']:7.2f}")
                if "torch" in times:
                    line += f" {times['torch'] * 1e6:9.2f} {row['ratios']['torch']:7.2f}"
                print(line, file=file)
    return rows


# ---------------------------------------------------------------------------
# bpcore.sklearn against scikit-learn's MLP (same parameters, same model)
# ---------------------------------------------------------------------------

SKLEARN_CASES = {
    "digits sgd b32": dict(data="digits", epochs=20,
                           params=dict(hidden_layer_sizes=(64,), solver="sgd", batch_size=32)),
    "digits adam auto": dict(data="digits", epochs=20,
                             params=dict(hidden_layer_sizes=(64,), solver="adam")),
    "100k x 100 adam": dict(data="make_classification", epochs=5,
                            params=dict(hidden_layer_sizes=(256, 128), solver="adam")),
}


def _sklearn_data(name):
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    else:
        X, y = make_classification(100_000, 100, n_informative=50, n_classes=5,
                                   random_state=0)
    return train_test_split(X, y, random_state=0)


def _sklearn_estimator(who, case, threads):
    params = dict(case["params"], max_iter=case["epochs"], n_iter_no_change=case["epochs"] + 1,
                  random_state=0)
    if who == "bpcore":
        from bpcore.sklearn import MLPClassifier
        return MLPClassifier(**params, n_threads=threads)
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(**params)


_RSS_CHILD = """
import resource, sys, warnings
warnings.simplefilter("ignore")
from bpcore import benchmarks as B
case = B.SKLEARN_CASES[sys.argv[1]]
X, X_test, y, y_test = B._sklearn_data(case["data"])
est = B._sklearn_estimator(sys.argv[2], case, int(sys.argv[3]))
with B.limit_threads(int(sys.argv[3])):
    est.fit(X, y)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after / 1024.0)
"""


def _fit_peak_rss_mb(name, who, threads):
    """Peak RSS (MiB) of a fresh interpreter that builds the data and fits once.

    Both contenders' processes import the same modules and build the same
    arrays, so the difference between them is what ``fit`` holds at its peak.
    """
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, name, who, str(threads)],
                         capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sklearn_table(*, threads=1, cases=None, rounds=3, memory=True, file=None):
    """Print bpcore.sklearn.MLPClassifier vs scikit-learn's: time per epoch, test score, RSS.

    Both estimators get the same parameters and ``random_state`` and run the
    same number of epochs (``n_iter_no_change`` above ``max_iter``); fits are
    interleaved round by round and the median round is reported.

    Returns the rows as a list of dicts.
    """
    import warnings
    rows = []
    names = list(SKLEARN_CASES) if cases is None else list(cases)
    print(f"\nscikit-learn MLPClassifier vs bpcore.sklearn, float64, {threads} thread(s): "
          f"ms per epoch; speed-up = scikit-learn / bpcore", file=file)
    print(f"{'case':18} {'sklearn':>9} {'bpcore':>9} {'speed-up':>8} {'score sk':>9} "
          f"{'score bp':>9} {'peak RSS sk':>11} {'peak RSS bp':>11}", file=file)
    for name in names:
        case = SKLEARN_CASES[name]
        X, X_test, y, y_test = _sklearn_data(case["data"])
        times = {"sklearn": [], "bpcore": []}
        scores = {}
        with limit_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(rounds):
                for who in times:
                    est = _sklearn_estimator(who, case, threads)
                    start = time.perf_counter()
                    est.fit(X, y)
                    times[who].append((time.perf_counter() - start) / est.n_iter_)
                    scores[who] = est.score(X_test, y_test)
        per_epoch = {who: statistics.median(t) for who, t in times.items()}
        rss = ({who: _fit_peak_rss_mb(name, who, threads) for who in times} if memory
               else {"sklearn": float("nan"), "bpcore": float("nan")})
        row = {"case": name, "threads": threads, "per_epoch": per_epoch, "scores": scores,
               "speedup": per_epoch["sklearn"] / per_epoch["bpcore"], "rss_mb": rss}
        rows.append(row)
        print(f"{name:18} {per_epoch['sklearn'] * 1e3:9.2f} {per_epoch['bpcore'] * 1e3:9.2f} "
              f"{row['speedup']:8.2f} {scores['sklearn']:9.4f} {scores['bpcore']:9.4f} "
              f"{rss['sklearn']:11.1f} {rss['bpcore']:11.1f}", file=file)
    return rows


def main(argv=None):
    """Every table: kernels (and GEMM, training steps where built), 1 then 2 threads."""
    for threads in (1,):
        for dtype in (np.float32, np.float64):
            kernel_table(dtype=dtype, threads=threads)
    try:
        import sklearn  # noqa: F401  (the optional extra bpcore[sklearn])
    except ImportError:
        return 0
    for threads in (1, 2):
        sklearn_table(threads=threads)
    return 0
