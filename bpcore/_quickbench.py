"""``python -m bpcore bench``: a quick look at bpcore's speed beside its peers.

The light entry point that ships in the package: a large GEMM, three training
steps against the NumPy reference (and PyTorch), the step cost of clipping
and dropout, one digits epoch against scikit-learn, in well under a minute.  Peers that are not installed are named
and their columns left out; NumPy is the only dependency.  The timing
harness with every table (kernels, linear layers, all GEMM shapes, threads,
the estimators, MPI) lives in a source checkout's ``bench/`` and is run by
``python bench/run.py`` or ``python -m bpcore bench --full``; nothing in the
package imports it (the harness builds on the primitives here instead).

Timings on a shared machine are noisy, so contenders are measured in one run,
interleaved round by round, and compared by their medians; thread counts are
pinned and printed.
"""
import contextlib
import importlib
import os
import statistics
import sys
import time

import numpy as np

# display name -> module, in the order the header lists them
PEERS = {"torch": "torch", "scikit-learn": "sklearn", "threadpoolctl": "threadpoolctl",
         "mpi4py": "mpi4py"}
_WHAT_NEEDS = {"torch": "the torch columns", "scikit-learn": "the digits table",
               "threadpoolctl": "NumPy's BLAS threads are not limited: set OPENBLAS_NUM_THREADS",
               "mpi4py": "the data-parallel table of --full"}

# (layer sizes, batch, dtype) of the training-step table: seed 000's network and a tiny one
TRAINING_CASES = [([2, 8, 2], 4, np.float32), ([1000, 100, 10], 64, np.float32),
                  ([1000, 100, 10], 64, np.float64)]
_SMOKE_CASES = [([2, 8, 2], 4, np.float32), ([50, 20, 10], 16, np.float64)]


def import_peer(name):
    """The module ``name``, or ``None`` if it cannot be imported (a peer is optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@contextlib.contextmanager
def limit_threads(n):
    """Run NumPy's BLAS (through threadpoolctl), PyTorch and bpcore with ``n`` threads."""
    import bpcore

    with contextlib.ExitStack() as stack:
        threadpoolctl = import_peer("threadpoolctl")
        if threadpoolctl is not None:  # without it the environment's OPENBLAS_NUM_THREADS decides
            stack.enter_context(threadpoolctl.threadpool_limits(limits=n))
        torch = import_peer("torch")
        if torch is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(n)
        stack.callback(bpcore.set_num_threads, bpcore.get_num_threads())
        bpcore.set_num_threads(n)
        yield


# time_calls's pause between contenders with thread pools: past OpenBLAS's spin
# after a call (measured: a 2-thread bpcore step after NumPy's 256x256 products was
# starved of its second core after pauses of up to 0.1 s, never after 0.15 s) and
# OpenMP's.  Longer pauses let this VM's idle CPU fall asleep: the next steps ran
# up to 1.6x slower for a while.
SETTLE = 0.15


