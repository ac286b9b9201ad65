"""Side-by-side tables: bpcore against the NumPy reference, PyTorch and scikit-learn.

Elementwise kernels, linear layers, ``bpcore.sklearn`` against scikit-learn's
MLP (with peak RSS), two fits in two threads, and data-parallel training
under mpiexec.  Timings on a shared machine are noisy, so contenders are
measured in one run, interleaved round by round, and compared by their
medians; thread counts are pinned and printed.  ``python bench/run.py``
prints these tables; the pytest-benchmark files ``bench/bench_*.py`` time
the same calls.
"""
import json
import os
import re
import statistics
import time

import numpy as np

from harness import SETTLE, import_peer, limit_threads, run_worker, time_calls

KERNEL_SHAPES = [(4, 2), (64, 100), (64, 1000), (256, 784)]


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
    torch = import_peer("torch")
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


LINEAR_SHAPES = [(4, 2, 2), (64, 100, 10), (64, 1000, 100), (256, 784, 256)]


def linear_table(*, dtype=np.float32, threads=1, rounds=7, min_time=0.02, file=None):
    """linear_forward / linear_backward: bpcore vs the NumPy reference (and torch.addmm)."""
    import bpcore
    from bpcore import reference as ref

    torch = import_peer("torch")
    rows = []
    with limit_threads(threads):
        print(f"\nLinear layers, {np.dtype(dtype).name}, {threads} thread(s): time per call (us)",
              file=file)
        print(f"{'op':16} {'n x n_in x n_out':>18} {'bpcore':>9} {'numpy':>9} {'ratio':>7}"
              f" {'torch':>9} {'ratio':>7}", file=file)
        for n, n_in, n_out in LINEAR_SHAPES:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, n_in)).astype(dtype)
            w = rng.standard_normal((n_in, n_out)).astype(dtype)
            b = rng.standard_normal(n_out).astype(dtype)
            g = rng.standard_normal((n, n_out)).astype(dtype)
            out = np.empty((n, n_out), dtype)
            bufs = dict(grad_x=np.empty_like(x), grad_w=np.empty_like(w), grad_b=np.empty_like(b))
            cases = {
                "linear_forward": {
                    "bpcore": lambda: bpcore.linear_forward(x, w, b, out=out),
                    "numpy": lambda: ref.linear_forward(x, w, b, out=out)},
                "linear_backward": {
                    "bpcore": lambda: bpcore.linear_backward(x, w, g, **bufs),
                    "numpy": lambda: ref.linear_backward(x, w, g, **bufs)},
            }
            if torch is not None:
                tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                tg, tout = torch.from_numpy(g), torch.from_numpy(out)
                cases["linear_forward"]["torch"] = lambda: torch.addmm(tb, tx, tw, out=tout)
                cases["linear_backward"]["torch"] = lambda: (tg @ tw.T, tx.T @ tg, tg.sum(0))
            for name, contenders in cases.items():
                times = time_calls(contenders, rounds=rounds, min_time=min_time)
                ratios = {k: times[k] / times["bpcore"] for k in times}
                rows.append({"name": name, "shape": (n, n_in, n_out), "times": times,
                             "ratios": ratios})
                line = (f"{name:16} {f'{n}x{n_in}x{n_out}':>18} {times['bpcore'] * 1e6:9.2f} "
                        f"{times['numpy'] * 1e6:9.2f} {ratios['numpy']:7.2f}")
                if "torch" in times:
                    line += f" {times['torch'] * 1e6:9.2f} {ratios['torch']:7.2f}"
                print(line, file=file)
    return rows


# ---------------------------------------------------------------------------
# Data-parallel training (bpcore.distributed) under mpiexec
# ---------------------------------------------------------------------------

# (layer sizes, batch per rank, steps per epoch): the two networks.
DISTRIBUTED_NETS = [((1000, 100, 10), 64, 200), ((784, 256, 256, 10), 256, 40)]