def time_calls(contenders, *, min_time=0.02, rounds=7, settle=0.0):
    """Median seconds per call of each callable, measured interleaved.

    Parameters
    ----------
    contenders : dict of str -> callable
        Zero-argument callables; each is called once to warm up.
    min_time : float
        Seconds each timing round of one contender should last at least.
    rounds : int
        Rounds; the median round is reported.
    settle : float
        Seconds to sleep, untimed, before each contender's round.  Thread pools
        spin after a call (OpenBLAS's for ~0.1 s, OpenMP's, Eigen's), taking
        the cores from whoever runs next: with contenders that have pools, a
        pause lets each be timed as if it ran alone (a 2-thread bpcore step
        right after NumPy's or PyTorch's ran up to 1.6x slower).

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
        numbers[name] = max(1, int(number * min_time / max(elapsed, 1e-9) / 4))
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            number = numbers[name]
            if settle > 0:
                time.sleep(settle)
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(times) for name, times in samples.items()}


def same_bpcore_env():
    """Environment for a child interpreter that must import the bpcore this one runs.

    NOTE: the child's path is the parent's ``sys.path`` (made absolute) behind
    the directory this bpcore was imported from: under ``python -m``,
    ``python -c`` or pytest the current directory is on the path (as ``""``
    for ``-c``, which means another directory in a child started elsewhere),
    and a child in another directory (an mpiexec rank, a fresh interpreter
    measuring its RSS) would otherwise import another bpcore or none.
    """
    import bpcore

    here = os.path.dirname(os.path.dirname(os.path.abspath(bpcore.__file__)))
    path = [here] + [os.path.abspath(p) for p in sys.path if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))


# ---------------------------------------------------------------------------
# The headline tables (also used by bench/run.py)
# ---------------------------------------------------------------------------

def gemm_table(*, sizes=(512,), threads=1, rounds=5, min_time=0.05, file=None):
    """Square ``bpcore.matmul`` vs ``numpy.matmul`` per dtype: times, ratio, GFLOP/s.

    Returns ``{dtype name: {"bpcore": GFLOP/s, "numpy": GFLOP/s}}`` at the
    largest size; the faster of the two is the "GEMM rate" that the training
    table's percentages refer to.
    """
    import bpcore

    rates = {}
    with limit_threads(threads):
        print(f"\nGEMM, square, {threads} thread(s): time per call; ratio = numpy / bpcore "
              f"(higher is better for bpcore)", file=file)
        print(f"{'dtype':8} {'n':>5} {'bpcore ms':>10} {'numpy ms':>10} {'ratio':>7} "
              f"{'bpcore GFLOP/s':>15} {'numpy GFLOP/s':>14}", file=file)
        for dtype in (np.float32, np.float64):
            for n in sizes:
                rng = np.random.default_rng(0)
                a = rng.standard_normal((n, n)).astype(dtype)
                b = rng.standard_normal((n, n)).astype(dtype)
                out = np.empty((n, n), dtype)
                times = time_calls({"bpcore": lambda: bpcore.matmul(a, b, out=out),
                                    "numpy": lambda: np.matmul(a, b, out=out)},
                                   rounds=rounds, min_time=min_time,
                                   settle=SETTLE if threads > 1 else 0.0)
                gflops = {k: 2.0 * n ** 3 / t / 1e9 for k, t in times.items()}
                rates[np.dtype(dtype).name] = gflops
                print(f"{np.dtype(dtype).name:8} {n:5d} {times['bpcore'] * 1e3:10.3f} "
                      f"{times['numpy'] * 1e3:10.3f} {times['numpy'] / times['bpcore']:7.2f} "
                      f"{gflops['bpcore']:15.1f} {gflops['numpy']:14.1f}", file=file)
    return rates


def step_flops(sizes, batch):
    """Multiply-add FLOPs of one training step's products (forward, weight and input gradients).

    ``2 * batch * n_in * n_out`` per product; each layer has a forward product
    and a weight-gradient product, every layer but the first an input-gradient
    product too.  Elementwise work is not counted.
    """
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return sum(2.0 * batch * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(pairs))


def torch_mlp_step(torch, sizes, dtype, x, y, lr):
    """A zero-argument callable: one PyTorch SGD step of the same ReLU/MSE network."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(getattr(torch, np.dtype(dtype).name))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(tx), ty).backward()
        opt.step()
    return step


def training_table(*, cases=TRAINING_CASES, threads=1, rounds=7, min_time=0.05, peak=None,
                   peak_label="the GEMM rate above", file=None):
    """``MLP.train_step`` vs the same model on the NumPy reference vs a PyTorch step.

    ``peak`` (``{dtype name: GFLOP/s}``, optional, described by
    ``peak_label``) adds bpcore's share of it per step, counted by
    :func:`step_flops`.  Returns rows (name, times in
    seconds, ratios other / bpcore, gflops, percent of peak).
    """
    from bpcore import MLP

    torch = import_peer("torch")
    rows = []
    with limit_threads(threads):
        print(f"\nTraining step (ReLU hidden, MSE, SGD), {threads} thread(s): time per step (us); "
              f"ratio = other / bpcore; bpcore GFLOP/s of the step's products"
              + (f" and % of {peak_label}" if peak else ""), file=file)
        print(f"{'network':26} {'bpcore':>9} {'numpy':>9} {'ratio':>7}"
              + (f" {'torch':>9} {'ratio':>7}" if torch is not None else "")
              + f" {'GFLOP/s':>8}" + (f" {'% peak':>6}" if peak else ""), file=file)
        for sizes, batch, dtype in cases:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, sizes[0])).astype(dtype)
            y = rng.standard_normal((batch, sizes[-1])).astype(dtype)
            nets = {b: MLP(sizes, dtype=dtype, seed=0, backend=b)
                    for b in ("compiled", "reference")}
            contenders = {"bpcore": lambda n=nets["compiled"]: n.train_step(x, y, lr=1e-4),
                          "numpy": lambda n=nets["reference"]: n.train_step(x, y, lr=1e-4)}
            if torch is not None:
                contenders["torch"] = torch_mlp_step(torch, sizes, dtype, x, y, 1e-4)
            times = time_calls(contenders, rounds=rounds, min_time=min_time)
            name = f"{'-'.join(map(str, sizes))} b{batch} {np.dtype(dtype).name}"
            row = {"name": name, "times": times,
                   "ratios": {k: times[k] / times["bpcore"] for k in times},
                   "gflops": step_flops(sizes, batch) / times["bpcore"] / 1e9}
            line = (f"{name:26} {times['bpcore'] * 1e6:9.2f} {times['numpy'] * 1e6:9.2f} "
                    f"{row['ratios']['numpy']:7.2f}")
            if "torch" in times:
                line += f" {times['torch'] * 1e6:9.2f} {row['ratios']['torch']:7.2f}"
            line += f" {row['gflops']:8.2f}"
            if peak:
                row["percent_of_peak"] = 100.0 * row["gflops"] / peak[np.dtype(dtype).name]
                line += f" {row['percent_of_peak']:6.1f}"
            rows.append(row)
            print(line, file=file)
    return rows


# (label, UpdateRule settings beyond SGD's lr, MLP keywords): the step options whose cost
# the options table shows, each against the plain step
STEP_OPTIONS = [("plain SGD", {}, {}),
                ("clip_grad_norm=1", dict(clip_grad_norm=1.0), {}),
                ("clip_grad_value=0.1", dict(clip_grad_value=0.1), {}),
                ("dropout=0.5", {}, dict(dropout=0.5))]


def options_table(*, sizes=(1000, 100, 10), batch=64, batches=16, threads=1, rounds=7,
                  min_time=0.05, file=None):
    """The compiled step's cost with each of STEP_OPTIONS, through the core's epoch.

    ``batches`` batches of ``batch`` rows per call, so the time per step is the
    compiled step alone (no Python per batch).  Returns {label: seconds per step}.
    """
    from bpcore import MLP

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * batches, sizes[0])).astype(np.float32)
    y = rng.standard_normal((batch * batches, sizes[-1])).astype(np.float32)
    contenders = {}
    for label, settings, model in STEP_OPTIONS:
        net = MLP(list(sizes), dtype="float32", seed=0, **model)
        rule, state = net.update_rule("sgd", lr=1e-5, **settings)
        grads = np.zeros_like(net.parameters)

        def epoch(net=net, rule=rule, state=state, grads=grads):
            net.core.epoch(net.parameters, grads, state, x, y, None, None, batch, rule)
        contenders[label] = epoch
    with limit_threads(threads):
        times = time_calls(contenders, rounds=rounds, min_time=min_time)
    plain = times[STEP_OPTIONS[0][0]]
    print(f"\nStep options, {'-'.join(map(str, sizes))} b{batch} float32, {threads} thread(s): "
          f"time per step (us) in the compiled epoch; ratio = option / plain", file=file)
    for label in times:
        print(f"{label:26} {times[label] / batches * 1e6:9.2f} {times[label] / plain:7.2f}",
              file=file)
    return {label: t / batches for label, t in times.items()}