def distributed_worker(spec):
    """Run inside every rank: time ``spec``'s training and print rank 0's numbers as JSON.

    ``spec`` (a JSON string): sizes, batch, steps, epochs, mode ("mlp":
    ``MLP.fit`` in one process; "dist": ``bpcore.distributed.fit``),
    accumulate, overlap.  Also times a bare ``Allreduce`` of the step's block.
    """
    from bpcore import MLP

    spec = json.loads(spec)
    if spec.get("step_path"):
        from bpcore import distributed
        distributed._EPOCH_LOOP_AT_ONE_RANK = False
    sizes, batch, steps = spec["sizes"], spec["batch"], spec["steps"]
    rng = np.random.default_rng(0)
    n = batch * steps
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    net = MLP(sizes, loss="cross_entropy", dtype="float32", seed=0)
    settings = dict(batch_size=batch, lr=1e-3, momentum=0.9, seed=1)
    if spec["mode"] == "mlp":
        net.fit(x, y, epochs=1, **settings)  # warm-up: workspace, pages
        start = time.perf_counter()
        net.fit(x, y, epochs=spec["epochs"], **settings)
        seconds = time.perf_counter() - start
        print(json.dumps({"samples_per_s": n * spec["epochs"] / seconds}))
        return
    from bpcore import distributed

    comm = distributed.MPI.COMM_WORLD
    extra = dict(accumulate_steps=spec["accumulate"], overlap=spec["overlap"])
    distributed.fit(net, x, y, epochs=1, **settings, **extra)
    comm.Barrier()
    start = time.perf_counter()
    history = distributed.fit(net, x, y, epochs=spec["epochs"], **settings, **extra)
    seconds = time.perf_counter() - start
    seconds = comm.allreduce(seconds, op=distributed.MPI.MAX)
    block = np.zeros(net.n_params + 4, np.float32)
    comm.Barrier()
    bare_start = time.perf_counter()
    for _ in range(50):
        comm.Allreduce(distributed.MPI.IN_PLACE, block)
    bare = (time.perf_counter() - bare_start) / 50
    updates = spec["epochs"] * -(-steps // spec["accumulate"])
    if comm.Get_rank() == 0:
        print(json.dumps({
            "samples_per_s": n * comm.Get_size() * spec["epochs"] / seconds,
            "comm_per_update": sum(history["comm_seconds"]) / updates,
            "bare_allreduce": bare, "bytes": block.nbytes}))


def _run_distributed(n_ranks, spec):
    """``distributed_worker(spec)`` under mpiexec for n_ranks >= 1, plain for None."""
    out = run_worker(["distributed", json.dumps(spec)], ranks=n_ranks)
    # Independent processes ("mlp" under mpiexec) each print a line: their rates add up.
    # NOTE: found by pattern, not by line: two ranks' prints may share a line.
    lines = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", out)]
    if len(lines) > 1:
        return {"samples_per_s": sum(r["samples_per_s"] for r in lines)}
    return lines[0]


def distributed_table(*, nets=DISTRIBUTED_NETS, epochs=5, rounds=3, file=None):
    """Samples/s of one process vs 2 ranks (one thread each), float32, medians of interleaved rounds.

    Contenders per network: ``MLP.fit`` (1 process); two independent
    ``MLP.fit`` processes side by side (the machine's ceiling for 2 ranks,
    no communication); ``distributed.fit`` on 1 rank (compiled epoch loop)
    and through its per-step path, on 2 ranks (single Allreduce), 2 ranks with per-layer
    ``Iallreduce`` overlap, and 2 ranks with ``accumulate_steps=4``.
    Returns {network: {contender: {"samples_per_s", ...}}}.
    """
    contenders = {
        "MLP.fit, 1 process": (None, dict(mode="mlp", accumulate=1, overlap=False)),
        "2 independent MLP.fit": (2, dict(mode="mlp", accumulate=1, overlap=False)),
        "distributed, 1 rank": (1, dict(mode="dist", accumulate=1, overlap=False)),
        "1 rank, per-step path": (1, dict(mode="dist", accumulate=1, overlap=False,
                                          step_path=True)),
        "distributed, 2 ranks": (2, dict(mode="dist", accumulate=1, overlap=False)),
        "2 ranks, overlap": (2, dict(mode="dist", accumulate=1, overlap=True)),
        "2 ranks, accumulate 4": (2, dict(mode="dist", accumulate=4, overlap=False)),
    }
    results = {}
    for sizes, batch, steps in nets:
        samples = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, (ranks, extra) in contenders.items():
                spec = dict(sizes=list(sizes), batch=batch, steps=steps, epochs=epochs, **extra)
                samples[name].append(_run_distributed(ranks, spec))
        label = "-".join(map(str, sizes))
        results[label] = {}
        base = statistics.median(r["samples_per_s"] for r in samples["MLP.fit, 1 process"])
        print(f"\nData-parallel training, {label}, batch {batch} per rank, float32, one thread "
              f"per process, median of {rounds} interleaved rounds", file=file)
        print(f"{'contender':24} {'samples/s':>11} {'vs 1 proc':>9} {'comm/update ms':>15} "
              f"{'bare Allreduce ms':>18}", file=file)
        for name in contenders:
            runs = samples[name]
            row = {"samples_per_s": statistics.median(r["samples_per_s"] for r in runs)}
            if "comm_per_update" in runs[0]:
                row["comm_per_update"] = statistics.median(r["comm_per_update"] for r in runs)
                row["bare_allreduce"] = statistics.median(r["bare_allreduce"] for r in runs)
                row["bytes"] = runs[0]["bytes"]
            results[label][name] = row
            comm = (f"{row['comm_per_update'] * 1e3:15.3f} {row['bare_allreduce'] * 1e3:18.3f}"
                    if "comm_per_update" in row else f"{'':15} {'':18}")
            print(f"{name:24} {row['samples_per_s']:11.0f} {row['samples_per_s'] / base:9.2f} "
                  f"{comm}", file=file)
    return results


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


def rss_worker(name, who, threads):
    """Run in a fresh interpreter: build case ``name``'s data, fit once, print peak RSS (MiB)."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    case = SKLEARN_CASES[name]
    X, X_test, y, y_test = _sklearn_data(case["data"])
    est = _sklearn_estimator(who, case, threads)
    with limit_threads(threads):
        est.fit(X, y)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(after / 1024.0)


def _fit_peak_rss_mb(name, who, threads):
    """Peak RSS (MiB) of a fresh interpreter that builds the data and fits once.

    Both contenders' processes import the same modules and build the same
    arrays, so the difference between them is what ``fit`` holds at its peak.
    """
    out = run_worker(["rss", name, who, str(threads)])
    return float(out.strip().splitlines()[-1])


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


def _fit_job(seed, n=2048, sizes=(784, 128, 10), epochs=4, batch_size=64, dtype=np.float32):
    """A zero-argument callable: one ``MLP.fit`` on its own model and data."""
    from bpcore import MLP

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)

    def job():
        net = MLP(list(sizes), loss="cross_entropy", dtype=dtype, seed=seed)
        net.fit(x, y, epochs=epochs, batch_size=batch_size, lr=0.01, seed=seed)
    return job


def threads_table(*, rounds=5, min_time=0.2, file=None, **job_args):
    """Two independent ``fit`` calls: in two Python threads vs one after the other.

    The GEMM runs on one thread inside each call, so the speed-up comes only
    from the training step releasing the GIL.  Returns
    ``{"serial": s, "threaded": s, "ratio": threaded / serial}``; the
    reliability issue asks for ratio <= 0.6 on 2 free cores (0.5 is perfect).
    """
    import threading

    jobs = [_fit_job(seed, **job_args) for seed in (0, 1)]

    def serial():
        for job in jobs:
            job()

    def threaded():
        threads = [threading.Thread(target=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with limit_threads(1):
        times = time_calls({"serial": serial, "threaded": threaded}, rounds=rounds,
                           min_time=min_time)
    ratio = times["threaded"] / times["serial"]
    print(f"\nTwo independent MLP.fit calls (GEMM 1 thread each), {os.cpu_count()} CPUs: "
          f"serial {times['serial'] * 1e3:.1f} ms, two threads {times['threaded'] * 1e3:.1f} ms, "
          f"threaded / serial = {ratio:.2f} (target <= 0.60)", file=file)
    return {**times, "ratio": ratio}


# (batch, sizes, dtype): the seed net of ``python -m bpcore demo`` and two of issue 18's
INTERLEAVE_NETS = [(64, (64, 64, 10), np.float64), (256, (784, 256, 10), np.float32),
                   (1024, (784, 512, 10), np.float32)]


def interleave_table(*, nets=INTERLEAVE_NETS, steps=60, rounds=5, blas_threads=None,
                     file=None):
    """``MLP.train_step`` at 1 and 2 bpcore threads, alone and with NumPy BLAS calls between.

    A real training loop calls NumPy between steps (the demo runs the NumPy
    reference in the same process), and OpenBLAS's threads keep spinning for a
    while after each call, holding the other core.  Each step is timed on its
    own (the NumPy call between steps is not counted); the table prints the
    median over ``rounds`` of the mean step time.  ``blas_threads``: NumPy's
    BLAS thread count (None: its own default, as in a user's process).
    Returns ``{(net, mode, threads): seconds}``.
    """
    import contextlib

    import bpcore
    from bpcore import MLP

    threadpoolctl = import_peer("threadpoolctl")
    rng = np.random.default_rng(0)
    blas_a = rng.standard_normal((256, 256))
    results = {}
    print(f"\nTraining step with NumPy BLAS calls between steps ({os.cpu_count()} CPUs; "
          f"NumPy BLAS threads: {blas_threads or 'default'}); us per step, median of "
          f"{rounds} rounds of {steps} steps", file=file)
    print(f"{'net':22} {'between steps':24} {'1 thread':>9} {'2 threads':>10} {'2/1':>6}",
          file=file)
    limits = (threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas")
              if threadpoolctl is not None and blas_threads else contextlib.nullcontext())
    before = bpcore.get_num_threads()
    with limits:
        for batch, sizes, dtype in nets:
            x = rng.standard_normal((batch, sizes[0])).astype(dtype)
            y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
            net = MLP(list(sizes), dtype=dtype, seed=0)
            name = f"{batch}-{'-'.join(map(str, sizes))} {np.dtype(dtype).name}"
            for mode, between in (("nothing", None),
                                  ("np.dot 256x256 f64", lambda: blas_a @ blas_a)):
                per = {}
                for _ in range(rounds):
                    for threads in (1, 2):  # interleaved, so drift hits both
                        bpcore.set_num_threads(threads)
                        net.train_step(x, y, lr=1e-6)
                        total = 0.0
                        for _ in range(steps):
                            if between is not None:
                                between()
                            start = time.perf_counter()
                            net.train_step(x, y, lr=1e-6)
                            total += time.perf_counter() - start
                        per.setdefault(threads, []).append(total / steps)
                t1, t2 = (statistics.median(per[t]) for t in (1, 2))
                results[(name, mode, 1)], results[(name, mode, 2)] = t1, t2
                print(f"{name:22} {mode:24} {t1 * 1e6:9.1f} {t2 * 1e6:10.1f} {t2 / t1:6.2f}",
                      file=file)
    bpcore.set_num_threads(before)
    return results


# ---------------------------------------------------------------------------
# One training step beside every peer: the performance issue's table
# ---------------------------------------------------------------------------
# (batch, layer sizes): issue 18's networks (ReLU hidden, sum-of-squares, SGD)
STEP_NETS = [(64, (1000, 100, 10)), (256, (784, 256, 10)), (1024, (784, 512, 10)),
             (512, (784, 512, 512, 10))]
# column -> what it times
STEP_COLUMNS = {
    "bpcore f32": "MLP.train_step, float32",
    "bpcore f64": "MLP.train_step, float64",
    "bpcore bf16": "MLP(compute_dtype='bfloat16').train_step: bf16-rounded products, "
                   "float32 accumulation and parameters",
    "numpy f32": "the same MLP on the NumPy reference backend",
    "torch f32": "nn.Sequential + optim.SGD",
    "torch bf16": "the same under torch.autocast('cpu', dtype=torch.bfloat16)",
    "jax f32": "jax.jit of value_and_grad + the SGD update, block_until_ready",
}


def _jax_step(jax, sizes, x, y, lr):
    """A zero-argument callable: one jitted JAX SGD step of the same ReLU/MSE network."""
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    params = [(jnp.asarray(rng.standard_normal((a, b)).astype(x.dtype) * 0.05),
               jnp.zeros(b, x.dtype)) for a, b in zip(sizes[:-1], sizes[1:])]

    def loss(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return 0.5 * jnp.sum((h - y) ** 2)

    @jax.jit
    def step(params, x, y):
        g = jax.grad(loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g)

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    state = {"params": params}

    def run():
        state["params"] = step(state["params"], xj, yj)
        jax.block_until_ready(state["params"])
    return run


def _torch_autocast_step(torch, sizes, x, y, lr):
    """One PyTorch SGD step with the forward under bfloat16 autocast (CPU)."""
    from bpcore._quickbench import torch_mlp_step

    plain = torch_mlp_step(torch, sizes, x.dtype, x, y, lr)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain()
    return step


def _step_calls(name, threads):
    """``[(net, flops, call)]`` for contender ``name``: one zero-argument SGD step of
    each of STEP_NETS, built with only the library that contender needs."""
    from bpcore import MLP
    from bpcore._quickbench import step_flops, torch_mlp_step

    lib = name.split()[0]
    torch = import_peer("torch") if lib == "torch" else None
    jax = import_peer("jax") if lib == "jax" else None
    if lib in ("torch", "jax") and (torch or jax) is None:
        return []
    if jax is not None:
        jax.config.update("jax_platforms", "cpu")
    out = []
    for batch, sizes in STEP_NETS:
        rng = np.random.default_rng(0)
        dtype = np.float64 if "f64" in name else np.float32
        x = rng.standard_normal((batch, sizes[0])).astype(dtype)
        y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
        lr = 1e-6
        if lib in ("bpcore", "numpy"):
            net = MLP(list(sizes), dtype=np.dtype(dtype).name, seed=0,
                      compute_dtype="bfloat16" if "bf16" in name else None,
                      backend="reference" if lib == "numpy" else "compiled")
            call = (lambda n=net, x=x, y=y: n.train_step(x, y, lr=lr))
        elif name == "torch f32":
            call = torch_mlp_step(torch, sizes, np.float32, x, y, lr)
        elif name == "torch bf16":
            call = _torch_autocast_step(torch, sizes, x, y, lr)
        else:
            call = _jax_step(jax, sizes, x, y, lr)
        out.append((f"{batch}-{'-'.join(map(str, sizes))}", step_flops(list(sizes), batch),
                    call))
    return out


def steps_serve(threads, name, min_time):
    """Child of :func:`steps_table`: contender ``name`` alone in this process, pinned to
    ``threads`` CPUs.  Prints one JSON line (its nets, FLOPs, CPUs, the bf16 path; an
    empty list of nets if its library is missing), then for each line ``i`` read from
    stdin times one round of network i (at least ``min_time`` seconds, after an untimed
    SETTLE at 2+ threads) and prints the seconds per step."""
    import sys

    import bpcore

    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    with limit_threads(threads):
        nets = _step_calls(name, threads)
        numbers = []
        for _, _, call in nets:     # warm up (JAX compiles), then size a round
            call()
            number, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_time / 4:
                call()
                number += 1
            numbers.append(max(1, int(4 * number)))
        print(json.dumps({"nets": [(n, f) for n, f, _ in nets], "cpus": cpus,
                          "bf16": bpcore.cpu_features()["bf16"]}), flush=True)
        for line in sys.stdin:
            i = int(line)
            call, number = nets[i][2], numbers[i]
            if threads > 1:
                time.sleep(SETTLE)
            start = time.perf_counter()
            for _ in range(number):
                call()
            print(repr((time.perf_counter() - start) / number), flush=True)


def _read_line(proc, timeout):
    """One line of a child's stdout within ``timeout`` seconds, else RuntimeError."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"steps child {proc.args[-3:]} gave no answer: "
                           f"{proc.stderr.read()[-2000:]}")
    return line


def steps_table(*, threads=(1, 2), peaks=None, rounds=5, min_time=0.1, file=None):
    """One SGD step of issue 18's networks: bpcore f32/f64/bf16 beside NumPy, PyTorch
    (f32 and bf16 autocast) and JAX jit, at each thread count, with % of the peak.

    NOTE: each contender runs in a child process of its own, pinned to that many
    CPUs (so JAX's and PyTorch's pools see only those), as a user's training
    process would run it: in one shared process bpcore's 2-thread 256-784-256-10
    step read its 1-thread time after the other contenders' rounds (its worker ran
    no chunk of 2.3 ms products, and the pool backed off), against 2941 us alone.
    The parent interleaves the children round by round (one child times while the
    others wait on a pipe, idle; the order rotates each round), medians.
    ``peaks``: ``{threads: {dtype: GFLOP/s}}`` from the peak table; bpcore's f32
    and bf16 columns are shares of the float32 peak (bf16: of the TDPBF16PS loop's
    on the AMX path, else of the bf16 dot loop's where the CPU has one), f64 of the
    float64 one.  Returns ``{threads: rows}``.
    """
    import subprocess
    import sys

    from bpcore._quickbench import same_bpcore_env

    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    for t in threads:
        env = dict(same_bpcore_env(), OMP_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t),
                   XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                   + f" --xla_cpu_multi_thread_eigen={'true' if t > 1 else 'false'}"
                   + f" intra_op_parallelism_threads={t}")
        children, meta = {}, {}
        try:
            for c in STEP_COLUMNS:  # one at a time: no child warms up beside another
                proc = subprocess.Popen(
                    [sys.executable, os.path.join(here, "worker.py"), "steps", str(t), c,
                     str(min_time)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
                info = json.loads(_read_line(proc, 600))
                if info["nets"]:
                    children[c], meta[c] = proc, info
                else:
                    proc.stdin.close()
                    proc.wait(timeout=60)
            names = list(children)
            nets = meta["bpcore f32"]["nets"]
            samples = {c: [[] for _ in nets] for c in names}
            for i in range(len(nets)):
                for r in range(rounds):
                    for c in names[r % len(names):] + names[:r % len(names)]:
                        children[c].stdin.write(f"{i}\n")
                        children[c].stdin.flush()
                        samples[c][i].append(float(_read_line(children[c], 600)))
        finally:
            for proc in children.values():
                if proc.poll() is None:
                    proc.stdin.close()
                    proc.wait(timeout=60)
        rows = [{"net": net, "flops": flops, "cpus": meta["bpcore f32"]["cpus"],
                 "bf16": meta["bpcore bf16"]["bf16"],
                 "times": {c: statistics.median(samples[c][i]) for c in names}}
                for i, (net, flops) in enumerate(nets)]
        out[t] = rows
        peak = (peaks or {}).get(t, {})
        print(f"\nOne SGD step (ReLU hidden, sum-of-squares), {t} thread(s), each contender "
              f"in its own process pinned to CPUs {rows[0]['cpus']}; us per step, median of "
              f"{rounds} interleaved rounds; (x) = other / bpcore f32; % = share of the "
              f"measured peak (bf16 path: {rows[0]['bf16']})", file=file)
        for c in names:
            print(f"  {c:12} {STEP_COLUMNS[c]}", file=file)
        print(f"{'net':20}" + "".join(f" {c:>18}" for c in names), file=file)
        for r in rows:
            tm, line = r["times"], f"{r['net']:20}"
            for c in names:
                cell = f"{tm[c] * 1e6:.0f}"
                if c != "bpcore f32":
                    cell += f" (x{tm[c] / tm['bpcore f32']:.2f})"
                # the bf16 column against the peak of the instruction its path issues
                bf16_peak = "amx" if rows[0]["bf16"] == "amx" else "bfloat16"
                dt = "float64" if "f64" in c else (bf16_peak if "bf16" in c and
                                                   bf16_peak in peak else "float32")
                if c.startswith("bpcore") and dt in peak:
                    cell += f" {100 * r['flops'] / tm[c] / 1e9 / peak[dt]:.0f}%"
                line += f" {cell:>18}"
            print(line, file=file)
    return out