# PyTorch's functional form of each activation the activations table shows
_TORCH_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "leaky_relu": "leaky_relu", "elu": "elu",
                      "gelu": "gelu", "gelu_tanh": "gelu", "silu": "silu",
                      "softplus": "softplus"}


def activations_table(*, shape=(256, 1024), threads=1, rounds=7, min_time=0.05, file=None):
    """Each activation's forward + backward: bpcore, its NumPy reference, PyTorch.

    float32 arrays of ``shape``; backward from what forward saved (the output,
    or z for gelu, gelu_tanh, silu and softplus); PyTorch's forward + autograd
    backward.  Returns {name: {who: seconds}}.
    """
    import bpcore
    from bpcore import reference, reference_core

    torch = import_peer("torch")
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    out = np.empty_like(z)
    grad = np.empty_like(z)
    results = {}
    for name in _TORCH_ACTIVATIONS:
        contenders = {}
        for who, mod in (("bpcore", bpcore), ("reference", reference)):
            fwd, bwd = getattr(mod, f"{name}_forward"), getattr(mod, f"{name}_backward")
            kw = dict(out=out) if mod is bpcore else {}
            bkw = dict(out=grad) if mod is bpcore else {}

            def run(fwd=fwd, bwd=bwd, kw=kw, bkw=bkw, takes_z=name in reference_core.NEEDS_Z):
                a = fwd(z, **kw)
                bwd(z if takes_z else a, g, **bkw)
            contenders[who] = run
        if torch is not None:
            F = torch.nn.functional
            fn = getattr(F, _TORCH_ACTIVATIONS[name])
            extra = {"approximate": "tanh"} if name == "gelu_tanh" else {}
            zt, gt = torch.from_numpy(z), torch.from_numpy(g)

            def run_torch(fn=fn, extra=extra):
                leaf = zt.detach().requires_grad_()
                fn(leaf, **extra).backward(gt)
            contenders["torch"] = run_torch
        with limit_threads(threads):
            results[name] = time_calls(contenders, rounds=rounds, min_time=min_time)
    who = ["bpcore", "reference"] + (["torch"] if torch is not None else [])
    print(f"\nActivations, forward + backward on {shape[0]}x{shape[1]} float32, {threads} "
          f"thread(s): us, and x = the peer's time / bpcore's", file=file)
    print(f"{'activation':12}" + "".join(f"{w:>20}" for w in who), file=file)
    for name, times in results.items():
        cells = [f"{times['bpcore'] * 1e6:20.1f}"] + [
            f"{times[w] * 1e6:11.1f} ({times[w] / times['bpcore']:5.1f}x)" for w in who[1:]]
        print(f"{name:12}" + "".join(cells), file=file)
    return results


def digits_table(*, threads=1, epochs=30, file=None):
    """One ``MLP.fit`` epoch vs one scikit-learn ``MLPClassifier(solver="sgd")`` epoch on digits.

    64-64-10, batch 32, 1 437 training samples; both trained ``epochs`` epochs
    for the test accuracies.  Raises ImportError without scikit-learn.
    Returns a dict of times and accuracies.
    """
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from bpcore import MLP

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float64)
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1437], order[1437:]
    with limit_threads(threads):
        net = MLP([64, 64, 10], loss="cross_entropy", dtype="float64", seed=0)
        sk = MLPClassifier(hidden_layer_sizes=(64,), solver="sgd", batch_size=32,
                           learning_rate_init=0.1, momentum=0.9, random_state=0)
        classes = np.arange(10)
        bp_times, sk_times = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for epoch in range(epochs):
                start = time.perf_counter()
                net.fit(x[train], y[train], epochs=1, batch_size=32, lr=0.1, momentum=0.9,
                        seed=epoch)
                bp_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                sk.partial_fit(x[train], y[train], classes=classes)
                sk_times.append(time.perf_counter() - start)
    result = {"bpcore_epoch": statistics.median(bp_times),
              "sklearn_epoch": statistics.median(sk_times),
              "bpcore_accuracy": float((net.predict(x[test]).argmax(1) == y[test]).mean()),
              "sklearn_accuracy": float(sk.score(x[test], y[test]))}
    result["ratio"] = result["sklearn_epoch"] / result["bpcore_epoch"]
    print(f"\nDigits 64-64-10, batch 32, SGD(momentum 0.9), {threads} thread(s), float64: "
          f"epoch bpcore {result['bpcore_epoch'] * 1e3:.2f} ms, scikit-learn "
          f"{result['sklearn_epoch'] * 1e3:.2f} ms (x{result['ratio']:.1f}); test accuracy "
          f"after {epochs} epochs bpcore {result['bpcore_accuracy']:.4f}, scikit-learn "
          f"{result['sklearn_accuracy']:.4f}", file=file)
    return result


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def harness_script(package_dir=None):
    """Path of the full harness, ``bench/run.py`` beside the package in a source checkout.

    ``None`` for an installed copy (the wheel does not ship ``bench/``).
    """
    if package_dir is None:
        import bpcore
        package_dir = os.path.dirname(os.path.abspath(bpcore.__file__))
    script = os.path.join(os.path.dirname(package_dir), "bench", "run.py")
    return script if os.path.isfile(script) else None


def run_harness(argv, *, file=None):
    """Run ``bench/run.py argv`` in a child interpreter that imports this bpcore.

    Returns its exit status, or 1 (after one line saying where to run it) if
    this bpcore is not a source checkout.
    """
    import subprocess

    script = harness_script()
    if script is None:
        print("The full benchmarks live in bpcore's source checkout: run "
              "`python bench/run.py --full` there (an installed bpcore has no bench/).",
              file=file)
        return 1
    return subprocess.call([sys.executable, script, *argv], env=same_bpcore_env())


def quick(*, threads=1, smoke=False, file=None):
    """The quick tables: GEMM, training steps, a digits epoch; peers that are missing named.

    ``smoke``: tiny sizes and one round, only to check that everything runs.
    Returns 0.
    """
    import bpcore

    found = {name: import_peer(module) for name, module in PEERS.items()}
    have = [f"numpy {np.__version__}"] + [
        f"{name} {getattr(mod, '__version__', '')}".rstrip()
        for name, mod in found.items() if mod is not None]
    print(f"bpcore {bpcore.__version__} ({bpcore.cpu_features()}), {threads} thread(s) for "
          f"bpcore, NumPy's BLAS and torch; quick mode (`--full`: every table, from a "
          f"source checkout)", file=file)
    print(f"peers found: {', '.join(have)}", file=file)
    for name, mod in found.items():
        if mod is None:
            print(f"peer missing: {name} ({_WHAT_NEEDS[name]})", file=file)
    rounds, min_time = (1, 1e-3) if smoke else (5, 0.05)
    rates = gemm_table(sizes=(64,) if smoke else (512,), threads=threads, rounds=rounds,
                       min_time=min_time, file=file)
    peak = {dtype: max(r.values()) for dtype, r in rates.items()}
    training_table(cases=_SMOKE_CASES if smoke else TRAINING_CASES, threads=threads,
                   rounds=rounds, min_time=min_time, peak=peak, file=file)
    options_table(sizes=(50, 20, 10) if smoke else (1000, 100, 10), threads=threads,
                  rounds=rounds, min_time=min_time, file=file)
    activations_table(shape=(8, 64) if smoke else (256, 1024), threads=threads, rounds=rounds,
                      min_time=min_time, file=file)
    if found["scikit-learn"] is None:
        print("\n(digits table skipped: needs scikit-learn)", file=file)
    else:
        digits_table(threads=threads, epochs=1 if smoke else 30, file=file)
    return 0
